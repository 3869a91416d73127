#include "emission.h"

namespace seglosses {
namespace malis {

std::vector<int64_t> part_room(const std::vector<int64_t>& voxels, int64_t V, int64_t C, bool one_part) {
  std::vector<int64_t> start(kParts + 1, C * V + kPartPad * kParts);
  start[0] = 0;
  if (!one_part) {
    for (uint32_t p = 0; p < kParts; ++p) start[p + 1] = start[p] + C * voxels[p] + kPartPad;
  }
  return start;
}

}  // namespace malis
}  // namespace seglosses
