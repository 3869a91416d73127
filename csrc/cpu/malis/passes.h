// The sweeps of one sample: which edges each Kruskal pass takes first and which merges it counts.
// This is where the constrained passes and the mask rule (SPEC §3) are decided; the other stages
// only follow a Pass.
//
// Constrained MALIS has a positive pass (GT-1 edges first: each merge counts same-label pairs)
// and a negative pass (GT-1 edges first, then GT-0 edges: each GT-0 merge counts different-label
// pairs). Without a mask both passes take the edges in the same order, so one sweep serves both
// (GT-1 edges counting positives, then GT-0 edges counting negatives).
//
// With a mask, PyTorch Connectomics' rule (the default): the ground truth constrains only edges
// inside the mask. Excluded edges keep their predicted place in both passes, so the two passes
// order the edges differently and are two sweeps:
//   positive: second group = GT-0 edges inside the mask (PyTC sets them to 0); everything else
//             by prediction; merges of the first group count same-label pairs; the second group
//             would count nothing and is not swept;
//   negative: first group = GT-1 edges inside the mask (PyTC sets them to 1), swept for their
//             merges only; then everything else by prediction, counting different-label pairs.
// Either way only edges inside the mask keep their counts (kCounted), and only those enter the
// normalisation totals. The earlier rule (constrain_masked) keeps every edge constrained and only
// drops the counts of excluded edges: the unmasked single sweep with kCounted.
// Unconstrained MALIS has no constraint to lift: one sweep on the prediction alone, both counts
// on every merge, excluded edges' counts dropped.
#pragma once

#include <cstdint>

namespace seglosses {
namespace malis {

// What the merges of one group of a pass count.
enum class Count : uint8_t {
  kNothing,         // merges only join components
  kSamePairs,       // same-label pairs (positive counts)
  kDifferentPairs,  // different-label pairs (negative counts)
  kBoth,            // both (unconstrained)
};

struct Pass {
  bool late[2][2];  // [ground truth][inside the mask]: the edge is in the second group
  Count first, second;  // a group that counts nothing is swept only if a later group counts
};

struct Plan {
  Pass pass[2];
  int n_passes = 1;
  bool counted_only = false;  // only edges inside the mask (kCounted) keep their counts
};

// The passes for a call. has_mask: a mask was given; constrain_masked: the earlier mask rule.
Plan plan_passes(bool constrained, bool has_mask, bool constrain_masked);

}  // namespace malis
}  // namespace seglosses
