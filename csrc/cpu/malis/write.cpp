#include "write.h"

#include "tasks.h"

namespace seglosses {
namespace malis {
namespace {

// The weights are scattered writes: the line kWritePrefetchAhead records ahead is asked for
// (measured, BENCHMARKS.md).
constexpr int64_t kWritePrefetchAhead = 32;

void write_weights(const Records& r, double sp, double sn, float* out) {
  for (int64_t i = 0; i < r.n; ++i) {
    if (i + kWritePrefetchAhead < r.n) __builtin_prefetch(out + r.merges[i + kWritePrefetchAhead].edge, 1);
    const Merge& m = r.merges[i];
    double weight = double(m.count()) * (m.neg() ? sn : sp);
    // An unconstrained merge with both counts: its negative record follows its positive one.
    if (i + 1 < r.n && r.merges[i + 1].edge == m.edge) weight += double(r.merges[++i].count()) * sn;
    out[m.edge] = static_cast<float>(weight);
  }
}

}  // namespace

void write_weights(const SampleResult& r, float* out, int threads) {
  const uint64_t tp = r.total_pos(), tn = r.total_neg();
  const double sp = tp ? 1.0 / static_cast<double>(tp) : 0.0;
  const double sn = tn ? 1.0 / static_cast<double>(tn) : 0.0;
  run_tasks(threads, static_cast<int64_t>(r.records.size()), [&](int64_t i) { write_weights(r.records[i], sp, sn, out); });
}

void write_counts(const SampleResult& r, int64_t* pos, int64_t* neg, int threads) {
  run_tasks(threads, static_cast<int64_t>(r.records.size()), [&](int64_t i) {
    const Records& rec = r.records[i];
    for (int64_t j = 0; j < rec.n; ++j) {
      const Merge& m = rec.merges[j];
      (m.neg() ? neg : pos)[m.edge] = static_cast<int64_t>(m.count());
    }
  });
}

}  // namespace malis
}  // namespace seglosses
