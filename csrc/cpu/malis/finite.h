// The finiteness contract of the predictions, shared by every kernel table: the emission kernel
// tests the valid edges' predictions as it reads them (as float32: a double beyond the float
// range tests as infinite) and reports whether one may be non-finite; check_finite_predictions
// then tests the invalid edges (which the emission does not read) and, if either test failed,
// finds and reports the first non-finite value on the predictions' own bits, before any sort or
// sweep.
#pragma once

#include <cstdint>

#include "geometry.h"

namespace seglosses {
namespace malis {

// Raises (naming fn and the prediction argument pred_name) unless every prediction of the sample
// is finite. maybe_nonfinite: what the emission kernel returned.
template <typename scalar_t>
void check_finite_predictions(const Geometry& g, const scalar_t* pred, bool maybe_nonfinite, int64_t sample,
                              const char* fn, const char* pred_name);

}  // namespace malis
}  // namespace seglosses
