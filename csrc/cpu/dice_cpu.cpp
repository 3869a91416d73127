// CPU kernels of the fused, one-hot-free Dice loss.
//
// dice_sums: one pass over logits and labels; softmax (or sigmoid) in registers / a K-sized
// scratch row; per (sample, class) sums I, P, T. The voxels of a sample are cut into fixed chunks
// (independent of the thread count); each chunk accumulates its own partial sums, and the
// partials are combined in chunk order, so the result is bitwise identical for any number of
// threads.
// dice_backward: one elementwise pass with the O(K) formula of csrc/dice_math.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dice.h"
#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace {

constexpr int64_t kChunk = 8192;  // voxels per chunk; fixed so results do not depend on threads

template <typename scalar_t, typename label_t>
void sums_kernel(const scalar_t* x, const Layout& lx, const label_t* y, const Layout& ly, int64_t ignore_label,
                 int p, double* out /* [B, 3, K] */) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = lx.B, C = lx.C, S = lx.S, K = num_classes_from_c(C);
  const int64_t nchunk = (S + kChunk - 1) / kChunk;
  const int64_t ntask = B * nchunk;
  std::vector<acc_t> partial(static_cast<size_t>(ntask * 3 * K), acc_t(0));
  std::vector<int64_t> bad(static_cast<size_t>(ntask), 0);
  std::vector<char> has_bad(static_cast<size_t>(ntask), 0);

  at::parallel_for(0, ntask, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> e(static_cast<size_t>(K));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, v0 = (t % nchunk) * kChunk, v1 = std::min(S, v0 + kChunk);
      acc_t* I = partial.data() + t * 3 * K;
      acc_t* P = I + K;
      acc_t* T = P + K;
      const scalar_t* xb = x + b * lx.sb;
      const label_t* yb = y + b * ly.sb;
      for (int64_t v = v0; v < v1; ++v) {
        const int64_t cls = classify_label(static_cast<int64_t>(yb[v * ly.sv]), K, ignore_label);
        if (cls == kIgnored) continue;
        if (cls == kBadLabel) {
          if (!has_bad[t]) has_bad[t] = 1, bad[t] = static_cast<int64_t>(yb[v * ly.sv]);
          continue;
        }
        const scalar_t* xv = xb + v * lx.sv;
        if (C == 1) {
          acc_t s0, s1;
          sigmoid_pair(static_cast<acc_t>(xv[0]), s0, s1);
          P[0] += ipow(s0, p);
          P[1] += ipow(s1, p);
          I[cls] += cls == 0 ? s0 : s1;
        } else {
          acc_t m, inv_z;
          softmax_stats(xv, lx.sc, C, m, inv_z, e.data());
          for (int64_t c = 0; c < C; ++c) P[c] += ipow(e[c] * inv_z, p);
          I[cls] += e[cls] * inv_z;
        }
        T[cls] += acc_t(1);
      }
    }
  });

  for (int64_t t = 0; t < ntask; ++t) {
    TORCH_CHECK_VALUE(!has_bad[t], bad_label_message("dice_loss", bad[t], K, ignore_label));
  }
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

template <typename scalar_t, typename label_t>
void backward_kernel(const scalar_t* x, const Layout& lx, const label_t* y, const Layout& ly,
                     const at::opmath_type<scalar_t>* coef_a, const at::opmath_type<scalar_t>* coef_b,
                     int64_t ignore_label, int p, scalar_t* g, const Layout& lg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = lx.B, C = lx.C, S = lx.S, K = num_classes_from_c(C);
  const int64_t nchunk = (S + kChunk - 1) / kChunk;
  const int64_t ntask = B * nchunk;
  std::vector<int64_t> bad(static_cast<size_t>(ntask), 0);
  std::vector<char> has_bad(static_cast<size_t>(ntask), 0);

  at::parallel_for(0, ntask, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> e(static_cast<size_t>(K)), gc(static_cast<size_t>(K));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, v0 = (t % nchunk) * kChunk, v1 = std::min(S, v0 + kChunk);
      const acc_t* a = coef_a + b * K;
      const acc_t* bt = coef_b + b * K;
      const scalar_t* xb = x + b * lx.sb;
      const label_t* yb = y + b * ly.sb;
      scalar_t* gb = g + b * lg.sb;
      for (int64_t v = v0; v < v1; ++v) {
        scalar_t* gv = gb + v * lg.sv;
        const int64_t cls = classify_label(static_cast<int64_t>(yb[v * ly.sv]), K, ignore_label);
        if (cls < 0) {
          if (cls == kBadLabel && !has_bad[t]) has_bad[t] = 1, bad[t] = static_cast<int64_t>(yb[v * ly.sv]);
          for (int64_t c = 0; c < C; ++c) gv[c * lg.sc] = scalar_t(0);
          continue;
        }
        const scalar_t* xv = xb + v * lx.sv;
        if (C == 1) {
          acc_t s0, s1;
          sigmoid_pair(static_cast<acc_t>(xv[0]), s0, s1);
          const acc_t g0 = class_grad(a[0], bt[0], s0, cls == 0, p);
          const acc_t g1 = class_grad(a[1], bt[1], s1, cls == 1, p);
          gv[0] = static_cast<scalar_t>(sigmoid_grad(s0, s1, g0, g1));
        } else {
          acc_t m, inv_z;
          softmax_stats(xv, lx.sc, C, m, inv_z, e.data());
          acc_t dot = acc_t(0);
          for (int64_t c = 0; c < C; ++c) {
            const acc_t s = e[c] * inv_z;
            e[c] = s;
            gc[c] = class_grad(a[c], bt[c], s, c == cls, p);
            dot += gc[c] * s;
          }
          for (int64_t c = 0; c < C; ++c) gv[c * lg.sc] = static_cast<scalar_t>(softmax_grad(e[c], gc[c], dot));
        }
      }
    }
  });
  for (int64_t t = 0; t < ntask; ++t) {
    TORCH_CHECK_VALUE(!has_bad[t], bad_label_message("dice_loss", bad[t], K, ignore_label));
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
        sums_kernel<x_t, scalar_t>(x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<scalar_t>(), ly, ignore_label,
                                   static_cast<int>(p), out64.mutable_data_ptr<double>());
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
  Layout lg = x_layout(g);
  if (lx.B == 0 || lx.S == 0) return g.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dice_backward_cpu", [&] {
    using x_t = scalar_t;
    using acc_t = at::opmath_type<x_t>;
    AT_DISPATCH_INTEGRAL_TYPES(yv.scalar_type(), "dice_backward_cpu_labels", [&] {
      backward_kernel<x_t, scalar_t>(x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<scalar_t>(), ly,
                                     a.const_data_ptr<acc_t>(), bt.const_data_ptr<acc_t>(), ignore_label,
                                     static_cast<int>(p), g.mutable_data_ptr<x_t>(), lg);
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
