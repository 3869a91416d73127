#include "flags.h"

#include <cstring>

namespace seglosses {
namespace malis {

FlagTable flag_table(const Pass& pass) {
  FlagTable t{};
  for (int g = 0; g < 2; ++g) {
    for (int m = 0; m < 2; ++m) t.byte[g][m] = (pass.late[g][m] ? kLate : 0) | (m ? kCounted : 0);
  }
  return t;
}

FlagSummary compute_flags(const Geometry& g, const Pass& pass, bool constrained, const int32_t* seg, const bool* gt,
                          const bool* mask, FlagRowKernel row, uint8_t* flags, int64_t r0, int64_t r1) {
  const int64_t V = g.V;
  const FlagTable table = flag_table(pass);
  // A first-group edge can cross labels when it may be GT-0 for the labels: the ground truth is
  // given, or some GT-0 edges are in the first group (an unconstrained sweep is never split).
  const bool gt0_early = !pass.late[0][1] || (mask != nullptr && !pass.late[0][0]);
  const bool check_crossing = constrained && (gt != nullptr || gt0_early);
  const int64_t v0 = r0 * g.dims[2], v1 = r1 * g.dims[2];
  FlagSummary out;
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t d = g.delta[c];
    const int64_t base = c * V;
    std::memset(flags + base + v0, kDropped, static_cast<size_t>(v1 - v0));
    for_each_edge_row(g, c, r0, r1, [&](int64_t u0, int64_t n) {
      out.crossing |= row(seg + u0, seg + u0 + d, gt ? gt + base + u0 : nullptr, mask ? mask + base + u0 : nullptr,
                          table, check_crossing && !out.crossing, flags + base + u0, n);
    });
  }
  return out;
}

}  // namespace malis
}  // namespace seglosses
