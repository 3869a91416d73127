// Stage 5 of a pass: Kruskal sweeps over sorted items, recording the count of every merge the
// pass counts.
#pragma once

#include <cstdint>

#include "components.h"
#include "geometry.h"
#include "passes.h"

namespace seglosses {
namespace malis {

// A merging edge's count: same-label pairs (neg == 0) or different-label pairs (neg == 1). An
// unconstrained merge with both counts writes two adjacent records.
struct Merge {
  uint64_t count;
  uint32_t edge;
  uint32_t neg;
};

// A sample's records (of every pass) and the totals of the counts kept.
struct SampleResult {
  Merge* merges = nullptr;
  int64_t n_merges = 0;
  uint64_t total_pos = 0, total_neg = 0;
};

struct SweepState {
  const Geometry& g;
  int shift;
  uint32_t vmask;          // (1 << shift) - 1: the voxel bits of a payload
  const uint8_t* counted;  // flags (kCounted: the edge's count is kept), or nullptr: all kept
  SampleResult& res;
  int64_t n_components;
};

// Kruskal over sorted items of a group whose every edge joins two voxels of the same non-zero
// label (components stay single-label, so a merge joins size_a * size_b same-label pairs);
// count: kSamePairs or kNothing. Call comp.restore_single_label_info after the last part.
void single_label_sweep(Components& comp, SweepState& st, const uint64_t* items, int64_t n, Count count);

// Kruskal over sorted items with label histograms, counting what count says.
void sweep(Components& comp, SweepState& st, const uint64_t* items, int64_t n, Count count);

// Asks for the union-find nodes of the items' endpoints to be brought into cache. Run just before
// a part's sweep, this independent pass overlaps the cache misses that the sweep, whose steps
// depend on each other, would take one after the other.
void prefetch_nodes(const Node* nodes, const Geometry& g, const uint64_t* items, int64_t n, int shift, uint32_t vmask);

}  // namespace malis
}  // namespace seglosses
