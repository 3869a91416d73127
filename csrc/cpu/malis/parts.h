// Stages 4 + 5 of a first group that splits by label (flags.h): every label part is sorted and
// swept as a task of its own, on any of the sample's threads, biggest first. A part with more
// voxels than a slab's fair share of the sample (tuning.h) is split along the slabs (split.h):
// one task per slab, then one for the global pass.
#pragma once

#include <cstdint>
#include <vector>

#include "emission.h"
#include "slabs.h"
#include "sweep.h"
#include "workspace.h"

namespace seglosses {
namespace malis {

struct LabelParts {
  const Rooms& rooms;
  uint64_t* first;                          // the first-group buffer, holding the rooms
  const std::vector<int64_t>& part_voxels;  // [n_slabs * kParts] voxels of each part in each slab
  const Slabs& slabs;
  int threads;
  // Sort scratch shared by the tasks, only when they run one after the other (one slab, one
  // thread): the free tail of the second-group buffer; else nullptr (each thread's own).
  uint64_t* shared_scratch;
  int64_t shared_scratch_items;
};

// Sorts and sweeps every part; appends the records of its tasks to out. nodes: initialised; ws:
// the sample's workspace (split parts' scratch).
void sweep_label_parts(const LabelParts& in, Node* nodes, const SweepState& st, Count count, MergeArena& arena,
                       Workspace& ws, const char* fn, std::vector<Records>& out);

}  // namespace malis
}  // namespace seglosses
