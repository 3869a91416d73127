// CUDA kernels of the Dice family on label maps (softmax over C >= 2 channels; C == 1: the binary
// sigmoid, K = 2). The per-voxel arithmetic is the one of csrc/dice_math.h, shared with (and
// tested through) the CPU kernels.
//
// dice_sums, in up to three kernels:
//   stats (only when K > kClassTile): one thread per voxel computes the softmax statistics
//     (max logit m, inv_z = 1 / sum_c exp(x_c - m)) once and writes them to a [B * S] buffer
//     (2 / K of the logits, freed when the op returns);
//   partial: grid (sample x voxel-block pairs, class tiles of kClassTile); block k of a sample
//     handles voxel groups k, k + nblk, ... of kVoxelsPerBlock voxels, consecutive threads on
//     consecutive voxels (coalesced). Each thread reads its voxels' statistics (or computes them
//     when there is a single tile) and the logits of the tile's classes only, and accumulates
//     I, P, T, L of those classes in registers; a fixed-order block reduction writes one partial
//     per (sample, block, class);
//   final: one thread per (sample, row, class) adds the partials in block order, in double.
// dice_backward: one thread per voxel (grid-stride over B * S), the O(C) formula from the
// gradient table.
//
// No host synchronisation unless the caller asks for label validation: then the smallest flat
// index (b * S + v) of a bad label is kept with atomicMin and read once after the kernels, so
// the error names the same label as on the CPU. Without validation a bad label counts nowhere.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "dice_cuda.cuh"

namespace seglosses {
namespace dice {
namespace cuda {
namespace {

constexpr int kClassTile = 8;

template <typename acc_t>
struct alignas(2 * sizeof(acc_t)) SoftmaxStats {
  acc_t m, inv_z;
};

struct LabelKernelArgs {
  Layout lx;
  Input y, mask;  // mask.data == nullptr: no mask
  int64_t K = 0, ignore_label = -1;
  int p = 1;
  bool with_ce = false;
};

// Class of voxel v of sample b: kIgnored where it does not count (ignored, masked or bad; a bad
// label is reported when bad != nullptr).
__device__ __forceinline__ int32_t voxel_class(const LabelKernelArgs& a, int64_t b, int64_t v, long long* bad) {
  const int32_t cls = read_class(a.y.data, a.y.elem, b * a.y.l.sb + v * a.y.l.sv, a.K, a.ignore_label);
  if (a.mask.data != nullptr && !read_mask(a.mask.data, a.mask.elem, b * a.mask.l.sb + v * a.mask.l.sv)) {
    return kIgnored;
  }
  if (cls == kBadLabel) {
    record_bad(bad, b * a.lx.S + v);
    return kIgnored;
  }
  return cls;
}

// Softmax statistics of one voxel over its C channels (stride sc).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ SoftmaxStats<acc_t> softmax_stats(const scalar_t* xv, int64_t sc, int64_t C) {
  acc_t m = static_cast<acc_t>(xv[0]);
  for (int64_t c = 1; c < C; ++c) m = max_(m, static_cast<acc_t>(xv[c * sc]));
  acc_t z = acc_t(0);
  for (int64_t c = 0; c < C; ++c) z += shifted_exp(static_cast<acc_t>(xv[c * sc]), m);
  return {m, acc_t(1) / z};
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreads) softmax_stats_kernel(const scalar_t* __restrict__ x, LabelKernelArgs a,
                                                                 SoftmaxStats<acc_t>* __restrict__ stats,
                                                                 long long* bad) {
  const Layout& lx = a.lx;
  const int64_t n = lx.B * lx.S;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    const int64_t b = i / lx.S, v = i % lx.S;
    SoftmaxStats<acc_t> st{acc_t(0), acc_t(0)};  // inv_z == 0: the voxel does not count
    if (voxel_class(a, b, v, bad) >= 0) st = softmax_stats<acc_t>(x + b * lx.sb + v * lx.sv, lx.sc, lx.C);
    stats[i] = st;
  }
}

// Partial sums of one (sample, voxel-block) pair per block iteration; see the file comment.
// stats == nullptr: a single class tile, the statistics are computed here (and tile 0 reports
// bad labels).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreads) label_sums_partial_kernel(
    const scalar_t* __restrict__ x, LabelKernelArgs a, const SoftmaxStats<acc_t>* __restrict__ stats, int64_t nblk,
    acc_t* __restrict__ partial /* [B, nblk, 4, K] */, long long* bad) {
  __shared__ acc_t smem[kWarps];
  const Layout& lx = a.lx;
  const int64_t C = lx.C, K = a.K, S = lx.S;
  const int64_t c0 = int64_t(blockIdx.y) * kClassTile;
  long long* report = c0 == 0 ? bad : nullptr;
  const int64_t ngroup = ceil_div(S, kVoxelsPerBlock);
  for (int64_t w = blockIdx.x; w < lx.B * nblk; w += gridDim.x) {  // uniform across the block
    const int64_t b = w / nblk, blk = w % nblk;
    const scalar_t* xb = x + b * lx.sb;
    acc_t I[kClassTile], P[kClassTile], T[kClassTile], L[kClassTile];
#pragma unroll
    for (int j = 0; j < kClassTile; ++j) I[j] = P[j] = T[j] = L[j] = acc_t(0);
    for (int64_t group = blk; group < ngroup; group += nblk) {
      for (int i = 0; i < kVoxelsPerThread; ++i) {
        const int64_t v = (group * kVoxelsPerThread + i) * kThreads + threadIdx.x;
        if (v >= S) break;
        const int32_t cls = voxel_class(a, b, v, report);
        if (cls < 0) continue;
        const scalar_t* xv = xb + v * lx.sv;
        if (C == 1) {
          acc_t s[2], e;
          const acc_t xs = static_cast<acc_t>(xv[0]);
          sigmoid_pair(xs, s[0], s[1], e);
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            P[j] += ipow(s[j], a.p);
            I[j] += cls == j ? s[j] : acc_t(0);
            T[j] += cls == j ? acc_t(1) : acc_t(0);
            if (a.with_ce && cls == j) L[j] += j == 0 ? softplus_(xs, e) : softplus_(-xs, e);
          }
          continue;
        }
        const SoftmaxStats<acc_t> st = stats != nullptr ? stats[b * S + v] : softmax_stats<acc_t>(xv, lx.sc, C);
#pragma unroll
        for (int j = 0; j < kClassTile; ++j) {
          const int64_t c = c0 + j;
          if (c < C) {
            const acc_t xc = static_cast<acc_t>(xv[c * lx.sc]);
            const acc_t s = shifted_exp(xc, st.m) * st.inv_z;
            const bool is_c = cls == c;
            P[j] += ipow(s, a.p);
            I[j] += is_c ? s : acc_t(0);
            T[j] += is_c ? acc_t(1) : acc_t(0);
            if (a.with_ce && is_c) L[j] += softmax_nll(xc, st.m, st.inv_z);
          }
        }
      }
    }
    acc_t* out = partial + (b * nblk + blk) * kLabelRows * K;
#pragma unroll
    for (int j = 0; j < kClassTile; ++j) {
      const int64_t c = c0 + j;
      if (c >= K) break;  // uniform across the block
      const acc_t si = block_sum(I[j], smem);
      const acc_t sp = block_sum(P[j], smem);
      const acc_t st = block_sum(T[j], smem);
      const acc_t sl = a.with_ce ? block_sum(L[j], smem) : acc_t(0);
      if (threadIdx.x == 0) {
        out[0 * K + c] = si;
        out[1 * K + c] = sp;
        out[2 * K + c] = st;
        out[3 * K + c] = sl;
      }
    }
  }
}

// out[b, j] = sum over the nblk partials of row j of sample b, in block order, in double.
template <typename acc_t>
__global__ void sums_final_kernel(const acc_t* __restrict__ partial /* [B, nblk, W] */, int64_t B, int64_t nblk,
                                  int64_t W, double* __restrict__ out /* [B, W] */) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < B * W; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / W, j = i % W;
    double total = 0.0;
    for (int64_t k = 0; k < nblk; ++k) total += static_cast<double>(partial[(b * nblk + k) * W + j]);
    out[i] = total;
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreads) label_backward_kernel(const scalar_t* __restrict__ x, LabelKernelArgs a,
                                                                  const acc_t* __restrict__ coef /* [B, 4, K] */,
                                                                  scalar_t* __restrict__ g, Layout lg) {
  const Layout& lx = a.lx;
  const int64_t C = lx.C, K = a.K, n = lx.B * lx.S;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    const int64_t b = i / lx.S, v = i % lx.S;
    const scalar_t* xv = x + b * lx.sb + v * lx.sv;
    scalar_t* gv = g + b * lg.sb + v * lg.sv;
    const int32_t cls = voxel_class(a, b, v, nullptr);
    if (cls < 0) {
      for (int64_t c = 0; c < C; ++c) gv[c * lg.sc] = scalar_t(0);
      continue;
    }
    const acc_t* ca = coef + b * kLabelRows * K;  // dLoss/dI
    const acc_t* cbp = ca + K;                        // p dLoss/dP
    const acc_t ly = ca[3 * K + cls];                 // dLoss/dL of the voxel's class
    if (C == 1) {
      acc_t s0, s1;
      sigmoid_pair(static_cast<acc_t>(xv[0]), s0, s1);
      const acc_t g0 = class_grad(ca[0], cbp[0], ipow(s0, a.p - 1), cls == 0);
      const acc_t g1 = class_grad(ca[1], cbp[1], ipow(s1, a.p - 1), cls == 1);
      gv[0] = static_cast<scalar_t>(binary_grad(s0, s1, g0, g1, ly, cls));
      continue;
    }
    const SoftmaxStats<acc_t> st = softmax_stats<acc_t>(xv, lx.sc, C);
    acc_t dot = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t s = shifted_exp(static_cast<acc_t>(xv[c * lx.sc]), st.m) * st.inv_z;
      dot += class_grad(ca[c], cbp[c], ipow(s, a.p - 1), c == cls) * s;
    }
    for (int64_t c = 0; c < C; ++c) {
      const acc_t s = shifted_exp(static_cast<acc_t>(xv[c * lx.sc]), st.m) * st.inv_z;
      const acc_t gc = class_grad(ca[c], cbp[c], ipow(s, a.p - 1), c == cls);
      gv[c * lg.sc] = static_cast<scalar_t>(softmax_grad(s, gc, dot, ly, c == cls));
    }
  }
}

// The kernel arguments of a label-map op; `tensors` keeps the data alive.
struct LabelInputs {
  LabelTensors tensors;
  LabelKernelArgs args;
};

LabelInputs label_inputs(const char* op, const at::Tensor& x, const at::Tensor& y,
                         const c10::optional<at::Tensor>& mask, int64_t ignore_label, int64_t p) {
  LabelInputs in{label_tensors(op, x, y, mask, p), {}};
  const LabelTensors& t = in.tensors;
  LabelKernelArgs& a = in.args;
  a.lx = t.lx;
  a.y = input_of(t.y, t.ly);
  a.mask = input_of(t.mask, t.lm);
  a.K = num_classes_from_c(t.lx.C);
  a.ignore_label = ignore_label;
  a.p = static_cast<int>(p);
  return in;
}

at::Tensor dice_sums_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const c10::optional<at::Tensor>& mask,
                          int64_t ignore_label, int64_t p, bool with_ce, bool validate, c10::string_view api) {
  check_cuda("dice_sums", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  LabelInputs in = label_inputs("dice_sums", x_in, y_in, mask, ignore_label, p);
  LabelKernelArgs& a = in.args;
  a.with_ce = with_ce;
  const Layout& lx = a.lx;
  const int64_t K = a.K;
  at::Tensor out = at::zeros({lx.B, kLabelRows, K}, in.tensors.x.options().dtype(at::kDouble));
  if (lx.B == 0 || lx.S == 0) return out;
  const int64_t ntile = ceil_div(K, kClassTile);
  TORCH_CHECK_VALUE(ntile <= 65535, "dice_sums: at most ", 65535 * kClassTile, " classes on CUDA, got ", K);
  at::Tensor bad = validate ? new_bad_report(in.tensors.x) : at::Tensor();
  long long* bad_ptr = validate ? reinterpret_cast<long long*>(bad.mutable_data_ptr<int64_t>()) : nullptr;
  const auto acc_type = acc_dtype(in.tensors.x);
  const bool with_stats = lx.C > kClassTile;
  at::Tensor stats = with_stats ? at::empty({lx.B * lx.S, 2}, in.tensors.x.options().dtype(acc_type)) : at::Tensor();
  const int64_t nblk = blocks_per_row(lx.S, lx.B * ntile);
  at::Tensor partial = at::empty({lx.B, nblk, kLabelRows, K}, in.tensors.x.options().dtype(acc_type));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.tensors.x.scalar_type(), "dice_sums_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = in.tensors.x.const_data_ptr<scalar_t>();
    SoftmaxStats<acc_t>* st = nullptr;
    if (with_stats) {
      st = reinterpret_cast<SoftmaxStats<acc_t>*>(stats.mutable_data_ptr<acc_t>());
      softmax_stats_kernel<scalar_t><<<grid_for(lx.B * lx.S), kThreads, 0, stream>>>(xp, a, st, bad_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(lx.B * nblk, int64_t(1) << 30)),
                    static_cast<unsigned>(ntile));
    label_sums_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        xp, a, st, nblk, partial.mutable_data_ptr<acc_t>(), with_stats ? nullptr : bad_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t W = kLabelRows * K;
    sums_final_kernel<acc_t><<<grid_for(lx.B * W), kThreads, 0, stream>>>(partial.const_data_ptr<acc_t>(), lx.B,
                                                                           nblk, W, out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (validate) {
    const int64_t index = read_bad_report(bad);  // the one host sync, only with validation
    TORCH_CHECK_VALUE(index < 0, bad_label_message(std::string(api), in.tensors.y, index, K, ignore_label));
  }
  return out;
}

at::Tensor dice_backward_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const c10::optional<at::Tensor>& mask,
                              const at::Tensor& grad_sums, int64_t ignore_label, int64_t p) {
  check_cuda("dice_backward", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  LabelInputs in = label_inputs("dice_backward", x_in, y_in, mask, ignore_label, p);
  const LabelKernelArgs& a = in.args;
  const at::Tensor coef = check_grad_sums("dice_backward", grad_sums, in.tensors.x, kLabelRows, a.K, p);
  at::Tensor g = empty_grad(in.tensors.x);
  const Layout lg = strided_layout(g, true);
  if (a.lx.B == 0 || a.lx.S == 0) return g.zero_();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.tensors.x.scalar_type(), "dice_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    label_backward_kernel<scalar_t><<<grid_for(a.lx.B * a.lx.S), kThreads, 0, stream>>>(
        in.tensors.x.const_data_ptr<scalar_t>(), a, coef.const_data_ptr<acc_t>(), g.mutable_data_ptr<scalar_t>(), lg);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return g;
}

}  // namespace
}  // namespace cuda
}  // namespace dice
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) {
  m.impl("dice_sums", &seglosses::dice::cuda::dice_sums_cuda);
  m.impl("dice_backward", &seglosses::dice::cuda::dice_backward_cuda);
}
