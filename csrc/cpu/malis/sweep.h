// Stage 5 of a pass: Kruskal sweeps over sorted items, recording the count of every merge the
// pass counts.
#pragma once

#include <cstdint>
#include <vector>

#include "../cpu_clones.h"
#include "components.h"
#include "geometry.h"
#include "passes.h"

namespace seglosses {
namespace malis {

// A merging edge's count: same-label pairs, or different-label pairs (kNeg set). An unconstrained
// merge with both counts writes two adjacent records. 12 bytes, not 16: a sample keeps about one
// record per voxel until the write, the largest of its buffers after the items (32 of ~166 MiB
// for a 128^3 crop of one neuron at 16 bytes). A count is below 2^62 (at most 2^31 voxels), so
// its top bit is free to say which count it is.
#pragma pack(push, 4)
struct Merge {
  static constexpr uint64_t kNeg = uint64_t(1) << 63;
  uint64_t bits;  // the count | kNeg for different-label pairs
  uint32_t edge;

  uint64_t count() const { return bits & ~kNeg; }
  bool neg() const { return (bits & kNeg) != 0; }
};
#pragma pack(pop)
static_assert(sizeof(Merge) == 12, "Merge records are packed to 12 bytes");

// The merges one task (a sweep of a part, a piece, a group) records in a region of its own, and
// the totals of the counts it keeps.
struct Records {
  Merge* merges = nullptr;
  int64_t n = 0;
  uint64_t total_pos = 0, total_neg = 0;
  int64_t joined = 0;  // unions the task made in the sample's union-find
};

// A sample's records, of every task of every pass.
struct SampleResult {
  std::vector<Records> records;
  uint64_t total_pos() const;
  uint64_t total_neg() const;
};

struct SweepState {
  const Geometry& g;
  int shift;
  uint32_t vmask;          // (1 << shift) - 1: the voxel bits of a payload
  const uint8_t* counted;  // flags (kCounted: the edge's count is kept), or nullptr: all kept
};

// Parts of up to this many items are sorted and swept in cache: a prefetch pass over their items
// before the sort and over their nodes before the sweep. Bigger ones prefetch the nodes inside the
// sweep, some items ahead (measured, BENCHMARKS.md).
constexpr int64_t kInCacheItems = int64_t(1) << 18;

// Prefetches the union-find nodes of the edges ahead: the endpoints kFar items ahead, their
// parents kNear items ahead. Always inlined: GCC takes a function that only prefetches for one
// without effects and drops its calls.
SEGLOSSES_ALWAYS_INLINE void prefetch_ahead(const Node* nodes, const int64_t* delta, const uint64_t* items, int64_t i, int64_t n,
                           int shift, uint32_t vmask) {
  constexpr int64_t kFar = 16, kNear = 8;
  if (i + kFar < n) {
    const uint32_t pf = static_cast<uint32_t>(items[i + kFar]);
    const uint32_t vf = pf & vmask;
    __builtin_prefetch(nodes + vf);
    __builtin_prefetch(nodes + vf + delta[pf >> shift]);
  }
  if (i + kNear < n) {
    const uint32_t pn = static_cast<uint32_t>(items[i + kNear]);
    const uint32_t vn = pn & vmask;
    __builtin_prefetch(nodes + nodes[vn].parent);
    __builtin_prefetch(nodes + nodes[vn + delta[pn >> shift]].parent);
  }
}

// Kruskal over sorted items of a group whose every edge joins two voxels of the same non-zero
// label (components stay single-label, so a merge joins size_a * size_b same-label pairs);
// count: kSamePairs or kNothing. Call Components::restore_single_label_info after the last part.
void single_label_sweep(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, Count count,
                        Records& rec);

// Kruskal over sorted items with label histograms, counting what count says. n_components: the
// components before; returns those left (the sweep stops at one).
int64_t sweep(Components& comp, const SweepState& st, const uint64_t* items, int64_t n, Count count, Records& rec,
              int64_t n_components);

// Asks for the union-find nodes of the items' endpoints to be brought into cache. Run just before
// a part's sweep, this independent pass overlaps the cache misses that the sweep, whose steps
// depend on each other, would take one after the other.
void prefetch_nodes(const Node* nodes, const Geometry& g, const uint64_t* items, int64_t n, int shift, uint32_t vmask);

}  // namespace malis
}  // namespace seglosses
