#include "emission.h"

namespace seglosses {
namespace malis {

Rooms::Rooms(const Geometry& g, const Slabs& slabs, const std::vector<int64_t>& voxels, bool one_part)
    : C_(g.C), n_slabs_(slabs.n) {
  const int S = slabs.n;
  start_.assign(static_cast<size_t>(C_ * S) * kParts, 0);
  int64_t at = 0;
  for (uint32_t p = 0; p < kParts; ++p) {  // memory order: part, slab, channel
    for (int s = 0; s < S; ++s) {
      const int64_t n = one_part ? (p == 0 ? slabs.voxel[s + 1] - slabs.voxel[s] : 0) : voxels[s * kParts + p];
      for (int64_t c = 0; c < C_; ++c) {
        start_[index(c, s) + p] = at;
        at += n == 0 ? 0 : n + kPartPad;
      }
    }
  }
  first_slots_ = at;
  fill_ = start_;
  // Second-group rooms: one region per slab, its channels' rooms chained (each starts where the
  // one before ended: a slab emits its channels in order).
  slab_second_.resize(S + 1);
  at = 0;
  for (int s = 0; s < S; ++s) {
    slab_second_[s] = at;
    for (int64_t c = 0; c < C_; ++c) at += valid_edges(g, c, slabs.row[s], slabs.row[s + 1]);
    at += kPartPad;
  }
  slab_second_[S] = at;
  second_slots_ = at;
  second_start_.assign(C_ * S, 0);
  second_fill_.assign(C_ * S, 0);
}

void Rooms::begin_second(int64_t c, int s) {
  second_start_[c * n_slabs_ + s] =
      c == 0 ? slab_second_[s] : second_start_[(c - 1) * n_slabs_ + s] + second_fill_[(c - 1) * n_slabs_ + s];
}

int64_t Rooms::part_items(uint32_t p) const {
  int64_t n = 0;
  for (int64_t c = 0; c < C_; ++c) {
    for (int s = 0; s < n_slabs_; ++s) n += fill_[index(c, s) + p] - start_[index(c, s) + p];
  }
  return n;
}

void Rooms::part_segments(uint32_t p, const uint64_t* first, std::vector<Segment>& out) const {
  out.clear();
  for (int64_t c = 0; c < C_; ++c) {
    for (int s = 0; s < n_slabs_; ++s) {
      const Segment r = room(first, p, c, s);
      if (r.n) out.push_back(r);
    }
  }
}

void Rooms::second_segments(const uint64_t* second, std::vector<Segment>& out) const {
  out.clear();
  for (int64_t c = 0; c < C_; ++c) {
    for (int s = 0; s < n_slabs_; ++s) {
      const int64_t n = second_fill_[c * n_slabs_ + s];
      if (n) out.push_back({second + second_start_[c * n_slabs_ + s], n});
    }
  }
}

int64_t Rooms::second_items() const {
  int64_t n = 0;
  for (int64_t f : second_fill_) n += f;
  return n;
}

}  // namespace malis
}  // namespace seglosses
