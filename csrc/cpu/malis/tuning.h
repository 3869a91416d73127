// Internal settings that choose between equivalent paths of the kernel, for tests that must force
// a path on inputs small enough for the brute-force oracle (like the instruction-set override of
// kernels.h). Every setting gives the same results; only speed depends on them.
#pragma once

#include <cstdint>
#include <string>

#include "radix_sort.h"

namespace seglosses {
namespace malis {

struct Tuning {
  // Slabs per sample (slabs.h); 0: one per thread the sample runs on.
  int64_t slabs = 0;
  // A label part is split along the slabs (split.h) when it has more voxels than this; -1: more
  // than a fair share of the sample per slab (V / slabs).
  int64_t split_voxels = -1;
  // The sorts' paths (radix_sort.h): "msd_items", "line_scatter_buckets".
  SortPaths sort;
};

// The settings now.
Tuning tuning();

// Sets one setting ("slabs", "split_voxels", "msd_items", "line_scatter_buckets"; "reset": all to
// their defaults) and
// returns its previous value. Raises for an unknown name (naming _malis_set_tuning).
int64_t set_tuning(const std::string& name, int64_t value);

}  // namespace malis
}  // namespace seglosses
