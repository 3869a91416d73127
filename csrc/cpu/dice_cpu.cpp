// CPU kernels of the fused, one-hot-free Dice loss.
//
// dice_sums: one pass over logits and labels; per (sample, class) sums I, P, T. The voxels of a
// sample are cut into fixed chunks (independent of the thread count) that at::parallel_for
// distributes; each chunk accumulates its own partial sums and the partials are combined in
// chunk order, so the result is bitwise identical for any number of threads.
// dice_backward: one elementwise pass with the O(K) formula, from the [B, K] tables A and Bt.
//
// Inside a chunk, voxels are processed in tiles of kTile: the tile's logits are gathered into a
// [K, kTile] scratch block (any strides: contiguous, channels_last, a channel slice), then every
// step is a loop over the tile's voxels that calls the per-element functions of dice_math.h and
// that the compiler vectorises. No softmax or one-hot tensor is ever allocated.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu_clones.h"
#include "dice.h"
#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace {

// The tile loops are compiled for AVX-512, AVX2 and the x86-64 baseline (SEGLOSSES_CPU_CLONES).
// The AVX-512 clone may fuse multiply-adds, so the last bits can differ between CPUs with and
// without AVX-512; on one machine results stay deterministic and independent of the thread count.

constexpr int64_t kTile = 256;
constexpr int64_t kChunk = 8192;  // voxels per chunk; fixed so results do not depend on threads

// Scratch of one thread and the tile it holds.
template <typename acc_t>
struct Tile {
  explicit Tile(int64_t K) : x(K * kTile), g(K * kTile) {}
  std::vector<acc_t> x;  // logits, then exp(x - m), then s
  std::vector<acc_t> g;  // dLoss/ds (backward)
  acc_t m[kTile], inv_z[kTile], dot[kTile];
  int32_t cls[kTile];  // class index, or kIgnored (ignored, bad or padding)
  int64_t n = 0;       // voxels in this tile (the rest is padding)
};

// Gathers logits and labels of voxels [v0, v0 + n) of one sample; returns the first bad label
// seen (or records nothing). Padding voxels are marked ignored.
template <typename scalar_t, typename label_t, typename acc_t>
SEGLOSSES_ALWAYS_INLINE void load_tile(Tile<acc_t>& tl, const scalar_t* xb, const Layout& lx, const label_t* yb, const Layout& ly,
               int64_t v0, int64_t n, int64_t K, int64_t ignore_label, bool& has_bad, int64_t& bad) {
  tl.n = n;
  for (int64_t c = 0; c < lx.C; ++c) {
    const scalar_t* xc = xb + c * lx.sc + v0 * lx.sv;
    acc_t* dst = tl.x.data() + c * kTile;
    for (int64_t t = 0; t < n; ++t) dst[t] = static_cast<acc_t>(xc[t * lx.sv]);
    for (int64_t t = n; t < kTile; ++t) dst[t] = acc_t(0);
  }
  int32_t any_bad = 0;
#pragma omp simd reduction(| : any_bad)
  for (int64_t t = 0; t < n; ++t) {
    const int64_t cls = classify_label(static_cast<int64_t>(yb[(v0 + t) * ly.sv]), K, ignore_label);
    any_bad |= static_cast<int32_t>(cls == kBadLabel);
    tl.cls[t] = static_cast<int32_t>(cls < 0 ? kIgnored : cls);
  }
  for (int64_t t = n; t < kTile; ++t) tl.cls[t] = static_cast<int32_t>(kIgnored);
  if (any_bad && !has_bad) {  // rare: find the first bad label of the tile for the message
    for (int64_t t = 0; t < n; ++t) {
      const int64_t label = static_cast<int64_t>(yb[(v0 + t) * ly.sv]);
      if (classify_label(label, K, ignore_label) == kBadLabel) {
        has_bad = true, bad = label;
        break;
      }
    }
  }
}

// Softmax over the tile's C channels, up to the normalisation: afterwards x holds
// e_c = exp(x_c - m) and inv_z = 1 / sum_c e_c (0 for ignored voxels); the consumers form
// s_c = prob(e_c, inv_z, valid) as they go, which saves a pass over the tile.
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE void softmax_tile(Tile<acc_t>& tl, int64_t C) {
  acc_t* x = tl.x.data();
  acc_t* m = tl.m;
  acc_t* inv_z = tl.inv_z;
  for (int64_t t = 0; t < kTile; ++t) m[t] = x[t];
  for (int64_t c = 1; c < C; ++c) {
    const acc_t* xc = x + c * kTile;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) m[t] = max_(m[t], xc[t]);
  }
  for (int64_t t = 0; t < kTile; ++t) inv_z[t] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    acc_t* xc = x + c * kTile;
#pragma omp simd
    for (int64_t t = 0; t < kTile; ++t) {
      xc[t] = shifted_exp(xc[t], m[t]);
      inv_z[t] += xc[t];
    }
  }
#pragma omp simd
  for (int64_t t = 0; t < kTile; ++t) inv_z[t] = tl.cls[t] >= 0 ? acc_t(1) / inv_z[t] : acc_t(0);
}

// s_c of a voxel from softmax_tile's e_c and inv_z; exactly 0 for ignored voxels (even when their
// logits are not finite).
template <typename acc_t>
SEGLOSSES_ALWAYS_INLINE acc_t tile_prob(acc_t e, acc_t inv_z, int32_t cls) {
  const acc_t s = e * inv_z;
  return cls >= 0 ? s : acc_t(0);
}

inline int64_t num_chunks(int64_t S) { return (S + kChunk - 1) / kChunk; }

// Runs f(tile, task, b, v0, v1, has_bad, bad) for every fixed chunk [v0, v1) of every sample b, in
// parallel (one scratch tile per thread), then raises for the first bad label in task order.
template <typename acc_t, typename F>
void for_each_chunk(int64_t B, int64_t S, int64_t K, int64_t ignore_label, F&& f) {
  const int64_t nchunk = num_chunks(S), ntask = B * nchunk;
  std::vector<int64_t> bad(static_cast<size_t>(ntask), 0);
  std::vector<char> has_bad(static_cast<size_t>(ntask), 0);
  at::parallel_for(0, ntask, 1, [&](int64_t begin, int64_t end) {
    Tile<acc_t> tl(K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nchunk, v0 = (task % nchunk) * kChunk, v1 = std::min(S, v0 + kChunk);
      bool task_bad = false;
      f(tl, task, b, v0, v1, task_bad, bad[task]);
      has_bad[task] = task_bad;
    }
  });
  for (int64_t task = 0; task < ntask; ++task) {
    TORCH_CHECK_VALUE(!has_bad[task], bad_label_message("dice_loss", bad[task], K, ignore_label));
  }
}

// Sums I, P, T ([3, K] at I) of voxels [v0, v1) of one sample.
template <int PP, typename scalar_t, typename label_t, typename acc_t>
SEGLOSSES_CPU_CLONES void sums_chunk(Tile<acc_t>& tl, const scalar_t* xb, const Layout& lx, const label_t* yb,
                                     const Layout& ly, int64_t v0, int64_t v1, int64_t ignore_label, int p, acc_t* I,
                                     bool& has_bad, int64_t& bad) {
  const int64_t C = lx.C, K = num_classes_from_c(C);
  acc_t* P = I + K;
  acc_t* T = P + K;
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    load_tile(tl, xb, lx, yb, ly, vt, std::min(kTile, v1 - vt), K, ignore_label, has_bad, bad);
    const int32_t* cls = tl.cls;
    if (C == 1) {
      acc_t sP0 = 0, sP1 = 0, sI0 = 0, sI1 = 0, sT0 = 0, sT1 = 0;
      const acc_t* xt = tl.x.data();
#pragma omp simd reduction(+ : sP0, sP1, sI0, sI1, sT0, sT1)
      for (int64_t t = 0; t < kTile; ++t) {
        acc_t s0, s1;
        sigmoid_pair(xt[t], s0, s1);
        s0 = cls[t] >= 0 ? s0 : acc_t(0);
        s1 = cls[t] >= 0 ? s1 : acc_t(0);
        sP0 += ipow_n<PP>(s0, p);
        sP1 += ipow_n<PP>(s1, p);
        sI0 += cls[t] == 0 ? s0 : acc_t(0);
        sI1 += cls[t] == 1 ? s1 : acc_t(0);
        sT0 += cls[t] == 0 ? acc_t(1) : acc_t(0);
        sT1 += cls[t] == 1 ? acc_t(1) : acc_t(0);
      }
      P[0] += sP0, P[1] += sP1, I[0] += sI0, I[1] += sI1, T[0] += sT0, T[1] += sT1;
      continue;
    }
    softmax_tile(tl, C);
    const acc_t* inv_z = tl.inv_z;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* e = tl.x.data() + c * kTile;
      const int32_t ci = static_cast<int32_t>(c);
      acc_t sP = 0, sI = 0, sT = 0;
#pragma omp simd reduction(+ : sP, sI, sT)
      for (int64_t t = 0; t < kTile; ++t) {
        const acc_t st = tile_prob(e[t], inv_z[t], cls[t]);
        sP += ipow_n<PP>(st, p);
        sI += cls[t] == ci ? st : acc_t(0);
        sT += cls[t] == ci ? acc_t(1) : acc_t(0);
      }
      P[c] += sP, I[c] += sI, T[c] += sT;
    }
  }
}

// PP = p when it is 1 or 2 (compile-time, so the loops vectorise), else -1.
template <int PP, typename scalar_t, typename label_t>
void sums_kernel(const scalar_t* x, const Layout& lx, const label_t* y, const Layout& ly, int64_t ignore_label, int p,
                 double* out /* [B, 3, K] */) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = lx.B, S = lx.S, K = num_classes_from_c(lx.C), nchunk = num_chunks(S);
  std::vector<acc_t> partial(static_cast<size_t>(B * nchunk * 3 * K), acc_t(0));
  for_each_chunk<acc_t>(B, S, K, ignore_label,
                        [&](Tile<acc_t>& tl, int64_t task, int64_t b, int64_t v0, int64_t v1, bool& has_bad,
                            int64_t& bad) {
                          sums_chunk<PP>(tl, x + b * lx.sb, lx, y + b * ly.sb, ly, v0, v1, ignore_label, p,
                                         partial.data() + task * 3 * K, has_bad, bad);
                        });
  // Fixed-order combination of the chunk partials, in double.
  for (int64_t b = 0; b < B; ++b) {
    double* ob = out + b * 3 * K;
    for (int64_t j = 0; j < 3 * K; ++j) ob[j] = 0.0;
    for (int64_t k = 0; k < nchunk; ++k) {
      const acc_t* pt = partial.data() + (b * nchunk + k) * 3 * K;
      for (int64_t j = 0; j < 3 * K; ++j) ob[j] += static_cast<double>(pt[j]);
    }
  }
}

// Gradient of voxels [v0, v1) of one sample; a, bt: the sample's rows of A and Bt.
template <int PM1, typename scalar_t, typename label_t, typename acc_t>
SEGLOSSES_CPU_CLONES void backward_chunk(Tile<acc_t>& tl, const scalar_t* xb, const Layout& lx, const label_t* yb,
                                         const Layout& ly, const acc_t* a, const acc_t* bt, int64_t v0, int64_t v1,
                                         int64_t ignore_label, int p, scalar_t* gb, const Layout& lg, bool& has_bad,
                                         int64_t& bad) {
  const int64_t C = lx.C, K = num_classes_from_c(C);
  for (int64_t vt = v0; vt < v1; vt += kTile) {
    const int64_t n = std::min(kTile, v1 - vt);
    load_tile(tl, xb, lx, yb, ly, vt, n, K, ignore_label, has_bad, bad);
    const int32_t* cls = tl.cls;
    scalar_t* gt = gb + vt * lg.sv;
    if (C == 1) {
      acc_t* out = tl.g.data();
      const acc_t* xt = tl.x.data();
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) {
        acc_t s0, s1;
        sigmoid_pair(xt[t], s0, s1);
        const acc_t g0 = class_grad<PM1>(a[0], bt[0], s0, cls[t] == 0, p);
        const acc_t g1 = class_grad<PM1>(a[1], bt[1], s1, cls[t] == 1, p);
        out[t] = cls[t] >= 0 ? sigmoid_grad(s0, s1, g0, g1) : acc_t(0);
      }
      for (int64_t t = 0; t < n; ++t) gt[t * lg.sv] = static_cast<scalar_t>(out[t]);
      continue;
    }
    softmax_tile(tl, C);
    const acc_t* inv_z = tl.inv_z;
    acc_t* dot = tl.dot;
    for (int64_t t = 0; t < kTile; ++t) dot[t] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      acc_t* s = tl.x.data() + c * kTile;  // e_c in, s_c out
      acc_t* gc = tl.g.data() + c * kTile;
      const acc_t ac = a[c], bc = bt[c];
      const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) {
        const acc_t st = tile_prob(s[t], inv_z[t], cls[t]);
        s[t] = st;
        gc[t] = class_grad<PM1>(ac, bc, st, cls[t] == ci, p);
        dot[t] += gc[t] * st;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* s = tl.x.data() + c * kTile;
      const acc_t* gc = tl.g.data() + c * kTile;
#pragma omp simd
      for (int64_t t = 0; t < kTile; ++t) s[t] = softmax_grad(s[t], gc[t], dot[t]);
      scalar_t* gout = gt + c * lg.sc;
      for (int64_t t = 0; t < n; ++t) gout[t * lg.sv] = static_cast<scalar_t>(s[t]);
    }
  }
}

// PM1 = p - 1 when p is 1 or 2, else -1.
template <int PM1, typename scalar_t, typename label_t>
void backward_kernel(const scalar_t* x, const Layout& lx, const label_t* y, const Layout& ly,
                     const at::opmath_type<scalar_t>* coef_a, const at::opmath_type<scalar_t>* coef_b,
                     int64_t ignore_label, int p, scalar_t* g, const Layout& lg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = num_classes_from_c(lx.C);
  for_each_chunk<acc_t>(lx.B, lx.S, K, ignore_label,
                        [&](Tile<acc_t>& tl, int64_t, int64_t b, int64_t v0, int64_t v1, bool& has_bad,
                            int64_t& bad) {
                          backward_chunk<PM1>(tl, x + b * lx.sb, lx, y + b * ly.sb, ly, coef_a + b * K,
                                              coef_b + b * K, v0, v1, ignore_label, p, g + b * lg.sb, lg, has_bad,
                                              bad);
                        });
}

// Calls f with the compile-time specialisation of p (1, 2, or -1 = runtime), offset by delta.
template <int delta, typename F>
void dispatch_p(int64_t p, F&& f) {
  if (p == 1) {
    f(std::integral_constant<int, 1 + delta>());
  } else if (p == 2) {
    f(std::integral_constant<int, 2 + delta>());
  } else {
    f(std::integral_constant<int, -1>());
  }
}

at::Tensor dice_sums_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t ignore_label, int64_t p) {
  at::Tensor yv = check_inputs("dice_sums", x_in, y_in, p);
  at::Tensor x = x_in;
  const Layout lx = x_layout(x);
  const Layout ly = y_layout(yv);
  const int64_t K = num_classes(x);
  at::Tensor out64 = at::zeros({lx.B, 3, K}, x.options().dtype(at::kDouble));
  if (lx.B > 0 && lx.S > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dice_sums_cpu", [&] {
      using x_t = scalar_t;
      AT_DISPATCH_INTEGRAL_TYPES(yv.scalar_type(), "dice_sums_cpu_labels", [&] {
        using label_t = scalar_t;
        dispatch_p<0>(p, [&](auto pp) {
          sums_kernel<decltype(pp)::value, x_t, label_t>(x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<label_t>(),
                                                         ly, ignore_label, static_cast<int>(p),
                                                         out64.mutable_data_ptr<double>());
        });
      });
    });
  }
  return x.scalar_type() == at::kDouble ? out64 : out64.to(at::kFloat);
}

at::Tensor dice_backward_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& coef_a,
                             const at::Tensor& coef_b, int64_t ignore_label, int64_t p) {
  at::Tensor yv = check_inputs("dice_backward", x_in, y_in, p);
  at::Tensor x = x_in;
  const Layout lx = x_layout(x);
  const Layout ly = y_layout(yv);
  at::Tensor a = check_coef("dice_backward", "coef_a", coef_a, x);
  at::Tensor bt = check_coef("dice_backward", "coef_b", coef_b, x);
  at::Tensor g = empty_grad(x);
  const Layout lg = x_layout(g);
  if (lx.B == 0 || lx.S == 0) return g.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dice_backward_cpu", [&] {
    using x_t = scalar_t;
    using acc_t = at::opmath_type<x_t>;
    AT_DISPATCH_INTEGRAL_TYPES(yv.scalar_type(), "dice_backward_cpu_labels", [&] {
      using label_t = scalar_t;
      dispatch_p<-1>(p, [&](auto pm1) {
        backward_kernel<decltype(pm1)::value, x_t, label_t>(
            x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<label_t>(), ly, a.const_data_ptr<acc_t>(),
            bt.const_data_ptr<acc_t>(), ignore_label, static_cast<int>(p), g.mutable_data_ptr<x_t>(), lg);
      });
    });
  });
  return g;
}

}  // namespace
}  // namespace dice
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CPU, m) {
  m.impl("dice_sums", &seglosses::dice::dice_sums_cpu);
  m.impl("dice_backward", &seglosses::dice::dice_backward_cpu);
}
