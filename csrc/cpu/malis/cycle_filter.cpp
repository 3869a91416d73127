#include "cycle_filter.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

namespace seglosses {
namespace malis {

std::vector<SquarePair> square_pairs(const Geometry& g) {
  std::vector<std::pair<int64_t, SquarePair>> found;
  for (int64_t c1 = 0; c1 < g.C; ++c1) {
    for (int64_t c2 = c1 + 1; c2 < g.C; ++c2) {
      const int64_t* o1 = &g.off[c1 * 3];
      const int64_t* o2 = &g.off[c2 * 3];
      bool zero1 = true, zero2 = true, same = true, opposite = true, empty = false;
      int64_t length = 0;
      SquarePair q{c1, c2, g.delta[c1], g.delta[c2], {}, {}};
      for (int d = 0; d < 3; ++d) {
        zero1 = zero1 && o1[d] == 0;
        zero2 = zero2 && o2[d] == 0;
        same = same && o1[d] == o2[d];
        opposite = opposite && o1[d] == -o2[d];
        length += std::abs(o1[d]) + std::abs(o2[d]);
        // p, p + o1, p + o2 and p + o1 + o2 all inside [0, dims[d]).
        q.lo[d] = std::max({int64_t(0), -o1[d], -o2[d], -o1[d] - o2[d]});
        q.hi[d] = std::min({g.dims[d], g.dims[d] - o1[d], g.dims[d] - o2[d], g.dims[d] - o1[d] - o2[d]});
        empty = empty || q.lo[d] >= q.hi[d];
      }
      if (!(zero1 || zero2 || same || opposite || empty)) found.emplace_back(length, q);
    }
  }
  std::stable_sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<SquarePair> pairs;
  for (const auto& f : found) {
    if (static_cast<int64_t>(pairs.size()) == g.C) break;
    pairs.push_back(f.second);
  }
  return pairs;
}

SquareReach square_reach(const Geometry& g, const std::vector<SquarePair>& pairs) {
  SquareReach r;
  for (const SquarePair& q : pairs) {
    const int64_t d1 = g.off[q.c1 * 3] * g.dims[1] + g.off[q.c1 * 3 + 1];  // row offsets
    const int64_t d2 = g.off[q.c2 * 3] * g.dims[1] + g.off[q.c2 * 3 + 1];
    r.below = std::max({r.below, -d1, -d2, -d1 - d2});
    r.above = std::max({r.above, d1, d2, d1 + d2});
  }
  return r;
}

}  // namespace malis
}  // namespace seglosses
