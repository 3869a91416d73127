#include "finite.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>

namespace seglosses {
namespace malis {
namespace {

// Whether v is finite, tested on its own bits (so a double above FLT_MAX is finite).
template <typename scalar_t>
bool finite_bits(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    uint64_t u;
    std::memcpy(&u, &v, sizeof u);
    return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
  } else {
    const float f = static_cast<float>(v);  // exact for half and bfloat16
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return (u & 0x7f800000u) != 0x7f800000u;
  }
}

// Whether the predictions of the invalid edges (partner outside the volume) are finite.
template <typename scalar_t>
bool invalid_edges_finite(const Geometry& g, const scalar_t* pred) {
  bool ok = true;
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t* lo = &g.lo[c * 3];
    const int64_t* hi = &g.hi[c * 3];
    for (int64_t z = 0; z < g.dims[0]; ++z) {
      for (int64_t y = 0; y < g.dims[1]; ++y) {
        const scalar_t* row = pred + c * g.V + (z * g.dims[1] + y) * g.dims[2];
        auto check = [&](int64_t x0, int64_t x1) {
          for (int64_t x = x0; x < x1; ++x) ok = ok && finite_bits(row[x]);
        };
        if (z >= lo[0] && z < hi[0] && y >= lo[1] && y < hi[1] && lo[2] < hi[2]) {
          check(0, lo[2]);
          check(hi[2], g.dims[2]);
        } else {
          check(0, g.dims[2]);
        }
      }
    }
  }
  return ok;
}

}  // namespace

template <typename scalar_t>
void check_finite_predictions(const Geometry& g, const scalar_t* pred, bool maybe_nonfinite, int64_t sample,
                              const char* fn, const char* pred_name) {
  if (!maybe_nonfinite && invalid_edges_finite(g, pred)) return;
  const int64_t n = g.C * g.V;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(finite_bits(pred[i]), fn, ": ", pred_name, " must be finite, got ", static_cast<double>(pred[i]),
                      " in sample ", sample, " at flat index ", i);
  }
}

template void check_finite_predictions<float>(const Geometry&, const float*, bool, int64_t, const char*, const char*);
template void check_finite_predictions<double>(const Geometry&, const double*, bool, int64_t, const char*, const char*);
template void check_finite_predictions<c10::Half>(const Geometry&, const c10::Half*, bool, int64_t, const char*,
                                                  const char*);
template void check_finite_predictions<c10::BFloat16>(const Geometry&, const c10::BFloat16*, bool, int64_t,
                                                      const char*, const char*);

}  // namespace malis
}  // namespace seglosses
