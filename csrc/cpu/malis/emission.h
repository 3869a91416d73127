// Stage 3 of a pass: the sort items of the edges the flags keep, written in index order (so that
// the stable sorts keep ties in index order): key << 32 | c << shift | v.
//
// First-group items are grouped into parts by a hash of their label. When every first-group edge
// joins two voxels of the same non-zero label (FlagSummary::single_label; always so for the GT-1
// edges of gt_seg), no such edge crosses parts, so Kruskal on the first group runs independently
// inside each part and the parts can be sorted and swept one after the other, each in cache.
// Otherwise (one_part) they all go to part 0. Second-group items go to their own buffer.
#pragma once

#include <cstdint>
#include <vector>

#include "../cpu_clones.h"
#include "flags.h"
#include "geometry.h"
#include "keys.h"

namespace seglosses {
namespace malis {

constexpr int kPartBits = 12;
constexpr uint32_t kParts = 1u << kPartBits;

inline uint32_t part_of(int32_t label) { return (static_cast<uint32_t>(label) * 2654435761u) >> (32 - kPartBits); }

// Room for each part's items: C slots per voxel of the part's labels (an upper bound: one edge per
// channel and voxel) plus kPartPad, laid out part after part. The pad lets the vector emission
// store 16 items at a part's fill whatever the part's fill: of a part's C * n slots, at most one
// per (channel, voxel) of the part seen so far is taken, and the block being stored holds at least
// one unseen edge of the part.
constexpr int64_t kPartPad = 16;

// start[p]: part p's first slot, for p = 0 .. kParts (start[kParts]: the total, C * V + kPartPad *
// kParts). voxels[p]: the voxels of part p. With one_part, part 0 gets all the room.
std::vector<int64_t> part_room(const std::vector<int64_t>& voxels, int64_t V, int64_t C, bool one_part);

struct Emission {
  uint64_t* parts;     // C * V + kPartPad * kParts slots, laid out by part_room
  int64_t* part_end;   // [kParts] the fill of each part's room (starts at its first slot)
  uint64_t* second;    // room for the valid edges + kPartPad
  int64_t n_second = 0;
};

// The emission kernel: writes the items of the edges that flags keep (first group into the
// rooms of their parts, second group into out.second). The finiteness contract (finite.h): it
// returns whether some valid edge's prediction, converted to float32, is not finite.
template <typename scalar_t>
using EmitKernel = bool (*)(const Geometry& g, const scalar_t* pred, const uint8_t* flags, const int32_t* seg,
                            bool one_part, int shift, Emission& out);

// The portable kernel. The fill of the part of the current run of one label is kept in `fill`
// (neighbouring voxels mostly share a label). Branch-free: every item is written at its part's
// fill, which moves only for a first-group item. That slot is inside the part's room: of the C * n
// slots of a part of n voxels, the items written so far and the edges of those voxels that are
// not first-group items (this one included) take distinct slots.
template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE bool emit_items_portable(const Geometry& g, const scalar_t* pred, const uint8_t* flags,
                                                 const int32_t* seg, bool one_part, int shift, Emission& out) {
  const int64_t V = g.V;
  uint64_t* const parts = out.parts;
  uint64_t* const second = out.second;
  int64_t n_second = out.n_second;
  int32_t run_label = one_part ? 0 : seg[0];
  int64_t fill = out.part_end[part_of(run_label)];
  uint32_t nonfinite = 0;
  for (int64_t c = 0; c < g.C; ++c) {
    const scalar_t* pc = pred + c * V;
    const uint8_t* fc = flags + c * V;
    const uint64_t cbits = uint64_t(c) << shift;
    for_each_edge_row(g, c, [&](int64_t v0, int64_t len) SEGLOSSES_LAMBDA_INLINE {
      for (int64_t v = v0; v < v0 + len; ++v) {
        const int32_t label = one_part ? 0 : seg[v];
        if (label != run_label) {
          out.part_end[part_of(run_label)] = fill;
          run_label = label;
          fill = out.part_end[part_of(label)];
        }
        const uint8_t f = fc[v];
        const float x = static_cast<float>(pc[v]);
        uint32_t bits;
        std::memcpy(&bits, &x, sizeof bits);
        nonfinite |= static_cast<uint32_t>(nonfinite_float_bits(bits));
        const uint64_t item = (uint64_t(descending_key(x)) << 32) | cbits | uint64_t(v);
        const bool first = (f & (kDropped | kLate)) == 0, second_group = (f & (kDropped | kLate)) == kLate;
        parts[fill] = item;
        fill += first;
        second[n_second] = item;  // n_second < the edges seen so far <= the valid edges
        n_second += second_group;
      }
    });
  }
  out.part_end[part_of(run_label)] = fill;
  out.n_second = n_second;
  return nonfinite != 0;
}

}  // namespace malis
}  // namespace seglosses
