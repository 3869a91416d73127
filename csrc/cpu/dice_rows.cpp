// Input and output rows of the CPU Dice kernels (declared in dice_rows.h): conversions between
// the tensors' own dtypes and the kernels' accumulation type, label classification and masks,
// one tile row at a time. Compiled once per CPU clone (SEGLOSSES_CPU_CLONES) and called from
// every kernel, instead of being inlined into each of them.
#include <cmath>
#include <cstring>

#include "dice_rows.h"

namespace seglosses {
namespace dice {
namespace cpu {
namespace {

// float16 / bfloat16 <-> float, bit for bit as c10::Half / c10::BFloat16 convert (round to
// nearest even), written so that loops over a row vectorise (c10's scalar versions do not).
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

SEGLOSSES_ALWAYS_INLINE float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  return bits_float(sign | float_bits(two_w < (1u << 27) ? denormalized : normalized));
}

SEGLOSSES_ALWAYS_INLINE uint16_t float_to_half(float f) {
  const float scaled = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = float_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const uint32_t bits = float_bits(bits_float((bias >> 1) + 0x07800000u) + scaled);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

SEGLOSSES_ALWAYS_INLINE float bfloat16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

SEGLOSSES_ALWAYS_INLINE uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

// Tags for the 16-bit float types, read and written as their bits.
struct HalfBits {
  uint16_t x;
};
struct BFloat16Bits {
  uint16_t x;
};

// One input element as acc_t (half types through float; double stays double).
template <typename acc_t, typename src_t>
SEGLOSSES_ALWAYS_INLINE acc_t to_acc(src_t v) {
  return static_cast<acc_t>(static_cast<float>(v));
}
template <>
SEGLOSSES_ALWAYS_INLINE double to_acc<double, double>(double v) {
  return v;
}
template <>
SEGLOSSES_ALWAYS_INLINE float to_acc<float, HalfBits>(HalfBits v) {
  return half_to_float(v.x);
}
template <>
SEGLOSSES_ALWAYS_INLINE float to_acc<float, BFloat16Bits>(BFloat16Bits v) {
  return bfloat16_to_float(v.x);
}
template <>
SEGLOSSES_ALWAYS_INLINE double to_acc<double, HalfBits>(HalfBits v) {
  return half_to_float(v.x);
}
template <>
SEGLOSSES_ALWAYS_INLINE double to_acc<double, BFloat16Bits>(BFloat16Bits v) {
  return bfloat16_to_float(v.x);
}

// acc_t as one output element.
template <typename dst_t, typename acc_t>
SEGLOSSES_ALWAYS_INLINE dst_t from_acc(acc_t v) {
  return static_cast<dst_t>(v);
}
template <>
SEGLOSSES_ALWAYS_INLINE HalfBits from_acc<HalfBits, float>(float v) {
  return {float_to_half(v)};
}
template <>
SEGLOSSES_ALWAYS_INLINE BFloat16Bits from_acc<BFloat16Bits, float>(float v) {
  return {float_to_bfloat16(v)};
}
// (double accumulation only ever meets float64 x; these keep the switch compiling)
template <>
SEGLOSSES_ALWAYS_INLINE HalfBits from_acc<HalfBits, double>(double v) {
  return {float_to_half(static_cast<float>(v))};
}
template <>
SEGLOSSES_ALWAYS_INLINE BFloat16Bits from_acc<BFloat16Bits, double>(double v) {
  return {float_to_bfloat16(static_cast<float>(v))};
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

template <typename dst_t, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void store_row_as(void* base, int64_t sv, const acc_t* src, int64_t n) {
  dst_t* dst = static_cast<dst_t*>(base);
  if (sv == 1) {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t] = from_acc<dst_t>(src[t]);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) dst[t * sv] = from_acc<dst_t>(src[t]);
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

}  // namespace

template <typename acc_t>
SEGLOSSES_CPU_CLONES void load_logit_row(acc_t* dst, const void* base, Elem elem, int64_t sv, int64_t n) {
  switch (elem) {
    case Elem::kF16:
      load_row_as<HalfBits>(dst, base, sv, n);
      break;
    case Elem::kBF16:
      load_row_as<BFloat16Bits>(dst, base, sv, n);
      break;
    case Elem::kF32:
      load_row_as<float>(dst, base, sv, n);
      break;
    default:
      load_row_as<double>(dst, base, sv, n);
      break;
  }
#pragma omp simd
  for (int64_t t = n; t < kTile; ++t) dst[t] = acc_t(0);
}

template <typename acc_t>
SEGLOSSES_CPU_CLONES void load_target_row(acc_t* dst, const void* base, Elem elem, int64_t sv, int64_t n) {
  switch (elem) {
    case Elem::kF16:
    case Elem::kBF16:
    case Elem::kF32:
    case Elem::kF64:
      load_logit_row(dst, base, elem, sv, n);
      return;
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

template <typename acc_t>
SEGLOSSES_CPU_CLONES void store_row(void* base, Elem elem, int64_t sv, const acc_t* src, int64_t n) {
  switch (elem) {
    case Elem::kF16:
      store_row_as<HalfBits>(base, sv, src, n);
      break;
    case Elem::kBF16:
      store_row_as<BFloat16Bits>(base, sv, src, n);
      break;
    case Elem::kF32:
      store_row_as<float>(base, sv, src, n);
      break;
    default:
      store_row_as<double>(base, sv, src, n);
      break;
  }
}

SEGLOSSES_CPU_CLONES void classify_row(int32_t* cls, const void* base, Elem elem, int64_t sv, int64_t n, int64_t K,
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

SEGLOSSES_CPU_CLONES void mask_row(int32_t* keep, const void* base, Elem elem, int64_t sv, int64_t n) {
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

template void load_logit_row<float>(float*, const void*, Elem, int64_t, int64_t);
template void load_logit_row<double>(double*, const void*, Elem, int64_t, int64_t);
template void load_target_row<float>(float*, const void*, Elem, int64_t, int64_t);
template void load_target_row<double>(double*, const void*, Elem, int64_t, int64_t);
template void store_row<float>(void*, Elem, int64_t, const float*, int64_t);
template void store_row<double>(void*, Elem, int64_t, const double*, int64_t);

}  // namespace cpu
}  // namespace dice
}  // namespace seglosses
