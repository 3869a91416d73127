#include "slabs.h"

#include <algorithm>

namespace seglosses {
namespace malis {

Slabs make_slabs(const Geometry& g, int n) {
  const int64_t rows = n_rows(g);
  Slabs s;
  s.n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, rows)));
  s.row.resize(s.n + 1);
  s.voxel.resize(s.n + 1);
  for (int i = 0; i <= s.n; ++i) {
    s.row[i] = rows * i / s.n;
    s.voxel[i] = s.row[i] * g.dims[2];
  }
  return s;
}

int Slabs::slab_of(int64_t v) const {
  return static_cast<int>(std::upper_bound(voxel.begin() + 1, voxel.end() - 1, v) - (voxel.begin() + 1));
}

}  // namespace malis
}  // namespace seglosses
