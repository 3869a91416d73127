// Stage 1 of a pass: one flag byte per edge, saying where the edge goes (first or second group,
// or left out) and whether its count is kept.
#pragma once

#include <cstdint>
#include <vector>

#include "../cpu_clones.h"
#include "geometry.h"
#include "passes.h"

namespace seglosses {
namespace malis {

constexpr uint8_t kLate = 1;     // in the pass's second group
constexpr uint8_t kDropped = 2;  // not sorted nor swept: an invalid edge, or one that never merges
constexpr uint8_t kCounted = 4;  // inside the mask (or no mask): its merge's count is kept

// The flag byte of a valid edge by its ground truth and mask bit, for one pass.
struct FlagTable {
  uint8_t byte[2][2];  // [ground truth][inside the mask]
};

FlagTable flag_table(const Pass& pass);

// Flags of a row of n edges joining voxels with labels a[i] and b[i]; gt / mask: the edges' ground
// truth and mask bits, or nullptr (ground truth from the labels: one non-zero label at both ends;
// no mask: all inside). Returns whether an edge of the first group does not join two voxels of
// one non-zero label (only looked for when check_crossing).
using FlagRowKernel = bool (*)(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask,
                               const FlagTable& table, bool check_crossing, uint8_t* flags, int64_t n);

// Whether some first-group edge does not join two voxels of one non-zero label. When none does
// (always so for the GT-1 edges of gt_seg), the first group splits into independent parts by
// label (see emission.h).
struct FlagSummary {
  bool crossing = false;
};

// flags[e] for the edges of a sample whose source row is in [r0, r1) (kDropped on invalid edges);
// seg / gt / mask: the sample's.
FlagSummary compute_flags(const Geometry& g, const Pass& pass, bool constrained, const int32_t* seg, const bool* gt,
                          const bool* mask, FlagRowKernel row, uint8_t* flags, int64_t r0, int64_t r1);

// Whether the first group can split by label: constrained, and no slab found a crossing edge.
inline bool single_label(bool constrained, const std::vector<FlagSummary>& slabs) {
  bool crossing = false;
  for (const FlagSummary& s : slabs) crossing = crossing || s.crossing;
  return constrained && !crossing;
}

// The portable row kernel (an always-inline body: kernels_*.cpp compile it per instruction set).
template <bool kGt, bool kMask, bool kCross>
SEGLOSSES_ALWAYS_INLINE bool flag_row_loop(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask,
                                           const FlagTable& t, uint8_t* flags, int64_t n) {
  const uint8_t f00 = t.byte[0][0], f01 = t.byte[0][1], f10 = t.byte[1][0], f11 = t.byte[1][1];
  uint8_t crossing = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool same = a[i] != 0 && a[i] == b[i];
    const bool g = kGt ? gt[i] : same;
    const bool m = kMask ? mask[i] : true;
    const uint8_t f = g ? (m ? f11 : f10) : (m ? f01 : f00);
    flags[i] = f;
    if constexpr (kCross) crossing |= static_cast<uint8_t>((f & kLate) == 0 && !same);
  }
  return crossing != 0;
}

SEGLOSSES_ALWAYS_INLINE bool flag_row_portable(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask,
                                               const FlagTable& t, bool check_crossing, uint8_t* flags, int64_t n) {
  if (check_crossing) {
    if (gt && mask) return flag_row_loop<true, true, true>(a, b, gt, mask, t, flags, n);
    if (gt) return flag_row_loop<true, false, true>(a, b, gt, mask, t, flags, n);
    if (mask) return flag_row_loop<false, true, true>(a, b, gt, mask, t, flags, n);
    return flag_row_loop<false, false, true>(a, b, gt, mask, t, flags, n);
  }
  if (gt && mask) return flag_row_loop<true, true, false>(a, b, gt, mask, t, flags, n);
  if (gt) return flag_row_loop<true, false, false>(a, b, gt, mask, t, flags, n);
  if (mask) return flag_row_loop<false, true, false>(a, b, gt, mask, t, flags, n);
  return flag_row_loop<false, false, false>(a, b, gt, mask, t, flags, n);
}

}  // namespace malis
}  // namespace seglosses
