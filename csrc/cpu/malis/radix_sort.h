// Stage 4 of a pass: sorting items by key.
#pragma once

#include <cstdint>
#include <vector>

namespace seglosses {
namespace malis {

// A run of items in memory.
struct Segment {
  const uint64_t* items;
  int64_t n;
};

// Sorts n items (key in the upper 32 bits, payload in the lower 32) by key, stably (ties keep
// their order, which is index order). tmp: n items of scratch; the result is left in items.
void sort_by_key(uint64_t* items, int64_t n, uint64_t* tmp);

// The scratch of sort_segments' MSD path, reused across sorts (one per thread): the top-16-bit
// histogram, and the biggest bucket's worth of items that every bucket's own sort uses (hot in
// cache when the buckets are of the size aimed at).
struct MsdScratch {
  std::vector<uint32_t> hist;
  std::vector<uint64_t> bucket;
  std::vector<uint64_t> lines;  // a cache line of items per bucket, for the scatter
};

// Which paths sort_segments takes; every choice sorts the same (tuning.h can force one).
struct SortPaths {
  // Sorts of at least this many items start with a pass by the key's top 16 bits.
  int64_t msd_items = int64_t(1) << 18;
  // That pass stores whole lines past the caches from this many buckets on (buckets aim at 2^15
  // items): 5-10 % faster per call on a 256^3 sample, within noise on 128^3 crops (measured,
  // BENCHMARKS.md).
  int64_t line_scatter_buckets = 64;
};

// Sorts the items of segs, taken in order (ties keep it), by key, stably. a, b: n items each; the
// segments may lie inside a (they are read before a is written) but not inside b. Returns where
// the sorted items are (a, b, or the only segment when every key is the same). From
// paths.msd_items items on (sorts_by_buckets), a first pass distributes the items by their key's
// top 16 bits into buckets, each then sorted in msd's scratch: a part too big for the cache pays
// one scattered pass over memory instead of three. That path writes only b: a may be null (a
// part's rooms past its items are never paged in).
const uint64_t* sort_segments(const std::vector<Segment>& segs, int64_t n, uint64_t* a, uint64_t* b,
                              const SortPaths& paths, MsdScratch& msd);

// Whether sort_segments takes its MSD path for n items.
inline bool sorts_by_buckets(int64_t n, const SortPaths& paths) { return n >= 2 && n >= paths.msd_items; }

// Asks for items (read) and the sort scratch (written) to be brought into cache before a sort of
// a part, whose scatter would otherwise miss the cache one item at a time.
void prefetch_items(const uint64_t* items, uint64_t* scratch, int64_t n);

}  // namespace malis
}  // namespace seglosses
