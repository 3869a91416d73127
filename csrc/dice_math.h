// Per-element arithmetic of the Dice family, shared by the CPU kernels (csrc/cpu/dice_*.cpp) and
// the CUDA kernels (csrc/cuda/dice_*.cu). Everything here is __host__ __device__ and works on one
// element at a time, so the CPU tests exercise exactly the arithmetic the GPU runs; the CPU calls
// these functions inside loops over a tile of voxels that the compiler vectorises.
//
// Notation: x are logits; K classes (K = C for softmax, K = 2 with the sigmoid when C == 1 and the
// target is a label map, K = C for the multi-label sigmoid); s the class probabilities; p the
// integer exponent of the Dice denominator; acc_t the accumulation type (float for half /
// bfloat16 / float, double for double).
//
// Per (sample, class) the kernels accumulate the sums the losses are built from:
//   I = sum s t,  P = sum s^p,  T = sum t^p  (t = [y == c] for label maps, the target otherwise)
// and, for the cross-entropy terms, the negative log-likelihoods of the same activation.
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

// The largest p accepted (s^p is computed by squaring, so the cost is O(log p); beyond this every
// s < 1 underflows anyway). Mirrored by seglosses/_dice.py: MAX_P.
constexpr int64_t kMaxP = 1024;

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
  const float kLo = -87.33654f;      // ln(2^-126)
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
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

// log(v) for a positive normal float (every caller passes v >= 1), branch-free: v = 2^e m with
// m in [sqrt(1/2), sqrt(2)), log(m) from the Cephes logf polynomial in m - 1 (about 1 ulp).
SEG_HD float log_(float v) {
  int32_t bits = float_to_bits(v);
  // e = the exponent that moves m into [sqrt(1/2), sqrt(2)), read off the bits relative to sqrt(1/2).
  const int32_t kOffset = 0x3f3504f3;  // bits of sqrt(1/2)
  const int32_t e = (bits - kOffset) >> 23;
  bits -= e * (1 << 23);
  const float m = bits_to_float(bits) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + fe * 0.693359375f;
}

SEG_HD double log_(double v) { return log(v); }

// log(1 + e) for e in [0, 1] without losing the small values: u = 1 + e rounds, and
// log(u) * e / (u - 1) corrects for the rounding (Goldberg's trick); e itself where u == 1.
template <typename acc_t>
SEG_HD acc_t log1p_(acc_t e) {
  const acc_t u = acc_t(1) + e;
  const acc_t d = u - acc_t(1);
  const acc_t safe_d = d == acc_t(0) ? acc_t(1) : d;
  return d == acc_t(0) ? e : log_(u) * (e / safe_d);
}

template <typename acc_t>
SEG_HD acc_t max_(acc_t a, acc_t b) {
  return b > a ? b : a;
}

// v^n for an integer 0 <= n <= kMaxP, by squaring (O(log n) multiplications).
template <typename acc_t>
SEG_HD acc_t ipow(acc_t v, int n) {
  acc_t r = acc_t(1);
  while (n > 0) {
    if (n & 1) r *= v;
    v *= v;
    n >>= 1;
  }
  return r;
}

// Rows of the sums tables (csrc/seglosses.cpp). Label maps, [B, 4, K]: I, P, T and the
// cross-entropy L; multi-label sigmoid, [B, 6, C]: I, P, T, Lpos = sum t softplus(-x),
// Lneg = sum (1 - t) softplus(x) and the number N of counted elements.
constexpr int kRowI = 0, kRowP = 1, kRowT = 2, kRowL = 3, kLabelRows = 4;
constexpr int kRowLpos = 3, kRowLneg = 4, kRowN = 5, kSigmoidRows = 6;

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

// Element type of an input as the kernels read it (labels, masks and targets are read in place in
// their own dtype; the host maps torch's dtypes to these in csrc/dice.h).
enum class Elem : int8_t { kBool, kU8, kI8, kU16, kI16, kU32, kI32, kU64, kI64, kF16, kBF16, kF32, kF64 };

// Number of classes for C logit channels of a label-map loss: C, or 2 for the sigmoid case C == 1.
SEG_HD int64_t num_classes_from_c(int64_t C) { return C == 1 ? 2 : C; }

// Label classification: a class index in [0, K), kIgnored for ignore_label (or a masked voxel),
// kBadLabel otherwise. A bad label counts nowhere (like an ignored one); when label validation is
// on, the host raises for the first one instead.
constexpr int32_t kIgnored = -1;
constexpr int32_t kBadLabel = -2;

// Signed label types: compared as int64.
SEG_HD int32_t classify_label(int64_t label, int64_t K, int64_t ignore_label) {
  if (label == ignore_label) return kIgnored;
  if (label < 0 || label >= K) return kBadLabel;
  return static_cast<int32_t>(label);
}

// Unsigned label types: compared as uint64, so that no negative ignore_label matches a large
// unsigned label (uint8 255 is not -1).
SEG_HD int32_t classify_label(uint64_t label, int64_t K, int64_t ignore_label) {
  if (ignore_label >= 0 && label == static_cast<uint64_t>(ignore_label)) return kIgnored;
  if (label >= static_cast<uint64_t>(K)) return kBadLabel;
  return static_cast<int32_t>(label);
}

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------

// Softmax of one voxel, in three steps over its channels:
//   m = max_c x_c;  e_c = shifted_exp(x_c, m);  s_c = e_c * inv_z with inv_z = 1 / sum_c e_c.
template <typename acc_t>
SEG_HD acc_t shifted_exp(acc_t x_c, acc_t m) {
  return exp_(x_c - m);
}

// -log s_c of the softmax from the voxel's statistics: log z - (x_c - m), with log z = -log inv_z
// (z >= 1, so the log is of a normal number), exact even where s_c underflows.
template <typename acc_t>
SEG_HD acc_t softmax_nll(acc_t x_c, acc_t m, acc_t inv_z) {
  return log_(acc_t(1) / inv_z) - (x_c - m);
}

// Sigmoid of x: s1 = sigmoid(x), s0 = 1 - sigmoid(x), both without cancellation, and
// e = exp(-|x|) for the softplus terms of the cross-entropy.
template <typename acc_t>
SEG_HD void sigmoid_pair(acc_t x, acc_t& s0, acc_t& s1, acc_t& e) {
  e = exp_(x >= acc_t(0) ? -x : x);  // exp(-|x|) in (0, 1]
  const acc_t big = acc_t(1) / (acc_t(1) + e);
  const acc_t small = e * big;
  s1 = x >= acc_t(0) ? big : small;
  s0 = x >= acc_t(0) ? small : big;
}

template <typename acc_t>
SEG_HD void sigmoid_pair(acc_t x, acc_t& s0, acc_t& s1) {
  acc_t e;
  sigmoid_pair(x, s0, s1, e);
}

// softplus(x) = log(1 + exp(x)) = -log(1 - sigmoid(x)), from e = exp(-|x|): max(x, 0) + log1p(e).
// softplus(-x) = -log sigmoid(x) = softplus(x) - x.
template <typename acc_t>
SEG_HD acc_t softplus_(acc_t x, acc_t e) {
  return (x > acc_t(0) ? x : acc_t(0)) + log1p_(e);
}

// ---------------------------------------------------------------------------------------------
// Gradients. The backward passes get the gradient of the loss with respect to the sums (the
// coefficient tables): a = dLoss/dI, bp = p dLoss/dP (p folded in), l = dLoss/dL (cross-entropy).
// ---------------------------------------------------------------------------------------------

// dLoss/ds_c for one voxel of a label map: g_c = a_c [label == c] + bp_c s_c^(p-1); spm1 = s_c^(p-1).
template <typename acc_t>
SEG_HD acc_t class_grad(acc_t a_c, acc_t bp_c, acc_t spm1, bool is_label) {
  return (is_label ? a_c : acc_t(0)) + bp_c * spm1;
}

// Softmax Jacobian-vector product plus the cross-entropy term of the voxel's class y:
// dLoss/dx_k = s_k (g_k - sum_c g_c s_c) + l_y (s_k - [k == y]).
template <typename acc_t>
SEG_HD acc_t softmax_grad(acc_t s_k, acc_t g_k, acc_t dot, acc_t l_y, bool is_label) {
  return s_k * (g_k - dot + l_y) - (is_label ? l_y : acc_t(0));
}

// Binary label map (C == 1, s1 = sigmoid(x)): dLoss/dx = s1 s0 (g1 - g0) plus the cross-entropy
// term: d(-log s1)/dx = -s0 for label 1, d(-log s0)/dx = s1 for label 0.
template <typename acc_t>
SEG_HD acc_t binary_grad(acc_t s0, acc_t s1, acc_t g0, acc_t g1, acc_t l_y, int32_t cls) {
  const acc_t ce = cls == 1 ? -s0 : s1;
  return s1 * s0 * (g1 - g0) + l_y * ce;
}

// Multi-label sigmoid, one element with target t: I = s t, P = s^p, T = t^p,
// Lpos = t softplus(-x), Lneg = (1 - t) softplus(x). With spm1 = s^(p-1):
// dLoss/dx = s (1 - s) (a t + bp spm1) - lpos t (1 - s) + lneg (1 - t) s.
template <typename acc_t>
SEG_HD acc_t sigmoid_grad(acc_t s0, acc_t s1, acc_t t, acc_t spm1, acc_t a, acc_t bp, acc_t lpos, acc_t lneg) {
  return s1 * s0 * (a * t + bp * spm1) - lpos * t * s0 + lneg * (acc_t(1) - t) * s1;
}

}  // namespace dice
}  // namespace seglosses
