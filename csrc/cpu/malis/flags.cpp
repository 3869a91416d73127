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
                          const bool* mask, FlagRowKernel row, uint8_t* flags) {
  const int64_t V = g.V;
  const FlagTable table = flag_table(pass);
  // A first-group edge can cross labels when it may be GT-0 for the labels: the ground truth is
  // given, or some GT-0 edges are in the first group (an unconstrained sweep is never split).
  const bool gt0_early = !pass.late[0][1] || (mask != nullptr && !pass.late[0][0]);
  const bool check_crossing = constrained && (gt != nullptr || gt0_early);
  std::memset(flags, kDropped, static_cast<size_t>(g.C * V));
  FlagSummary out;
  bool crossing = false;
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t d = g.delta[c];
    const int64_t base = c * V;
    for_each_edge_row(g, c, [&](int64_t v0, int64_t n) {
      crossing |= row(seg + v0, seg + v0 + d, gt ? gt + base + v0 : nullptr, mask ? mask + base + v0 : nullptr, table,
                      check_crossing && !crossing, flags + base + v0, n);
    });
  }
  out.single_label = constrained && !crossing;
  return out;
}

}  // namespace malis
}  // namespace seglosses
