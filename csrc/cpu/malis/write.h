// Stage 6: a sample's records into the output tensors (which hold zeros), on up to `threads`
// threads (every edge has its records in one task's list, so the lists are written in parallel).
#pragma once

#include <cstdint>

#include "sweep.h"

namespace seglosses {
namespace malis {

// out[e] = pos_e / total_pos + neg_e / total_neg (a zero total contributes nothing), float32.
void write_weights(const SampleResult& r, float* out, int threads);

// pos[e], neg[e]: the exact pair counts.
void write_counts(const SampleResult& r, int64_t* pos, int64_t* neg, int threads);

}  // namespace malis
}  // namespace seglosses
