// Stage 2 of a pass: edges that can never merge, found before the sort.
//
// A pass takes the edges in a strict total order: group (first, then second), key, flat index. Of
// the edges of a cycle, the one that comes last in that order never merges: at its turn the other
// edges of the cycle already join its two ends. It would get no count, so it can be left out of
// the sort and the sweep without changing any result. Two channels with coordinate offsets o1, o2
// (non-zero, o1 != +-o2) make a 4-cycle p -> p+o1 -> p+o1+o2 -> p+o2 -> p of the edges (c1, p),
// (c2, p+o1), (c1, p+o2), (c2, p) at every voxel p whose square lies in the volume. With random
// affinities the squares of the three nearest-neighbour channels drop ~47 % of the edges (an edge
// survives its 4 squares with probability integral (1 - s^3)^4 ds = 0.534).
//
// A square compares order keys (late << 31) | (key >> 1): a strictly largest order key belongs to
// the strictly last edge. When the largest order key is shared, the square drops nothing (the
// dropped low key bit only adds such ties, which cost a missed drop, never a wrong one). The
// marked edge gets kDropped.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../cpu_clones.h"
#include "flags.h"
#include "geometry.h"

namespace seglosses {
namespace malis {

struct SquarePair {
  int64_t c1, c2, d1, d2;  // the channels and their linear offsets
  int64_t lo[3], hi[3];    // voxels p whose square lies in the volume
};

// The channel pairs whose squares are tested: at most C pairs (so at most C passes over the
// channels' flags), the shortest squares first.
std::vector<SquarePair> square_pairs(const Geometry& g);

// How many rows a square reaches below and above its base row (the row of p), over all pairs: the
// squares of base rows [r0 + below, r1 - above) touch only flags of rows [r0, r1), so slabs can
// mark those in parallel and leave the rest for one serial pass.
struct SquareReach {
  int64_t below = 0, above = 0;
};
SquareReach square_reach(const Geometry& g, const std::vector<SquarePair>& pairs);

// The cycle filter kernel: marks the last edge of the squares whose base row is in [r0, r1).
template <typename scalar_t>
using CycleKernel = void (*)(const Geometry& g, const std::vector<SquarePair>& pairs, const scalar_t* pred,
                             uint8_t* flags, int64_t r0, int64_t r1);

// Calls row(q, v0, n) for the rows of squares of every pair q with base row in [r0, r1): z-slab by
// z-slab, so that the rows the pairs share are still in cache.
template <typename Row>
SEGLOSSES_ALWAYS_INLINE void for_each_square_row(const Geometry& g, const std::vector<SquarePair>& pairs, int64_t r0,
                                                 int64_t r1, Row&& row) {
  if (r0 >= r1) return;
  const int64_t Y = g.dims[1];
  for (int64_t z = r0 / Y; z < g.dims[0] && z * Y < r1; ++z) {
    for (const SquarePair& q : pairs) {
      if (z < q.lo[0] || z >= q.hi[0]) continue;
      const int64_t y0 = std::max(q.lo[1], r0 - z * Y), y1 = std::min(q.hi[1], r1 - z * Y);
      for (int64_t y = y0; y < y1; ++y) row(q, (z * Y + y) * g.dims[2] + q.lo[2], q.hi[2] - q.lo[2]);
    }
  }
}

// ---- the portable kernel: GCC vector types, 16 squares per block ---------------------------------
using u32x16 = uint32_t __attribute__((vector_size(64)));
using i32x16 = int32_t __attribute__((vector_size(64)));
using u8x16 = uint8_t __attribute__((vector_size(16)));
using f32x16 = float __attribute__((vector_size(64)));

// Order keys of len <= 16 edges (into out; a reference, not a return value, to keep the vector
// type out of the function's ABI).
template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE void order_keys(const scalar_t* p, const uint8_t* f, int64_t len, u32x16& out) {
  f32x16 x = {};
  u8x16 fl = {};
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (len == 16) std::memcpy(&x, p, sizeof x);
  }
  if (!std::is_same_v<scalar_t, float> || len != 16) {
    for (int64_t i = 0; i < len; ++i) x[i] = static_cast<float>(p[i]);
  }
  if (len == 16) {
    std::memcpy(&fl, f, sizeof fl);
  } else {
    for (int64_t i = 0; i < len; ++i) fl[i] = f[i];
  }
  // descending_key on 16 lanes: -0 folded into +0, then order-reversing map of the float bits.
  u32x16 u = reinterpret_cast<u32x16>(x);
  u = (u & 0x7fffffffu) == 0 ? u32x16{} : u;
  const u32x16 neg = reinterpret_cast<u32x16>(reinterpret_cast<i32x16>(u) >> 31);
  const u32x16 key = (u & neg) | (~u & 0x7fffffffu & ~neg);
  const u32x16 late = __builtin_convertvector(fl, u32x16) & kLate;
  out = (late << 31) | (key >> 1);
}

// The kDropped bits of the squares at v .. v + len - 1 (len <= 16) for their four edges, in
// the order (c1, v), (c2, v + d1), (c1, v + d2), (c2, v).
template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE void square_drops(const scalar_t* p1, const scalar_t* p2, const uint8_t* f1, const uint8_t* f2,
                                          int64_t v, int64_t len, int64_t d1, int64_t d2, u8x16* bits) {
  u32x16 k0, k1, k2, k3;
  order_keys(p1 + v, f1 + v, len, k0);
  order_keys(p2 + v + d1, f2 + v + d1, len, k1);
  order_keys(p1 + v + d2, f1 + v + d2, len, k2);
  order_keys(p2 + v, f2 + v, len, k3);
  const u32x16 m01 = k0 > k1 ? k0 : k1, m23 = k2 > k3 ? k2 : k3;
  const u32x16 m = m01 > m23 ? m01 : m23;
  // Lanes of the square's edges that hold the maximum: -1 each; a unique maximum sums to -1.
  const i32x16 e0 = k0 == m, e1 = k1 == m, e2 = k2 == m, e3 = k3 == m;
  const i32x16 unique = (e0 + e1 + e2 + e3) == -1;
  bits[0] = __builtin_convertvector(e0 & unique & kDropped, u8x16);
  bits[1] = __builtin_convertvector(e1 & unique & kDropped, u8x16);
  bits[2] = __builtin_convertvector(e2 & unique & kDropped, u8x16);
  bits[3] = __builtin_convertvector(e3 & unique & kDropped, u8x16);
}

SEGLOSSES_ALWAYS_INLINE void or_bits(uint8_t* dst, const u8x16& bits, int64_t len) {
  if (len == 16) {
    u8x16 cur;
    std::memcpy(&cur, dst, sizeof cur);
    cur |= bits;
    std::memcpy(dst, &cur, sizeof cur);
  } else {
    for (int64_t i = 0; i < len; ++i) dst[i] |= bits[i];
  }
}

// Blocks of flag updates per chunk: a chunk's drops are all computed before its flags are updated
// edge by edge of the square (all blocks for (c1, v), then for (c2, v + d1), ...). Updating right
// after each block makes a block's flag loads overlap, by a few bytes, the previous block's flag
// stores when an offset is 1 (x neighbours), a load that the store buffer cannot forward
// (measured, BENCHMARKS.md).
constexpr int64_t kSquareChunkBlocks = 16;

// Marks the last edge of the squares of one channel pair at voxels v0 .. v0 + n - 1 (a row).
// p1, f1 / p2, f2: the predictions and flags of channels c1 / c2. Blocks of 16 squares with no
// scalar tail: a row whose length is not a multiple of 16 ends with a block that overlaps the one
// before, which is harmless as marking is idempotent; a row shorter than 16 runs the same code
// one square at a time.
template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE void drop_square_row_portable(const scalar_t* p1, const scalar_t* p2, uint8_t* f1,
                                                      uint8_t* f2, int64_t v0, int64_t n, int64_t d1, int64_t d2) {
  u8x16 bits[4];
  if (n < 16) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = v0 + i;
      square_drops(p1, p2, f1, f2, v, 1, d1, d2, bits);
      or_bits(f1 + v, bits[0], 1);
      or_bits(f2 + v + d1, bits[1], 1);
      or_bits(f1 + v + d2, bits[2], 1);
      or_bits(f2 + v, bits[3], 1);
    }
    return;
  }
  u8x16 chunk[4][kSquareChunkBlocks];
  int64_t starts[kSquareChunkBlocks];
  const int64_t n_blocks = (n + 15) / 16;
  for (int64_t b0 = 0; b0 < n_blocks; b0 += kSquareChunkBlocks) {
    const int64_t nb = std::min(kSquareChunkBlocks, n_blocks - b0);
    for (int64_t b = 0; b < nb; ++b) {
      starts[b] = v0 + std::min((b0 + b) * 16, n - 16);  // the last block may overlap the one before
      square_drops(p1, p2, f1, f2, starts[b], 16, d1, d2, bits);
      for (int j = 0; j < 4; ++j) chunk[j][b] = bits[j];
    }
    for (int64_t b = 0; b < nb; ++b) or_bits(f1 + starts[b], chunk[0][b], 16);
    for (int64_t b = 0; b < nb; ++b) or_bits(f2 + starts[b] + d1, chunk[1][b], 16);
    for (int64_t b = 0; b < nb; ++b) or_bits(f1 + starts[b] + d2, chunk[2][b], 16);
    for (int64_t b = 0; b < nb; ++b) or_bits(f2 + starts[b], chunk[3][b], 16);
  }
}

template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE void drop_cycle_maxima_portable(const Geometry& g, const std::vector<SquarePair>& pairs,
                                                        const scalar_t* pred, uint8_t* flags, int64_t r0,
                                                        int64_t r1) {
  const int64_t V = g.V;
  for_each_square_row(g, pairs, r0, r1, [&](const SquarePair& q, int64_t v0, int64_t n) SEGLOSSES_LAMBDA_INLINE {
    drop_square_row_portable(pred + q.c1 * V, pred + q.c2 * V, flags + q.c1 * V, flags + q.c2 * V, v0, n, q.d1, q.d2);
  });
}

}  // namespace malis
}  // namespace seglosses
