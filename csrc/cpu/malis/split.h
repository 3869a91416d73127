// Stage 5 for a label part too big for one thread: the part is swept slab by slab (slabs.h), each
// slab's piece on its own thread, and finished by one pass over what the pieces share.
//
// A piece is Kruskal over the part's edges with an end in the slab, in the pass order: the edges
// inside the slab and the cut edges (one end outside). A component of the piece that no cut edge
// has reached yet is a component of the whole part too: nothing joins it to another slab earlier
// in the order. Its merges are counted in the piece (size_a * size_b, as single_label_sweep). A
// cut edge marks the component of its end in the slab (the top bit of the root's size, free in a
// split part: components.h); the merges of marked components depend on the other slabs and are
// recorded as events instead: the merge's two roots and sizes, and for a cut edge its end's root
// and size (each piece records the end in its slab).
//
// The global pass takes the events of all pieces in the pass order (a merge of the pieces' lists,
// each sorted already) with a union-find over the pieces' roots. A root enters it with its piece's
// size when it first appears unmarked; every later change of that piece's component is an event.
// So each global component's size is the sum of its pieces' components at every step, and a
// marked merge or a cut edge (both of its ends' events) whose global components differ counts
// size_a * size_b there. The merges and counts are those of the sweep of the whole part; an edge
// inside a slab whose ends are joined through another slab is the only one the piece takes for a
// merge that is none, and the global pass finds its components equal.
#pragma once

#include <cstdint>
#include <vector>

#include "slabs.h"
#include "sweep.h"

namespace seglosses {
namespace malis {

constexpr uint32_t kMarked = ~kSizeBits;  // in a root's size: a cut edge reached the component
constexpr uint32_t kCutEnd = ~0u;         // Event::b of a cut edge's end

struct Event {
  uint64_t item;            // the edge's sort item: the pass order
  uint32_t a, b;            // the roots (b: kCutEnd for a cut edge's end)
  uint32_t size_a, size_b;  // their sizes, with kMarked: unmarked, the root is met for the first time
};

// Sweeps one piece: the sorted items of a part that have an end in the slab's voxels [lo, hi)
// (all but the cut edges have both). Records the counted merges in rec and the events in events
// (room for n); returns the number of events.
int64_t piece_sweep(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, int64_t lo, int64_t hi,
                    Count count, Records& rec, Event* events);

struct PieceEvents {
  const Event* events;
  int64_t n;
};

// The global pass of one split part: the events of its pieces (one per slab, by slab), each in the
// pass order. gnodes: V union-find nodes of scratch (only the roots met are written); rec: room
// for one merge per event; the items of the cut edges that merged are appended to cut_merges.
void global_pass(const std::vector<PieceEvents>& pieces, const Slabs& slabs, const SweepState& st, Count count,
                 Node* gnodes, Records& rec, std::vector<uint64_t>& cut_merges);

// Joins in nodes the ends of the cut edges that merged (items of cut_merges), once every piece is
// swept: nodes then hold the components of the whole part. Returns the unions made.
int64_t join_cut_edges(Node* nodes, const SweepState& st, const std::vector<uint64_t>& cut_merges);

}  // namespace malis
}  // namespace seglosses
