// Per-voxel Dice arithmetic shared by the CPU kernels (csrc/cpu/dice_cpu.cpp) and the CUDA
// kernels (csrc/cuda/dice_cuda.cu). Everything here is __host__ __device__, so the CPU tests
// exercise exactly the arithmetic the GPU runs.
//
// Notation: x are logits of one voxel, read with a channel stride; K classes (K = C for
// softmax, K = 2 with the sigmoid when C == 1); s_c the class probabilities; p the integer
// exponent of the Dice denominator; acc_t the accumulation type (float for half/bfloat16/float,
// double for double).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SEG_HD __host__ __device__ __forceinline__
#else
#define SEG_HD inline
#endif

namespace seglosses {
namespace dice {

SEG_HD float exp_(float v) { return expf(v); }
SEG_HD double exp_(double v) { return exp(v); }

// v^n for an integer n >= 0 (n is small: p or p - 1).
template <typename acc_t>
SEG_HD acc_t ipow(acc_t v, int n) {
  acc_t r = acc_t(1);
  for (int i = 0; i < n; ++i) r *= v;
  return r;
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

// Softmax statistics of one voxel: the max logit m and 1 / sum_c exp(x_c - m). When e is not
// null, e[c] = exp(x_c - m) is stored too, so a caller with scratch space (the CPU) need not
// recompute it; s_c = exp(x_c - m) * inv_z either way.
template <typename acc_t, typename scalar_t>
SEG_HD void softmax_stats(const scalar_t* x, int64_t stride_c, int64_t C, acc_t& m, acc_t& inv_z,
                          acc_t* e = nullptr) {
  m = static_cast<acc_t>(x[0]);
  for (int64_t c = 1; c < C; ++c) {
    const acc_t v = static_cast<acc_t>(x[c * stride_c]);
    m = v > m ? v : m;
  }
  acc_t z = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t ec = exp_(static_cast<acc_t>(x[c * stride_c]) - m);
    if (e != nullptr) e[c] = ec;
    z += ec;
  }
  inv_z = acc_t(1) / z;
}

// s_c from x_c and the voxel's statistics.
template <typename acc_t>
SEG_HD acc_t softmax_prob(acc_t xc, acc_t m, acc_t inv_z) {
  return exp_(xc - m) * inv_z;
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
template <typename acc_t>
SEG_HD acc_t class_grad(acc_t a_c, acc_t b_c, acc_t s_c, bool is_label, int p) {
  return (is_label ? a_c : acc_t(0)) + b_c * ipow(s_c, p - 1);
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
