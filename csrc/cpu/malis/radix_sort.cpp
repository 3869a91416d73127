#include "radix_sort.h"

#include <algorithm>
#include <cstring>
#include <utility>

#if defined(__SSE2__)
#include <immintrin.h>  // the uncached stores of the MSD scatter
#endif

namespace seglosses {
namespace malis {
namespace {

// LSD radix sort by the upper 32 bits, kDigit bits per pass; the low 32 bits ride along. Passes
// whose digit is the same for every item are skipped. Reads the segments in its first pass (into
// b), then goes back and forth between a and b; returns where the result is.
template <int kDigit>
const uint64_t* radix_sort_segments(const Segment* segs, int n_segs, int64_t n, uint64_t* a, uint64_t* b) {
  constexpr int kBuckets = 1 << kDigit;
  constexpr int kPasses = (32 + kDigit - 1) / kDigit;
  uint32_t hist[kPasses][kBuckets] = {};
  for (int s = 0; s < n_segs; ++s) {
    for (int64_t i = 0; i < segs[s].n; ++i) {
      const uint32_t k = static_cast<uint32_t>(segs[s].items[i] >> 32);
      for (int pass = 0; pass < kPasses; ++pass) hist[pass][(k >> (kDigit * pass)) & (kBuckets - 1)]++;
    }
  }
  const uint64_t* first = nullptr;  // an item, to test for passes with one bucket
  for (int s = 0; s < n_segs && first == nullptr; ++s) first = segs[s].n ? segs[s].items : nullptr;
  uint64_t* src = nullptr;  // nullptr: still in the segments
  uint64_t* dst = b;
  for (int pass = 0; pass < kPasses; ++pass) {
    uint32_t* pos = hist[pass];
    const int shift = 32 + kDigit * pass;
    if (pos[(*first >> shift) & (kBuckets - 1)] == static_cast<uint32_t>(n)) continue;  // one bucket
    uint32_t sum = 0;
    for (int bucket = 0; bucket < kBuckets; ++bucket) {
      const uint32_t c = pos[bucket];
      pos[bucket] = sum;
      sum += c;
    }
    auto scatter = [&](const uint64_t* from, int64_t m) {
      for (int64_t i = 0; i < m; ++i) {
        const uint64_t k = from[i];
        dst[pos[(k >> shift) & (kBuckets - 1)]++] = k;
      }
    };
    if (src == nullptr) {
      for (int s = 0; s < n_segs; ++s) scatter(segs[s].items, segs[s].n);
    } else {
      scatter(src, n);
    }
    src = dst;
    dst = src == a ? b : a;
  }
  if (src == nullptr) {  // every item has the same key: the segments, as they are
    if (n_segs == 1) return segs[0].items;
    int64_t at = 0;
    for (int s = 0; s < n_segs; ++s) {
      std::memmove(b + at, segs[s].items, static_cast<size_t>(segs[s].n) * sizeof(uint64_t));
      at += segs[s].n;
    }
    src = b;
  }
  return src;
}

// From this many items on, 11-bit digits (3 passes) beat bytes (4 passes): below it the three
// 2048-bucket prefix sums cost more than the 4th pass (measured, BENCHMARKS.md).
constexpr int64_t kWideDigitMinItems = int64_t(1) << 9;

// The MSD pass aims at buckets of this many items: two of them (items and scratch, 512 KiB) fit
// the L2 cache, where the bucket's own sort runs.
constexpr int64_t kMsdBucketItems = int64_t(1) << 15;

constexpr int kTopBits = 16;

// A bucket of one top-16-bit value with more items than kMsdBucketItems (smooth predictions crowd
// a few values near 1; a 256^3 sample has ~20 M items for the 2^16 values), sorted in place with
// tmp (m items) as scratch: one more MSD pass, by the key's next 8 bits into tmp, then each
// sub-bucket by its last 8 bits back into items, in cache. An LSD sort of the bucket would make
// two scattered passes over memory instead of one.
void sort_crowded_bucket(uint64_t* items, int64_t m, uint64_t* tmp) {
  constexpr int kSubBits = 8;
  constexpr int kShift = 32 + 8;  // the key's bits 8-15; bits 16-31 are the bucket's value
  constexpr int kSubs = 1 << kSubBits;
  int64_t start[kSubs + 1] = {};
  for (int64_t i = 0; i < m; ++i) start[((items[i] >> kShift) & (kSubs - 1)) + 1]++;
  for (int d = 0; d < kSubs; ++d) start[d + 1] += start[d];
  int64_t pos[kSubs];
  std::copy(start, start + kSubs, pos);
  for (int64_t i = 0; i < m; ++i) tmp[pos[(items[i] >> kShift) & (kSubs - 1)]++] = items[i];
  for (int d = 0; d < kSubs; ++d) {
    const int64_t c = start[d + 1] - start[d];
    if (c == 0) continue;
    // Only the key's bits 0-7 differ within a sub-bucket: one pass, from tmp into items.
    const Segment seg{tmp + start[d], c};
    const uint64_t* out = radix_sort_segments<8>(&seg, 1, c, tmp + start[d], items + start[d]);
    if (out != items + start[d]) std::memcpy(items + start[d], out, static_cast<size_t>(c) * sizeof(uint64_t));
  }
}

// Stores a 64-byte line at dst (64-byte aligned) past the caches where the instruction set has
// such stores (SSE2: every x86-64), else plainly.
inline void store_line_uncached(uint64_t* dst, const uint64_t* line) {
#if defined(__SSE2__)
  __m128i* to = reinterpret_cast<__m128i*>(dst);
  const __m128i* from = reinterpret_cast<const __m128i*>(line);
  for (int i = 0; i < 4; ++i) _mm_stream_si128(to + i, _mm_loadu_si128(from + i));
#else
  std::memcpy(dst, line, 64);
#endif
}

// Orders the uncached stores before what follows (they are weakly ordered).
inline void fence_uncached_stores() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// The MSD scatter: each item to the next slot of its bucket (pos, advanced).
void scatter_plainly(const std::vector<Segment>& segs, const uint32_t* bucket_of, std::vector<int64_t>& pos, uint64_t* b) {
  for (const Segment& s : segs) {
    for (int64_t i = 0; i < s.n; ++i) {
      const uint64_t k = s.items[i];
      b[pos[bucket_of[k >> (64 - kTopBits)]]++] = k;
    }
  }
}

// The same, for many buckets: stored one by one, every bucket is a stream of its own, more than
// the hardware prefetches, and every 8th store of a bucket waits for its line. Instead each
// bucket's items are gathered in a line of its own (lines: 8 items per bucket) and stored a whole
// line at a time past the caches; a bucket's first and last lines, shared with its neighbours,
// plainly. line_scratch: resized to a line per bucket.
void scatter_by_lines(const std::vector<Segment>& segs, const uint32_t* bucket_of, const std::vector<int64_t>& start,
                      std::vector<int64_t>& pos, std::vector<uint64_t>& line_scratch, uint64_t* b) {
  constexpr int64_t kLine = 64 / sizeof(uint64_t);
  line_scratch.resize(pos.size() * kLine);
  uint64_t* const lines = line_scratch.data();
  // b[p] is item (p + skew) % kLine of its cache line.
  const int64_t skew = static_cast<int64_t>((reinterpret_cast<uintptr_t>(b) / sizeof(uint64_t)) % kLine);
  auto slot_of = [skew](int64_t p) { return static_cast<int64_t>(static_cast<uint64_t>(p + skew) % kLine); };
  auto store_part = [&](size_t bucket, int64_t from, int64_t to) {  // the bucket's items [from, to), one line
    if (to > from) {
      std::memcpy(b + from, lines + bucket * kLine + slot_of(from), static_cast<size_t>(to - from) * sizeof(uint64_t));
    }
  };
  for (const Segment& s : segs) {
    for (int64_t i = 0; i < s.n; ++i) {
      const uint64_t k = s.items[i];
      const uint32_t bucket = bucket_of[k >> (64 - kTopBits)];
      const int64_t p = pos[bucket]++;
      const int64_t slot = slot_of(p);
      uint64_t* line = lines + bucket * kLine;
      line[slot] = k;
      if (slot == kLine - 1) {
        const int64_t line_start = p + 1 - kLine;
        if (line_start >= start[bucket]) {
          store_line_uncached(b + line_start, line);
        } else {
          store_part(bucket, start[bucket], p + 1);
        }
      }
    }
  }
  for (size_t bucket = 0; bucket < pos.size(); ++bucket) {
    store_part(bucket, std::max(start[bucket], pos[bucket] - slot_of(pos[bucket])), pos[bucket]);
  }
  fence_uncached_stores();
}

// The MSD path of sort_segments: buckets of consecutive top-16-bit values, each bucket sorted
// in place in b with msd.bucket, as big as the biggest bucket, as its scratch.
const uint64_t* msd_sort_segments(const std::vector<Segment>& segs, int64_t n, uint64_t* b, int64_t line_scatter_buckets,
                                  MsdScratch& msd) {
  constexpr int64_t kValues = int64_t(1) << kTopBits;
  msd.hist.assign(2 * kValues, 0);
  uint32_t* count = msd.hist.data();
  uint32_t* bucket_of = msd.hist.data() + kValues;
  for (const Segment& s : segs) {
    for (int64_t i = 0; i < s.n; ++i) count[s.items[i] >> (64 - kTopBits)]++;
  }
  // Greedy buckets: consecutive values until the next would pass kMsdBucketItems.
  std::vector<int64_t> start;  // first slot of each bucket
  int64_t filled = 0, in_bucket = kMsdBucketItems;
  for (int64_t v = 0; v < kValues; ++v) {
    if (count[v] == 0) continue;
    if (in_bucket + count[v] > kMsdBucketItems) {
      start.push_back(filled);
      in_bucket = 0;
    }
    bucket_of[v] = static_cast<uint32_t>(start.size() - 1);
    in_bucket += count[v];
    filled += count[v];
  }
  start.push_back(n);
  int64_t biggest = 0;
  for (size_t i = 0; i + 1 < start.size(); ++i) biggest = std::max(biggest, start[i + 1] - start[i]);
  if (static_cast<int64_t>(msd.bucket.size()) < biggest) msd.bucket.resize(biggest);
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  if (static_cast<int64_t>(pos.size()) >= line_scatter_buckets) {
    scatter_by_lines(segs, bucket_of, start, pos, msd.lines, b);
  } else {
    scatter_plainly(segs, bucket_of, pos, b);
  }
  for (size_t i = 0; i + 1 < start.size(); ++i) {
    const int64_t m = start[i + 1] - start[i];
    if (m <= kMsdBucketItems) {
      sort_by_key(b + start[i], m, msd.bucket.data());
    } else {  // the greedy buckets pass kMsdBucketItems only with one value
      sort_crowded_bucket(b + start[i], m, msd.bucket.data());
    }
  }
  return b;
}

}  // namespace

void sort_by_key(uint64_t* items, int64_t n, uint64_t* tmp) {
  if (n < 2) return;
  const Segment seg{items, n};
  const uint64_t* out = n > kWideDigitMinItems ? radix_sort_segments<11>(&seg, 1, n, items, tmp)
                                               : radix_sort_segments<8>(&seg, 1, n, items, tmp);
  if (out != items) std::memcpy(items, out, static_cast<size_t>(n) * sizeof(uint64_t));
}

const uint64_t* sort_segments(const std::vector<Segment>& segs, int64_t n, uint64_t* a, uint64_t* b,
                              const SortPaths& paths, MsdScratch& msd) {
  if (sorts_by_buckets(n, paths)) return msd_sort_segments(segs, n, b, paths.line_scatter_buckets, msd);
  if (n < 2) {
    for (const Segment& s : segs) {
      if (s.n) b[0] = s.items[0];
    }
    return b;
  }
  return n > kWideDigitMinItems ? radix_sort_segments<11>(segs.data(), static_cast<int>(segs.size()), n, a, b)
                                : radix_sort_segments<8>(segs.data(), static_cast<int>(segs.size()), n, a, b);
}

void prefetch_items(const uint64_t* items, uint64_t* scratch, int64_t n) {
  constexpr int64_t kLine = 64 / sizeof(uint64_t);
  for (int64_t i = 0; i < n; i += kLine) {
    __builtin_prefetch(items + i);
    __builtin_prefetch(scratch + i, 1);
  }
}

}  // namespace malis
}  // namespace seglosses
