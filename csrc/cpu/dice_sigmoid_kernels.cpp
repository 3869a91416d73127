// CPU kernels of the multi-label sigmoid Dice family: each channel c of x is its own binary
// problem, s = sigmoid(x_c) against a target t of x's shape (bool, integer or float in [0, 1], read
// in place). Per chunk of one (sample, channel) row: the sums I = sum s t, P = sum s^p,
// T = sum t^p, the cross-entropy halves Lpos = sum t softplus(-x), Lneg = sum (1-t) softplus(x)
// and the count N; and the elementwise backward pass. Called by csrc/cpu/dice_cpu.cpp; same
// tile scheme and CPU clones as dice_label_kernels.cpp.
#include <algorithm>

#include "dice_kernels.h"
#include "dice_rows.h"

namespace seglosses {
namespace dice {
namespace cpu {
namespace {

template <typename acc_t>
struct SigmoidTile {
  alignas(64) acc_t x[kTile];   // logits
  alignas(64) acc_t t[kTile];   // targets (0 where the element does not count)
  alignas(64) acc_t s0[kTile];  // 1 - sigmoid(x)
  alignas(64) acc_t s1[kTile];  // sigmoid(x) (0 where the element does not count)
  alignas(64) acc_t e[kTile];   // exp(-|x|)
  alignas(64) acc_t pw[kTile];
  alignas(64) acc_t tmp[kTile];
  alignas(64) int32_t valid[kTile];  // 1 where the element counts
};

// Loads elements [v0, v0 + n) of row (b, c). Returns the tile index of the first target outside
// [0, 1] (NaN included), or kNoBad; such targets then count nowhere.
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE int64_t load_tile(const SigmoidArgs& a, SigmoidTile<acc_t>& tl, int64_t b, int64_t c,
                                          int64_t v0, int64_t n) {
  load_logit_row(tl.x, at(a.x, b, c, v0), a.x.elem, a.x.sv, n);
  load_target_row(tl.t, at(a.t, b, c, v0), a.t.elem, a.t.sv, n);
#pragma omp simd
  for (int64_t i = 0; i < kTile; ++i) tl.valid[i] = i < n;
  if (a.mask.data != nullptr) {
    alignas(64) int32_t keep[kTile];
    mask_row(keep, at(a.mask, b, c, v0), a.mask.elem, a.mask.sv, n);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) tl.valid[i] &= keep[i];
  }
  int32_t any_bad = 0;
#pragma omp simd reduction(| : any_bad)
  for (int64_t i = 0; i < n; ++i) any_bad |= tl.valid[i] & !(tl.t[i] >= acc_t(0) && tl.t[i] <= acc_t(1));
  int64_t first = kNoBad;
  if (any_bad) {
    for (int64_t i = n - 1; i >= 0; --i) {
      if (tl.valid[i] && !(tl.t[i] >= acc_t(0) && tl.t[i] <= acc_t(1))) first = i, tl.valid[i] = 0;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < kTile; ++i) tl.t[i] = tl.valid[i] ? tl.t[i] : acc_t(0);
  return first;
}

}  // namespace

template <typename acc_t>
SEGLOSSES_CPU_CLONES void sigmoid_sums_chunk(const SigmoidArgs& a, int64_t b, int64_t c, int64_t v0, int64_t v1,
                                             acc_t* sums, int64_t& first_bad) {
  SigmoidTile<acc_t> tl;
  first_bad = kNoBad;
  acc_t sI = 0, sP = 0, sT = 0, sLpos = 0, sLneg = 0, sN = 0;
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    const int64_t n = std::min(kTile, v1 - vt);
    const int64_t bad = load_tile(a, tl, b, c, vt, n);
    if (bad != kNoBad && first_bad == kNoBad) first_bad = (b * a.C + c) * a.S + vt + bad;
    const acc_t* t = tl.t;
    const int32_t* valid = tl.valid;
#pragma omp simd reduction(+ : sI, sN)
    for (int64_t i = 0; i < kTile; ++i) {
      acc_t s0, s1;
      sigmoid_pair(tl.x[i], s0, s1, tl.e[i]);
      tl.s0[i] = s0;
      tl.s1[i] = valid[i] ? s1 : acc_t(0);
      sI += tl.s1[i] * t[i];
      sN += valid[i] ? acc_t(1) : acc_t(0);
    }
    const acc_t* sp = pow_row(tl.s1, a.p, tl.pw, tl.tmp);
#pragma omp simd reduction(+ : sP)
    for (int64_t i = 0; i < kTile; ++i) sP += sp[i];
    const acc_t* tp = pow_row(t, a.p, tl.pw, tl.tmp);
#pragma omp simd reduction(+ : sT)
    for (int64_t i = 0; i < kTile; ++i) sT += tp[i];
    if (a.with_ce) {
#pragma omp simd reduction(+ : sLpos, sLneg)
      for (int64_t i = 0; i < kTile; ++i) {
        const acc_t x = tl.x[i];
        sLpos += valid[i] ? t[i] * softplus_(-x, tl.e[i]) : acc_t(0);
        sLneg += valid[i] ? (acc_t(1) - t[i]) * softplus_(x, tl.e[i]) : acc_t(0);
      }
    }
  }
  sums[kRowI] += sI;
  sums[kRowP] += sP;
  sums[kRowT] += sT;
  sums[kRowLpos] += sLpos;
  sums[kRowLneg] += sLneg;
  sums[kRowN] += sN;
}

template <typename acc_t>
SEGLOSSES_CPU_CLONES void sigmoid_backward_chunk(const SigmoidArgs& a, int64_t b, int64_t c, int64_t v0, int64_t v1,
                                                 const acc_t* coef, const OutView& g) {
  SigmoidTile<acc_t> tl;
  const acc_t* cb = coef + b * kSigmoidRows * a.C + c;  // column c of sample b's [6, C] table
  const acc_t ca = cb[kRowI * a.C], cbp = cb[kRowP * a.C], clpos = cb[kRowLpos * a.C], clneg = cb[kRowLneg * a.C];
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    const int64_t n = std::min(kTile, v1 - vt);
    load_tile(a, tl, b, c, vt, n);
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) sigmoid_pair(tl.x[i], tl.s0[i], tl.s1[i]);
    const acc_t* spm1 = pow_row(tl.s1, a.p - 1, tl.pw, tl.tmp);
    acc_t* out = tl.x;
#pragma omp simd
    for (int64_t i = 0; i < kTile; ++i) {
      const acc_t gx = sigmoid_grad(tl.s0[i], tl.s1[i], tl.t[i], spm1[i], ca, cbp, clpos, clneg);
      out[i] = tl.valid[i] ? gx : acc_t(0);
    }
    store_row(at(g, b, c, vt), g.elem, g.sv, out, n);
  }
}

template void sigmoid_sums_chunk<float>(const SigmoidArgs&, int64_t, int64_t, int64_t, int64_t, float*, int64_t&);
template void sigmoid_sums_chunk<double>(const SigmoidArgs&, int64_t, int64_t, int64_t, int64_t, double*, int64_t&);
template void sigmoid_backward_chunk<float>(const SigmoidArgs&, int64_t, int64_t, int64_t, int64_t, const float*,
                                            const OutView&);
template void sigmoid_backward_chunk<double>(const SigmoidArgs&, int64_t, int64_t, int64_t, int64_t, const double*,
                                             const OutView&);

}  // namespace cpu
}  // namespace dice
}  // namespace seglosses
