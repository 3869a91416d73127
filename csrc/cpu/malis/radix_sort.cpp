#include "radix_sort.h"

#include <cstring>
#include <utility>

namespace seglosses {
namespace malis {
namespace {

// LSD radix sort by the upper 32 bits, kDigit bits per pass; the low 32 bits ride along. Passes
// whose digit is the same for every item are skipped.
template <int kDigit>
void radix_sort_by_key(uint64_t* items, int64_t n, uint64_t* tmp) {
  constexpr int kBuckets = 1 << kDigit;
  constexpr int kPasses = (32 + kDigit - 1) / kDigit;
  if (n < 2) return;
  uint32_t hist[kPasses][kBuckets] = {};
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = static_cast<uint32_t>(items[i] >> 32);
    for (int pass = 0; pass < kPasses; ++pass) hist[pass][(k >> (kDigit * pass)) & (kBuckets - 1)]++;
  }
  uint64_t* src = items;
  uint64_t* dst = tmp;
  for (int pass = 0; pass < kPasses; ++pass) {
    uint32_t* pos = hist[pass];
    const int shift = 32 + kDigit * pass;
    if (pos[(src[0] >> shift) & (kBuckets - 1)] == static_cast<uint32_t>(n)) continue;  // one bucket
    uint32_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const uint32_t c = pos[b];
      pos[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t k = src[i];
      dst[pos[(k >> shift) & (kBuckets - 1)]++] = k;
    }
    std::swap(src, dst);
  }
  if (src != items) std::memcpy(items, src, static_cast<size_t>(n) * sizeof(uint64_t));
}

// From this many items on, 11-bit digits (3 passes) beat bytes (4 passes): below it the three
// 2048-bucket prefix sums cost more than the 4th pass (measured, BENCHMARKS.md).
constexpr int64_t kWideDigitMinItems = int64_t(1) << 9;

}  // namespace

void sort_by_key(uint64_t* items, int64_t n, uint64_t* tmp) {
  if (n > kWideDigitMinItems) {
    radix_sort_by_key<11>(items, n, tmp);
  } else {
    radix_sort_by_key<8>(items, n, tmp);
  }
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
