// One sample on several threads: the sample is cut into slabs, ranges of whole rows (z, y), one
// per thread. The stages before the sort (flags, cycle filter, union-find init, emission) run slab
// by slab in parallel, each writing only its own slab's data; a label part too big for one thread
// is swept slab by slab and finished by one pass over what the slabs share (split.h).
#pragma once

#include <cstdint>
#include <vector>

#include "geometry.h"

namespace seglosses {
namespace malis {

struct Slabs {
  int n = 1;
  std::vector<int64_t> row;    // [n + 1] the first row of each slab, then n_rows(g)
  std::vector<int64_t> voxel;  // [n + 1] the first voxel of each slab, then V

  // The slab holding voxel v.
  int slab_of(int64_t v) const;
};

// n slabs (at most one per row) of nearly equal row counts.
Slabs make_slabs(const Geometry& g, int n);

}  // namespace malis
}  // namespace seglosses
