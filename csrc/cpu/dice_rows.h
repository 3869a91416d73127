// Row operations of the CPU Dice kernels: each works on one tile row of kTile voxels (dtype
// conversion on load and store, label classification, masks, powers) as a simple loop that the
// compiler vectorises. Everything is always-inline, so each CPU clone of a kernel
// (SEGLOSSES_CPU_CLONES) gets its own vectorised copy. Input dtypes are a runtime switch per row:
// they do not multiply the number of compiled kernels.
#pragma once

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cstring>

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

// One input element as acc_t (half types through float; double stays double).
template <typename acc_t, typename src_t>
SEGLOSSES_ALWAYS_INLINE acc_t to_acc(src_t v) {
  return static_cast<acc_t>(static_cast<float>(v));
}
template <>
SEGLOSSES_ALWAYS_INLINE double to_acc<double, double>(double v) {
  return v;
}

template <typename src_t, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void load_row_as(acc_t* dst, const void* base, int64_t sv, int64_t n) {
  const src_t* src = static_cast<const src_t*>(base);
  if (sv == 1) {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t] = to_acc<acc_t>(src[t]);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t] = to_acc<acc_t>(src[t * sv]);
  }
}

// dst[0, n) = the row's values as acc_t, dst[n, kTile) = 0 (any element type).
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE void load_row(acc_t* dst, const void* base, Elem elem, int64_t sv, int64_t n) {
  switch (elem) {
    case Elem::kF16:
      load_row_as<c10::Half>(dst, base, sv, n);
      break;
    case Elem::kBF16:
      load_row_as<c10::BFloat16>(dst, base, sv, n);
      break;
    case Elem::kF32:
      load_row_as<float>(dst, base, sv, n);
      break;
    case Elem::kF64:
      load_row_as<double>(dst, base, sv, n);
      break;
    case Elem::kBool:
      load_row_as<bool>(dst, base, sv, n);
      break;
    case Elem::kU8:
      load_row_as<uint8_t>(dst, base, sv, n);
      break;
    case Elem::kI8:
      load_row_as<int8_t>(dst, base, sv, n);
      break;
    case Elem::kU16:
      load_row_as<uint16_t>(dst, base, sv, n);
      break;
    case Elem::kI16:
      load_row_as<int16_t>(dst, base, sv, n);
      break;
    case Elem::kU32:
      load_row_as<uint32_t>(dst, base, sv, n);
      break;
    case Elem::kI32:
      load_row_as<int32_t>(dst, base, sv, n);
      break;
    case Elem::kU64:
      load_row_as<uint64_t>(dst, base, sv, n);
      break;
    case Elem::kI64:
      load_row_as<int64_t>(dst, base, sv, n);
      break;
  }
#pragma omp simd
  for (int64_t t = n; t < kTile; ++t) dst[t] = acc_t(0);
}

template <typename dst_t, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void store_row_as(void* base, int64_t sv, const acc_t* src, int64_t n) {
  dst_t* dst = static_cast<dst_t*>(base);
  if (sv == 1) {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<dst_t>(src[t]);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t * sv] = static_cast<dst_t>(src[t]);
  }
}

// Writes src[0, n) to a gradient row in its floating dtype (rounded to nearest even).
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE void store_row(void* base, Elem elem, int64_t sv, const acc_t* src, int64_t n) {
  switch (elem) {
    case Elem::kF16:
      store_row_as<c10::Half>(base, sv, src, n);
      break;
    case Elem::kBF16:
      store_row_as<c10::BFloat16>(base, sv, src, n);
      break;
    case Elem::kF32:
      store_row_as<float>(base, sv, src, n);
      break;
    default:
      store_row_as<double>(base, sv, src, n);
      break;
  }
}

template <typename label_t, typename cmp_t>
SEGLOSSES_ALWAYS_INLINE void classify_row_as(int32_t* cls, const void* base, int64_t sv, int64_t n, int64_t K,
                                             int64_t ignore_label) {
  const label_t* y = static_cast<const label_t*>(base);
  if (sv == 1) {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) cls[t] = classify_label(static_cast<cmp_t>(y[t]), K, ignore_label);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) cls[t] = classify_label(static_cast<cmp_t>(y[t * sv]), K, ignore_label);
  }
}

// cls[t] = the class of voxel t's label (or kIgnored / kBadLabel) for t < n; kIgnored for the
// padding. Signed labels compare as int64, unsigned ones as uint64.
SEGLOSSES_ALWAYS_INLINE void classify_row(int32_t* cls, const void* base, Elem elem, int64_t sv, int64_t n, int64_t K,
                                          int64_t ignore_label) {
  switch (elem) {
    case Elem::kU8:
      classify_row_as<uint8_t, uint64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kI8:
      classify_row_as<int8_t, int64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kU16:
      classify_row_as<uint16_t, uint64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kI16:
      classify_row_as<int16_t, int64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kU32:
      classify_row_as<uint32_t, uint64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kI32:
      classify_row_as<int32_t, int64_t>(cls, base, sv, n, K, ignore_label);
      break;
    case Elem::kU64:
      classify_row_as<uint64_t, uint64_t>(cls, base, sv, n, K, ignore_label);
      break;
    default:  // kI64
      classify_row_as<int64_t, int64_t>(cls, base, sv, n, K, ignore_label);
      break;
  }
#pragma omp simd
  for (int64_t t = n; t < kTile; ++t) cls[t] = kIgnored;
}

// Whether each mask element is nonzero, as torch's mask.bool() decides: for floating masks the
// bits without the sign (so -0.0 is zero and NaN is nonzero).
template <typename bits_t>
SEGLOSSES_ALWAYS_INLINE void mask_row_as(int32_t* keep, const void* base, int64_t sv, int64_t n, bits_t value_bits) {
  const char* p = static_cast<const char*>(base);
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) {
    bits_t m;
    std::memcpy(&m, p + t * sv * static_cast<int64_t>(sizeof(bits_t)), sizeof m);
    keep[t] = (m & value_bits) != 0;
  }
}

// keep[t] = 1 where mask element t is nonzero, else 0 (t < n).
SEGLOSSES_ALWAYS_INLINE void mask_row(int32_t* keep, const void* base, Elem elem, int64_t sv, int64_t n) {
  switch (elem) {
    case Elem::kBool:
    case Elem::kU8:
    case Elem::kI8:
      mask_row_as<uint8_t>(keep, base, sv, n, 0xffu);
      break;
    case Elem::kU16:
    case Elem::kI16:
      mask_row_as<uint16_t>(keep, base, sv, n, 0xffffu);
      break;
    case Elem::kF16:
    case Elem::kBF16:
      mask_row_as<uint16_t>(keep, base, sv, n, 0x7fffu);
      break;
    case Elem::kU32:
    case Elem::kI32:
      mask_row_as<uint32_t>(keep, base, sv, n, 0xffffffffu);
      break;
    case Elem::kF32:
      mask_row_as<uint32_t>(keep, base, sv, n, 0x7fffffffu);
      break;
    case Elem::kF64:
      mask_row_as<uint64_t>(keep, base, sv, n, 0x7fffffffffffffffull);
      break;
    default:  // kU64, kI64
      mask_row_as<uint64_t>(keep, base, sv, n, ~0ull);
      break;
  }
}

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
