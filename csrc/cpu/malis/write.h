// Stage 6: a sample's records into the output tensors (which hold zeros).
#pragma once

#include <cstdint>

#include "sweep.h"

namespace seglosses {
namespace malis {

// out[e] = pos_e / total_pos + neg_e / total_neg (a zero total contributes nothing), float32.
void write_weights(const SampleResult& r, float* out);

// pos[e], neg[e]: the exact pair counts.
void write_counts(const SampleResult& r, int64_t* pos, int64_t* neg);

}  // namespace malis
}  // namespace seglosses
