#include "geometry.h"

#include <c10/util/Exception.h>

namespace seglosses {
namespace malis {

Geometry make_geometry(const char* fn, c10::IntArrayRef spatial, c10::IntArrayRef nhood, int64_t C) {
  const int64_t nd = static_cast<int64_t>(spatial.size());
  TORCH_CHECK_VALUE(nd >= 1 && nd <= 3, fn, ": expected 1 to 3 spatial dims, got ", nd);
  TORCH_CHECK_VALUE(static_cast<int64_t>(nhood.size()) == C * nd, fn, ": nhood must have one row of ", nd,
                    " offsets per channel (", C, " channels), got ", nhood.size(), " values");
  Geometry g;
  g.C = C;
  for (int64_t d = 0; d < nd; ++d) g.dims[3 - nd + d] = spatial[d];
  g.V = g.dims[0] * g.dims[1] * g.dims[2];
  g.off.assign(C * 3, 0);
  g.delta.resize(C);
  g.lo.resize(C * 3);
  g.hi.resize(C * 3);
  const int64_t stride[3] = {g.dims[1] * g.dims[2], g.dims[2], 1};
  for (int64_t c = 0; c < C; ++c) {
    int64_t* off = &g.off[c * 3];
    for (int64_t d = 0; d < nd; ++d) off[3 - nd + d] = nhood[c * nd + d];
    g.delta[c] = 0;
    for (int d = 0; d < 3; ++d) {
      g.delta[c] += off[d] * stride[d];
      g.lo[c * 3 + d] = std::max<int64_t>(0, -off[d]);
      g.hi[c * 3 + d] = std::min<int64_t>(g.dims[d], g.dims[d] - off[d]);
    }
  }
  return g;
}

int64_t valid_edges(const Geometry& g, int64_t c, int64_t r0, int64_t r1) {
  int64_t n = 0;
  for_each_edge_row(g, c, r0, r1, [&](int64_t, int64_t len) { n += len; });
  return n;
}

}  // namespace malis
}  // namespace seglosses
