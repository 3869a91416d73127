// Stage 3 of a pass: the sort items of the edges the flags keep: key << 32 | c << shift | v.
//
// First-group items are grouped into parts by a hash of their label. When every first-group edge
// joins two voxels of the same non-zero label (no FlagSummary::crossing; always so for the GT-1
// edges of gt_seg), no such edge crosses parts, so Kruskal on the first group runs independently
// inside each part and the parts can be sorted and swept independently, each in cache (on any
// thread). Otherwise (one_part) they all go to part 0. Second-group items go to their own buffer.
//
// Each slab (slabs.h) emits its own edges, channel by channel, into rooms of its own: part p's
// items are the rooms (p, c, s) for c = 0 .. C - 1, s = 0 .. n_slabs - 1, taken in that order,
// which is index order (so that the stable sorts keep ties in index order). In memory a part's
// rooms lie slab after slab, so that a slab's rooms of a part are one region.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "../cpu_clones.h"
#include "flags.h"
#include "geometry.h"
#include "keys.h"
#include "radix_sort.h"
#include "slabs.h"

namespace seglosses {
namespace malis {

constexpr int kPartBits = 12;
constexpr uint32_t kParts = 1u << kPartBits;

inline uint32_t part_of(int32_t label) { return (static_cast<uint32_t>(label) * 2654435761u) >> (32 - kPartBits); }

// A room holds one slot per voxel (an upper bound: one edge per voxel and channel) plus kPartPad.
// The pad lets the vector emission store 16 items at a room's fill whatever the fill: of a room's
// n slots, at most one per voxel seen so far is taken, and the block being stored holds at least
// one unseen edge of the room.
constexpr int64_t kPartPad = 16;

// Where the emission writes: first-group items into rooms by (part, channel, slab), laid out part
// after part; second-group items into rooms by (channel, slab) of a second buffer, one region per
// slab in which the channels' rooms follow each other (with one slab the second group's items
// are contiguous, and the rest of the buffer is free).
class Rooms {
 public:
  // voxels[s * kParts + p]: the voxels of part p in slab s (one_part: every item goes to part 0).
  Rooms(const Geometry& g, const Slabs& slabs, const std::vector<int64_t>& voxels, bool one_part);

  int64_t first_slots() const { return first_slots_; }
  int64_t second_slots() const { return second_slots_; }

  // The fills of every part's room for (channel c, slab s): [kParts], each starting at its room's
  // first slot; the emission moves them.
  int64_t* fills(int64_t c, int s) { return &fill_[index(c, s)]; }
  // Channel c's second-group room in slab s starts where channel c - 1's items ended: call after
  // the emission of (c - 1, s).
  void begin_second(int64_t c, int s);
  int64_t second_start(int64_t c, int s) const { return second_start_[c * n_slabs_ + s]; }
  int64_t& second_fill(int64_t c, int s) { return second_fill_[c * n_slabs_ + s]; }
  // The slots after slab s's second-group items, free once the emission is done.
  int64_t second_free(int s) const {
    const int64_t last = (C_ - 1) * n_slabs_ + s;
    return second_start_[last] + second_fill_[last];
  }

  // Part p's items (after the emission) as segments in index order, and their count.
  int64_t part_items(uint32_t p) const;
  void part_segments(uint32_t p, const uint64_t* first, std::vector<Segment>& out) const;
  // The first slot of part p's rooms.
  int64_t part_begin(uint32_t p) const { return start_[index(0, 0) + p]; }
  // The room (p, c, s) after the emission.
  Segment room(const uint64_t* first, uint32_t p, int64_t c, int s) const {
    const int64_t i = index(c, s) + p;
    return {first + start_[i], fill_[i] - start_[i]};
  }
  // The second group's items as segments in index order, and their count.
  void second_segments(const uint64_t* second, std::vector<Segment>& out) const;
  int64_t second_items() const;

 private:
  int64_t index(int64_t c, int s) const { return (c * n_slabs_ + s) * int64_t(kParts); }

  int64_t C_;
  int n_slabs_;
  std::vector<int64_t> start_, fill_;  // [(c * n_slabs + s) * kParts + p]
  std::vector<int64_t> second_start_, second_fill_;  // [c * n_slabs + s]
  std::vector<int64_t> slab_second_;                 // [n_slabs + 1] each slab's second-group region
  int64_t first_slots_ = 0, second_slots_ = 0;
};

struct Emission {
  uint64_t* parts;     // the first-group buffer (Rooms::first_slots)
  int64_t* part_end;   // [kParts] the fill of each part's room for this channel and slab
  uint64_t* second;    // this channel and slab's second-group room
  int64_t n_second = 0;
};

// The emission kernel: writes the items of the edges of channel c whose source row is in
// [r0, r1) that flags keep (first group into the rooms of their parts, second group into
// out.second). The finiteness contract (finite.h): it returns whether some valid edge's
// prediction, converted to float32, is not finite.
template <typename scalar_t>
using EmitKernel = bool (*)(const Geometry& g, int64_t c, int64_t r0, int64_t r1, const scalar_t* pred,
                            const uint8_t* flags, const int32_t* seg, bool one_part, int shift, Emission& out);

// The portable kernel. The fill of the part of the current run of one label is kept in `fill`
// (neighbouring voxels mostly share a label). Branch-free: every item is written at its part's
// fill, which moves only for a first-group item. That slot is inside the part's room: of the n
// slots of a room of n voxels, the items written so far and the edges of those voxels that are
// not first-group items (this one included) take distinct slots.
template <typename scalar_t>
SEGLOSSES_ALWAYS_INLINE bool emit_items_portable(const Geometry& g, int64_t c, int64_t r0, int64_t r1,
                                                 const scalar_t* pred, const uint8_t* flags, const int32_t* seg,
                                                 bool one_part, int shift, Emission& out) {
  const int64_t V = g.V;
  uint64_t* const parts = out.parts;
  uint64_t* const second = out.second;
  int64_t n_second = out.n_second;
  int32_t run_label = 0;
  int64_t fill = out.part_end[part_of(run_label)];
  uint32_t nonfinite = 0;
  const scalar_t* pc = pred + c * V;
  const uint8_t* fc = flags + c * V;
  const uint64_t cbits = uint64_t(c) << shift;
  for_each_edge_row(g, c, r0, r1, [&](int64_t v0, int64_t len) SEGLOSSES_LAMBDA_INLINE {
    for (int64_t v = v0; v < v0 + len; ++v) {
      const int32_t label = one_part ? 0 : seg[v];
      if (label != run_label) {
        out.part_end[part_of(run_label)] = fill;
        run_label = label;
        fill = out.part_end[part_of(run_label)];
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
      second[n_second] = item;  // n_second < the edges seen so far <= the room's valid edges
      n_second += second_group;
    }
  });
  out.part_end[part_of(run_label)] = fill;
  out.n_second = n_second;
  return nonfinite != 0;
}

}  // namespace malis
}  // namespace seglosses
