// How much does one radix-sort scatter pass cost on this machine, against a plain copy?
// The MALIS sort is ~4 such passes over 6.3 M 8-byte items per 128^3 sample, so this sets its floor.
//
//   g++ -O3 -o /tmp/radix_scatter bench/radix_scatter.cpp && /tmp/radix_scatter
//
// Prints, for 6.3 M random 64-bit items: a memcpy of the array, then one stable counting-sort
// scatter pass by a digit of 4, 6, 8 and 11 bits (16 to 2048 write streams), best of 3 each.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <int kBits>
static double scatter_pass(const uint64_t* src, uint64_t* dst, int64_t n) {
  constexpr uint32_t kBuckets = 1u << kBits;
  std::vector<uint32_t> pos(kBuckets, 0);
  for (int64_t i = 0; i < n; ++i) pos[(src[i] >> 32) & (kBuckets - 1)]++;
  uint32_t sum = 0;
  for (uint32_t b = 0; b < kBuckets; ++b) {
    const uint32_t c = pos[b];
    pos[b] = sum;
    sum += c;
  }
  const double t = now();
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = src[i];
    dst[pos[(k >> 32) & (kBuckets - 1)]++] = k;
  }
  return now() - t;
}

template <int kBits>
static void report(const uint64_t* a, uint64_t* b, int64_t n) {
  double best = 1e9;
  for (int r = 0; r < 3; ++r) best = std::min(best, scatter_pass<kBits>(a, b, n));
  std::printf("scatter pass, %2d-bit digit (%4d streams): %6.1f ms\n", kBits, 1 << kBits, best * 1e3);
}

int main() {
  const int64_t n = 6300000;  // 3 edges per voxel of a 128^3 volume
  std::vector<uint64_t> a(n), b(n);
  std::mt19937_64 rng(1);
  for (auto& x : a) x = rng();
  std::memcpy(b.data(), a.data(), n * sizeof(uint64_t));  // touch the pages
  double best = 1e9;
  for (int r = 0; r < 3; ++r) {
    const double t = now();
    std::memcpy(b.data(), a.data(), n * sizeof(uint64_t));
    best = std::min(best, now() - t);
  }
  std::printf("memcpy of %.0f MB:                         %6.1f ms\n", n * 8 / 1e6, best * 1e3);
  report<4>(a.data(), b.data(), n);
  report<6>(a.data(), b.data(), n);
  report<8>(a.data(), b.data(), n);
  report<11>(a.data(), b.data(), n);
}
