// CPU kernels of the Dice family on label maps (softmax over C >= 2 channels; the binary sigmoid
// for C == 1, K = 2): per chunk of voxels, the sums I, P, T (and the cross-entropy L) of every
// class, and the elementwise backward pass. Called by csrc/cpu/dice_cpu.cpp.
//
// A chunk is processed in tiles of kTile voxels: the tile's logits are converted into a
// [C, kTile] block (any dtype and strides), the labels into class indices (masked, ignored and
// bad voxels become kIgnored), and then every step is a loop over the tile's voxels that calls
// the per-element functions of dice_math.h and that the compiler vectorises. No softmax or
// one-hot tensor is ever allocated.
//
// The chunk functions are compiled for AVX-512, AVX2 and the x86-64 baseline
// (SEGLOSSES_CPU_CLONES). The AVX-512 clone may fuse multiply-adds, so the last bits can differ
// between CPUs with and without AVX-512; on one machine results are deterministic and
// independent of the thread count.
#include <algorithm>

#include "dice_kernels.h"
#include "dice_rows.h"

namespace seglosses {
namespace dice {
namespace cpu {
namespace {

// Loads voxels [v0, v0 + n) of sample b: logits into tl.x, classes into tl.cls. Returns the
// tile index of the first bad label (or kNoBad); bad labels are then kIgnored.
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE int64_t load_tile(const LabelArgs& a, LabelTile<acc_t>& tl, int64_t b, int64_t v0,
                                          int64_t n) {
  for (int64_t c = 0; c < a.C; ++c) load_logit_row(tl.x.data() + c * kTile, at(a.x, b, c, v0), a.x.elem, a.x.sv, n);
  classify_row(tl.cls, at(a.y, b, 0, v0), a.y.elem, a.y.sv, n, a.K, a.ignore_label);
  if (a.mask.data != nullptr) {
    alignas(64) int32_t keep[kTile];
    mask_row(keep, at(a.mask, b, 0, v0), a.mask.elem, a.mask.sv, n);
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) tl.cls[t] = keep[t] ? tl.cls[t] : kIgnored;
  }
  return take_bad(tl.cls, n);
}

// Softmax statistics of the tile, up to the normalisation: afterwards tl.x holds e_c = exp(x_c - m)
// and tl.inv_z = 1 / sum_c e_c (0 where the voxel does not count); with_ce: tl.nll = -log s_y.
// The consumers form s_c = e_c inv_z as they go.
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE void softmax_tile(LabelTile<acc_t>& tl, int64_t C, bool with_ce) {
  acc_t* x = tl.x.data();
  acc_t* m = tl.m;
  acc_t* z = tl.inv_z;
  const int32_t* cls = tl.cls;
#pragma omp simd
  for (int64_t t = 0; t < kTile; ++t) m[t] = x[t];
  for (int64_t c = 1; c < C; ++c) {
    const acc_t* xc = x + c * kTile;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) m[t] = max_(m[t], xc[t]);
  }
  if (with_ce) {  // the label's logit, before the exps overwrite the logits
    acc_t* xy = tl.aux;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) xy[t] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* xc = x + c * kTile;
      const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) xy[t] = cls[t] == ci ? xc[t] : xy[t];
    }
  }
#pragma omp simd
  for (int64_t t = 0; t < kTile; ++t) z[t] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    acc_t* xc = x + c * kTile;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) {
      xc[t] = shifted_exp(xc[t], m[t]);
      z[t] += xc[t];
    }
  }
  if (with_ce) {
    const acc_t* xy = tl.aux;
    acc_t* nll = tl.nll;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) nll[t] = cls[t] >= 0 ? log_(z[t]) - (xy[t] - m[t]) : acc_t(0);
  }
#pragma omp simd
  for (int64_t t = 0; t < kTile; ++t) z[t] = cls[t] >= 0 ? acc_t(1) / z[t] : acc_t(0);  // now inv_z
}

// s_c of a voxel from e_c and inv_z; exactly 0 where the voxel does not count (even when its
// logits are not finite).
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE acc_t tile_prob(acc_t e, acc_t inv_z, int32_t cls) {
  const acc_t s = e * inv_z;
  return cls >= 0 ? s : acc_t(0);
}

// Adds the tile's I, P, T (and L) of class c. PK: p when it is 1 or 2 (the powers fused into the
// loop), else 0: s is stored and its power computed by pow_row.
template <int PK, bool CE, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void accumulate_class(LabelTile<acc_t>& tl, int64_t c, int p, acc_t* sums, int64_t K) {
  acc_t* e = tl.x.data() + c * kTile;
  const acc_t* inv_z = tl.inv_z;
  const acc_t* nll = tl.nll;
  const int32_t* cls = tl.cls;
  const int32_t ci = static_cast<int32_t>(c);
  acc_t sP = 0, sI = 0, sT = 0, sL = 0;
  const acc_t* sp = nullptr;
  if constexpr (PK == 0) {
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) e[t] = tile_prob(e[t], inv_z[t], cls[t]);  // e -> s
    sp = pow_row(e, p, tl.pw, tl.tmp);
  }
#pragma omp simd reduction(+ : sP, sI, sT, sL)
  for (int64_t t = 0; t < kTile; ++t) {
    const acc_t s = PK == 0 ? e[t] : tile_prob(e[t], inv_z[t], cls[t]);
    const bool is_c = cls[t] == ci;
    if constexpr (PK == 1) {
      sP += s;
    } else if constexpr (PK == 2) {
      sP += s * s;
    } else {
      sP += sp[t];
    }
    sI += is_c ? s : acc_t(0);
    sT += is_c ? acc_t(1) : acc_t(0);
    if constexpr (CE) sL += is_c ? nll[t] : acc_t(0);
  }
  sums[kRowI * K + c] += sI;
  sums[kRowP * K + c] += sP;
  sums[kRowT * K + c] += sT;
  if constexpr (CE) sums[kRowL * K + c] += sL;
}

template <int PK, bool CE, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void accumulate_classes(LabelTile<acc_t>& tl, int64_t C, int p, acc_t* sums) {
  for (int64_t c = 0; c < C; ++c) accumulate_class<PK, CE>(tl, c, p, sums, C);
}

// Binary case (C == 1, K = 2): s1 = sigmoid(x), s0 = 1 - s1 for the labels 1 and 0;
// -log s1 = softplus(-x), -log s0 = softplus(x).
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE void binary_sums_tile(LabelTile<acc_t>& tl, int p, bool with_ce, acc_t* sums) {
  const acc_t* x = tl.x.data();
  const int32_t* cls = tl.cls;
  acc_t* s0 = tl.m;  // the rows are free in the binary case
  acc_t* s1 = tl.inv_z;
  acc_t* e = tl.nll;  // exp(-|x|)
  acc_t sI0 = 0, sI1 = 0, sT0 = 0, sT1 = 0, sL0 = 0, sL1 = 0;
#pragma omp simd reduction(+ : sI0, sI1, sT0, sT1)
  for (int64_t t = 0; t < kTile; ++t) {
    acc_t a, b;
    sigmoid_pair(x[t], a, b, e[t]);
    const bool valid = cls[t] >= 0;
    s0[t] = valid ? a : acc_t(0);
    s1[t] = valid ? b : acc_t(0);
    sI0 += cls[t] == 0 ? a : acc_t(0);
    sI1 += cls[t] == 1 ? b : acc_t(0);
    sT0 += cls[t] == 0 ? acc_t(1) : acc_t(0);
    sT1 += cls[t] == 1 ? acc_t(1) : acc_t(0);
  }
  if (with_ce) {
#pragma omp simd reduction(+ : sL0, sL1)
    for (int64_t t = 0; t < kTile; ++t) {
      sL0 += cls[t] == 0 ? softplus_(x[t], e[t]) : acc_t(0);
      sL1 += cls[t] == 1 ? softplus_(-x[t], e[t]) : acc_t(0);
    }
  }
  const acc_t* rows[2] = {s0, s1};
  acc_t sP[2];
  for (int j = 0; j < 2; ++j) {
    const acc_t* sp = pow_row(rows[j], p, tl.pw, tl.tmp);
    acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t t = 0; t < kTile; ++t) acc += sp[t];
    sP[j] = acc;
  }
  sums[kRowI * 2 + 0] += sI0, sums[kRowI * 2 + 1] += sI1;
  sums[kRowP * 2 + 0] += sP[0], sums[kRowP * 2 + 1] += sP[1];
  sums[kRowT * 2 + 0] += sT0, sums[kRowT * 2 + 1] += sT1;
  sums[kRowL * 2 + 0] += sL0, sums[kRowL * 2 + 1] += sL1;
}

// dLoss/ds_c of class c into tl.g and its dot product with s into tl.dot; tl.x: e_c -> s_c.
// PK as in accumulate_class.
template <int PK, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void class_grad_row(LabelTile<acc_t>& tl, int64_t c, int p, acc_t a_c, acc_t bp_c) {
  acc_t* s = tl.x.data() + c * kTile;
  acc_t* g = tl.g.data() + c * kTile;
  const acc_t* inv_z = tl.inv_z;
  const int32_t* cls = tl.cls;
  acc_t* dot = tl.dot;
  const int32_t ci = static_cast<int32_t>(c);
  const acc_t* spm1 = nullptr;
  if constexpr (PK == 0) {
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) s[t] = tile_prob(s[t], inv_z[t], cls[t]);
    spm1 = pow_row(s, p - 1, tl.pw, tl.tmp);
  }
#pragma omp simd
  for (int64_t t = 0; t < kTile; ++t) {
    const acc_t st = PK == 0 ? s[t] : tile_prob(s[t], inv_z[t], cls[t]);
    acc_t pm1;
    if constexpr (PK == 1) {
      pm1 = acc_t(1);
    } else if constexpr (PK == 2) {
      pm1 = st;
    } else {
      pm1 = spm1[t];
    }
    s[t] = st;
    g[t] = class_grad(a_c, bp_c, pm1, cls[t] == ci);
    dot[t] += g[t] * st;
  }
}

template <int PK, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void class_grad_rows(LabelTile<acc_t>& tl, int64_t C, int p, const acc_t* a, const acc_t* bp) {
  for (int64_t c = 0; c < C; ++c) class_grad_row<PK>(tl, c, p, a[c], bp[c]);
}

// dLoss/dx of every class from tl.x (s_c), tl.g (dLoss/ds_c), tl.dot and, with CE, tl.aux (the
// cross-entropy coefficient of the voxel's class); written to the gradient rows of tile vt.
template <bool CE, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void softmax_grad_rows(LabelTile<acc_t>& tl, int64_t C, const OutView& g, int64_t b,
                                               int64_t vt, int64_t n) {
  const int32_t* cls = tl.cls;
  const acc_t* dot = tl.dot;
  const acc_t* ly = tl.aux;
  for (int64_t c = 0; c < C; ++c) {
    acc_t* s = tl.x.data() + c * kTile;  // s_c in, dLoss/dx_c out
    const acc_t* gc = tl.g.data() + c * kTile;
    const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) {
      const acc_t l_y = CE ? ly[t] : acc_t(0);
      s[t] = cls[t] >= 0 ? softmax_grad(s[t], gc[t], dot[t], l_y, cls[t] == ci) : acc_t(0);
    }
    store_row(at(g, b, c, vt), g.elem, g.sv, s, n);
  }
}

}  // namespace

template <typename acc_t>
SEGLOSSES_CPU_CLONES void label_sums_chunk(const LabelArgs& a, LabelTile<acc_t>& tl, int64_t b, int64_t v0, int64_t v1,
                                           acc_t* sums, int64_t& first_bad) {
  const int64_t C = a.C;
  first_bad = kNoBad;
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    const int64_t n = std::min(kTile, v1 - vt);
    const int64_t bad = load_tile(a, tl, b, vt, n);
    if (bad != kNoBad && first_bad == kNoBad) first_bad = b * a.S + vt + bad;
    if (C == 1) {
      binary_sums_tile(tl, a.p, a.with_ce, sums);
      continue;
    }
    softmax_tile(tl, C, a.with_ce);
    const int pk = a.p <= 2 ? a.p : 0;
    if (a.with_ce) {
      if (pk == 1) accumulate_classes<1, true>(tl, C, a.p, sums);
      else if (pk == 2) accumulate_classes<2, true>(tl, C, a.p, sums);
      else accumulate_classes<0, true>(tl, C, a.p, sums);
    } else {
      if (pk == 1) accumulate_classes<1, false>(tl, C, a.p, sums);
      else if (pk == 2) accumulate_classes<2, false>(tl, C, a.p, sums);
      else accumulate_classes<0, false>(tl, C, a.p, sums);
    }
  }
}

template <typename acc_t>
SEGLOSSES_CPU_CLONES void label_backward_chunk(const LabelArgs& a, LabelTile<acc_t>& tl, int64_t b, int64_t v0,
                                               int64_t v1, const acc_t* coef, const OutView& g) {
  const int64_t C = a.C, K = a.K;
  const acc_t* ca = coef + (b * kLabelRows + kRowI) * K;
  const acc_t* cbp = coef + (b * kLabelRows + kRowP) * K;
  const acc_t* cl = coef + (b * kLabelRows + kRowL) * K;
  bool with_ce = false;
  for (int64_t c = 0; c < K; ++c) with_ce |= cl[c] != acc_t(0);
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    const int64_t n = std::min(kTile, v1 - vt);
    load_tile(a, tl, b, vt, n);
    const int32_t* cls = tl.cls;
    acc_t* ly = tl.aux;  // the cross-entropy coefficient of the voxel's class
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) ly[t] = acc_t(0);
    if (with_ce) {
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) {
        const int32_t k = cls[t] >= 0 ? cls[t] : 0;  // never an out-of-range read, even speculatively
        ly[t] = cls[t] >= 0 ? cl[k] : acc_t(0);
      }
    }
    if (C == 1) {
      const acc_t* x = tl.x.data();
      acc_t* out = tl.g.data();
      acc_t* s0 = tl.m;
      acc_t* s1 = tl.inv_z;
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) sigmoid_pair(x[t], s0[t], s1[t]);
      const acc_t* p0 = pow_row(s0, a.p - 1, tl.pw, tl.tmp);
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) tl.dot[t] = class_grad(ca[0], cbp[0], p0[t], cls[t] == 0);  // g0
      const acc_t* p1 = pow_row(s1, a.p - 1, tl.pw, tl.tmp);
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) {
        const acc_t g1 = class_grad(ca[1], cbp[1], p1[t], cls[t] == 1);
        out[t] = cls[t] >= 0 ? binary_grad(s0[t], s1[t], tl.dot[t], g1, ly[t], cls[t]) : acc_t(0);
      }
      store_row(at(g, b, 0, vt), g.elem, g.sv, out, n);
      continue;
    }
    softmax_tile(tl, C, false);
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) tl.dot[t] = acc_t(0);
    if (a.p == 1) class_grad_rows<1>(tl, C, a.p, ca, cbp);
    else if (a.p == 2) class_grad_rows<2>(tl, C, a.p, ca, cbp);
    else class_grad_rows<0>(tl, C, a.p, ca, cbp);
    if (with_ce) {
      softmax_grad_rows<true>(tl, C, g, b, vt, n);
    } else {
      softmax_grad_rows<false>(tl, C, g, b, vt, n);
    }
  }
}

template void label_sums_chunk<float>(const LabelArgs&, LabelTile<float>&, int64_t, int64_t, int64_t, float*,
                                      int64_t&);
template void label_sums_chunk<double>(const LabelArgs&, LabelTile<double>&, int64_t, int64_t, int64_t, double*,
                                       int64_t&);
template void label_backward_chunk<float>(const LabelArgs&, LabelTile<float>&, int64_t, int64_t, int64_t,
                                          const float*, const OutView&);
template void label_backward_chunk<double>(const LabelArgs&, LabelTile<double>&, int64_t, int64_t, int64_t,
                                           const double*, const OutView&);

}  // namespace cpu
}  // namespace dice
}  // namespace seglosses
