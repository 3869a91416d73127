// The affinity graph of one sample: affinity channel c at voxel v is the edge (v, v + nhood[c]);
// edges whose partner lies outside the volume are invalid. Flat edge index e = c * V + v.
// Shared by MALIS and connected components.
#pragma once

#include <c10/util/ArrayRef.h>

#include "../cpu_clones.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace seglosses {
namespace malis {

// Volume dims padded to 3 (leading 1s), per-channel offsets and valid source ranges.
struct Geometry {
  int64_t dims[3] = {1, 1, 1};
  int64_t V = 1, C = 0;
  std::vector<int64_t> off;     // [C * 3] the partner's offset per dim (padded to 3 dims)
  std::vector<int64_t> delta;   // [C] linear offset of the partner voxel
  std::vector<int64_t> lo, hi;  // [C * 3] valid source coordinate range per dim
};

// Raises (naming fn) unless spatial has 1 to 3 dims and nhood one row of len(spatial) offsets per
// channel.
Geometry make_geometry(const char* fn, c10::IntArrayRef spatial, c10::IntArrayRef nhood, int64_t C);

// A row is the voxels of one (z, y): row r = z * dims[1] + y holds voxels r * dims[2] ..
// (r + 1) * dims[2] - 1.
inline int64_t n_rows(const Geometry& g) { return g.dims[0] * g.dims[1]; }

// Calls f(v0, n) for the rows of valid edges of channel c whose source row is in [r0, r1):
// sources v0 .. v0 + n - 1, in increasing v0. (Always inlined: the kernels call it from bodies
// compiled per instruction set.)
template <typename F>
SEGLOSSES_ALWAYS_INLINE void for_each_edge_row(const Geometry& g, int64_t c, int64_t r0, int64_t r1, F&& f) {
  const int64_t* lo = &g.lo[c * 3];
  const int64_t* hi = &g.hi[c * 3];
  if (lo[2] >= hi[2] || r0 >= r1) return;
  const int64_t Y = g.dims[1];
  for (int64_t z = std::max(lo[0], r0 / Y); z < hi[0] && z * Y < r1; ++z) {
    const int64_t y0 = std::max(lo[1], r0 - z * Y), y1 = std::min(hi[1], r1 - z * Y);
    for (int64_t y = y0; y < y1; ++y) f((z * Y + y) * g.dims[2] + lo[2], hi[2] - lo[2]);
  }
}

template <typename F>
SEGLOSSES_ALWAYS_INLINE void for_each_edge_row(const Geometry& g, int64_t c, F&& f) {
  for_each_edge_row(g, c, 0, n_rows(g), f);
}

// Calls f(v, u) for the valid edges of channel c, in increasing v.
template <typename F>
inline void for_each_edge(const Geometry& g, int64_t c, F&& f) {
  const int64_t d = g.delta[c];
  for_each_edge_row(g, c, [&](int64_t v0, int64_t n) {
    for (int64_t v = v0; v < v0 + n; ++v) f(v, v + d);
  });
}

// Number of valid edges of channel c (whose source row is in [r0, r1)).
int64_t valid_edges(const Geometry& g, int64_t c, int64_t r0, int64_t r1);
inline int64_t valid_edges(const Geometry& g, int64_t c) { return valid_edges(g, c, 0, n_rows(g)); }

// Edge payload in the sort items: c * 2^shift + v with 2^shift >= V, so the channel is a shift
// and the voxel a mask (no division in the sweep). The payload is increasing in (c, v), like the
// flat edge index c * V + v, so it keeps the tie order; it is not used as a sort key anyway.
inline int payload_shift(int64_t V) {
  int shift = 0;
  while ((int64_t(1) << shift) < V) ++shift;
  return shift;
}

}  // namespace malis
}  // namespace seglosses
