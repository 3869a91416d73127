// Per-voxel Dice arithmetic shared by the CPU kernels (csrc/cpu/dice_cpu.cpp) and the CUDA
// kernels (csrc/cuda/dice_cuda.cu). Everything here is __host__ __device__ and works on one
// element at a time, so the CPU tests exercise exactly the arithmetic the GPU runs; the CPU
// calls these functions inside loops over voxels that the compiler vectorises.
//
// Notation: x are logits; K classes (K = C for softmax, K = 2 with the sigmoid when C == 1);
// s_c the class probabilities; p the integer exponent of the Dice denominator; acc_t the
// accumulation type (float for half / bfloat16 / float, double for double).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEG_HD __host__ __device__ __forceinline__
#else
#define SEG_HD inline
#endif

namespace seglosses {
namespace dice {

SEG_HD float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
#endif
}

SEG_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
#endif
}

// exp(v) for v <= 0 (every caller passes x - max or -|x|), branch-free so that loops over
// voxels vectorise: exp(v) = 2^n exp(r) with n = round(v / ln 2) and a degree-6 polynomial on
// |r| <= ln(2)/2 (the Cephes expf coefficients; about 1 ulp). Results below 2^-126 are clamped
// to ~1.2e-38, which no Dice sum can tell from 0. NaN propagates.
SEG_HD float exp_(float v) {
  const float kLo = -87.33654f;           // ln(2^-126)
  const float kMagic = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  v = v < kLo ? kLo : v;
  v = v > 0.0f ? 0.0f : v;
  const float t = v * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  const int32_t ni = float_to_bits(t) - float_to_bits(kMagic);
  float r = v - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  return y * bits_to_float((ni + 127) << 23);
}

SEG_HD double exp_(double v) { return exp(v); }

template <typename acc_t>
SEG_HD acc_t max_(acc_t a, acc_t b) {
  return b > a ? b : a;
}

// v^n for an integer n >= 0 (n is small: p or p - 1).
template <typename acc_t>
SEG_HD acc_t ipow(acc_t v, int n) {
  acc_t r = acc_t(1);
  for (int i = 0; i < n; ++i) r *= v;
  return r;
}

// v^n with n = N when N >= 0 is known at compile time (the CPU kernels specialise p = 1, 2, so
// their loops vectorise), else the runtime n.
template <int N, typename acc_t>
SEG_HD acc_t ipow_n(acc_t v, int n) {
  if constexpr (N >= 0) {
    acc_t r = acc_t(1);
    for (int i = 0; i < N; ++i) r *= v;
    return r;
  } else {
    return ipow(v, n);
  }
}

// Number of classes for C logit channels: C, or 2 for the sigmoid case C == 1.
SEG_HD int64_t num_classes_from_c(int64_t C) { return C == 1 ? 2 : C; }

// Label classification: a class index in [0, K), kIgnored for ignore_label, kBadLabel otherwise.
constexpr int64_t kIgnored = -1;
constexpr int64_t kBadLabel = -2;

SEG_HD int64_t classify_label(int64_t label, int64_t K, int64_t ignore_label) {
  if (label == ignore_label) return kIgnored;
  if (label < 0 || label >= K) return kBadLabel;
  return label;
}

// Softmax of one voxel, in three steps over its channels:
//   m = max_c x_c;  e_c = shifted_exp(x_c, m);  s_c = e_c * inv_z with inv_z = 1 / sum_c e_c.
template <typename acc_t>
SEG_HD acc_t shifted_exp(acc_t x_c, acc_t m) {
  return exp_(x_c - m);
}

// Binary case (C == 1): s1 = sigmoid(x), s0 = 1 - sigmoid(x), both without cancellation.
template <typename acc_t>
SEG_HD void sigmoid_pair(acc_t x, acc_t& s0, acc_t& s1) {
  const acc_t e = exp_(x >= acc_t(0) ? -x : x);  // exp(-|x|) in (0, 1]
  const acc_t big = acc_t(1) / (acc_t(1) + e);
  const acc_t small = e * big;
  s1 = x >= acc_t(0) ? big : small;
  s0 = x >= acc_t(0) ? small : big;
}

// dLoss/ds_c for one voxel: g_c = a_c [label == c] + b_c s_c^(p-1).
// a_c = dLoss/dI_c, b_c = p dLoss/dP_c (the coefficient tables of the backward pass).
// PM1 = p - 1 when known at compile time, else -1.
template <int PM1 = -1, typename acc_t>
SEG_HD acc_t class_grad(acc_t a_c, acc_t b_c, acc_t s_c, bool is_label, int p) {
  return (is_label ? a_c : acc_t(0)) + b_c * ipow_n<PM1>(s_c, p - 1);
}

// Softmax Jacobian-vector product: dLoss/dx_k = s_k (g_k - sum_c g_c s_c).
template <typename acc_t>
SEG_HD acc_t softmax_grad(acc_t s_k, acc_t g_k, acc_t dot) {
  return s_k * (g_k - dot);
}

// Sigmoid case: dLoss/dx = s1 s0 (g_1 - g_0).
template <typename acc_t>
SEG_HD acc_t sigmoid_grad(acc_t s0, acc_t s1, acc_t g0, acc_t g1) {
  return s1 * s0 * (g1 - g0);
}

}  // namespace dice
}  // namespace seglosses
