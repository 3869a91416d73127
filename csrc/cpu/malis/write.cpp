#include "write.h"

namespace seglosses {
namespace malis {

// The weights are scattered writes: the line kWritePrefetchAhead records ahead is asked for
// (measured, BENCHMARKS.md).
constexpr int64_t kWritePrefetchAhead = 32;

void write_weights(const SampleResult& r, float* out) {
  const double sp = r.total_pos ? 1.0 / static_cast<double>(r.total_pos) : 0.0;
  const double sn = r.total_neg ? 1.0 / static_cast<double>(r.total_neg) : 0.0;
  for (int64_t i = 0; i < r.n_merges; ++i) {
    if (i + kWritePrefetchAhead < r.n_merges) __builtin_prefetch(out + r.merges[i + kWritePrefetchAhead].edge, 1);
    const Merge& m = r.merges[i];
    double weight = double(m.count) * (m.neg ? sn : sp);
    // An unconstrained merge with both counts: its negative record follows its positive one.
    if (i + 1 < r.n_merges && r.merges[i + 1].edge == m.edge) weight += double(r.merges[++i].count) * sn;
    out[m.edge] = static_cast<float>(weight);
  }
}

void write_counts(const SampleResult& r, int64_t* pos, int64_t* neg) {
  for (int64_t i = 0; i < r.n_merges; ++i) {
    const Merge& m = r.merges[i];
    (m.neg ? neg : pos)[m.edge] = static_cast<int64_t>(m.count);
  }
}

}  // namespace malis
}  // namespace seglosses
