// Row operations of the CPU Dice kernels: each works on one tile row of kTile voxels (dtype
// conversion on load and store, label classification, masks, powers) as a simple loop that the
// compiler vectorises. Input dtypes are a runtime switch per row, so they do not multiply the
// number of compiled kernels. The conversions are functions of their own (dice_rows.cpp, with
// CPU clones); the arithmetic ones here are always-inline, so each clone of a kernel gets its own
// vectorised copy.
#pragma once

#include "cpu_clones.h"
#include "dice_kernels.h"
#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace cpu {

inline int64_t elem_size(Elem e) {
  switch (e) {
    case Elem::kBool:
    case Elem::kU8:
    case Elem::kI8:
      return 1;
    case Elem::kU16:
    case Elem::kI16:
    case Elem::kF16:
    case Elem::kBF16:
      return 2;
    case Elem::kU32:
    case Elem::kI32:
    case Elem::kF32:
      return 4;
    default:
      return 8;
  }
}

// Address of element (b, c, i) of a view.
inline const void* at(const View& v, int64_t b, int64_t c, int64_t i) {
  return static_cast<const char*>(v.data) + (b * v.sb + c * v.sc + i * v.sv) * elem_size(v.elem);
}

inline void* at(const OutView& v, int64_t b, int64_t c, int64_t i) {
  return static_cast<char*>(v.data) + (b * v.sb + c * v.sc + i * v.sv) * elem_size(v.elem);
}

// Input and output rows (defined in dice_rows.cpp, compiled once per CPU clone; one call per
// tile row costs nothing next to its kTile elements).

// dst[0, n) = a row of logits (float16, bfloat16, float32 or float64) as acc_t; dst[n, kTile) = 0.
template <typename acc_t>
void load_logit_row(acc_t* dst, const void* base, Elem elem, int64_t sv, int64_t n);

// dst[0, n) = a row of multi-label targets (any element type) as acc_t; dst[n, kTile) = 0.
template <typename acc_t>
void load_target_row(acc_t* dst, const void* base, Elem elem, int64_t sv, int64_t n);

// Writes src[0, n) to a gradient row in its floating dtype (rounded to nearest even).
template <typename acc_t>
void store_row(void* base, Elem elem, int64_t sv, const acc_t* src, int64_t n);

// cls[t] = the class of voxel t's label (or kIgnored / kBadLabel) for t < n; kIgnored for the
// padding. Signed labels compare as int64, unsigned ones as uint64.
void classify_row(int32_t* cls, const void* base, Elem elem, int64_t sv, int64_t n, int64_t K, int64_t ignore_label);

// keep[t] = 1 where mask element t is nonzero (as torch's mask.bool(): for floating masks the
// bits without the sign, so -0.0 is zero and NaN is nonzero), else 0 (t < n).
void mask_row(int32_t* keep, const void* base, Elem elem, int64_t sv, int64_t n);

// The first t < n with cls[t] == kBadLabel (or kNoBad); every bad label becomes kIgnored, so that
// with validation off a bad label counts nowhere.
SEGLOSSES_ALWAYS_INLINE int64_t take_bad(int32_t* cls, int64_t n) {
  int32_t any_bad = 0;
#pragma omp simd reduction(| : any_bad)
  for (int64_t t = 0; t < n; ++t) any_bad |= static_cast<int32_t>(cls[t] == kBadLabel);
  if (!any_bad) return kNoBad;
  int64_t first = kNoBad;
  for (int64_t t = n - 1; t >= 0; --t) {
    if (cls[t] == kBadLabel) first = t, cls[t] = kIgnored;
  }
  return first;
}

// s^n over a tile (0 <= n <= kMaxP) by squaring; returns the result: s itself when n == 1, else
// out. tmp is scratch.
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE const acc_t* pow_row(const acc_t* s, int n, acc_t* out, acc_t* tmp) {
  if (n == 1) return s;
  if (n == 2) {
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) out[t] = s[t] * s[t];
    return out;
  }
  if (n == 0) {
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) out[t] = acc_t(1);
    return out;
  }
  const acc_t* base = s;
  bool started = false;
  while (true) {
    if (n & 1) {
      if (started) {
#pragma omp simd
        for (int64_t t = 0; t < kTile; ++t) out[t] *= base[t];
      } else {
#pragma omp simd
        for (int64_t t = 0; t < kTile; ++t) out[t] = base[t];
      }
      started = true;
    }
    n >>= 1;
    if (n == 0) break;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) tmp[t] = base[t] * base[t];
    base = tmp;
  }
  return out;
}

}  // namespace cpu
}  // namespace dice
}  // namespace seglosses
