// CUDA kernels of the multi-label sigmoid Dice family: each channel c is its own binary problem,
// s = sigmoid(x_c) against a target t of x's shape (bool, integer or float in [0, 1], read in
// place). Per-element arithmetic from csrc/dice_math.h, shared with the CPU kernels.
//
// dice_sigmoid_sums: partial kernel over (row = (sample, channel)) x voxel-block pairs, the six
// sums of a row accumulated per thread and reduced per block in a fixed order; final kernel adds
// the partials in block order, in double. dice_sigmoid_backward: one thread per element.
// No host synchronisation unless validation is asked for (see dice_cuda.cu).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "dice_cuda.cuh"

namespace seglosses {
namespace dice {
namespace cuda {
namespace {

struct SigmoidKernelArgs {
  Layout lx;
  Input t, mask;
  int p = 1;
  bool with_ce = false;
};

// Target of element (b, c, v), and whether the element counts (not masked, target in [0, 1];
// a target outside [0, 1] is reported when bad != nullptr).
template <typename acc_t>
__device__ __forceinline__ bool element_target(const SigmoidKernelArgs& a, int64_t b, int64_t c, int64_t v,
                                               long long* bad, acc_t& t) {
  if (a.mask.data != nullptr &&
      !read_mask(a.mask.data, a.mask.elem, b * a.mask.l.sb + c * a.mask.l.sc + v * a.mask.l.sv)) {
    return false;
  }
  t = read_target<acc_t>(a.t.data, a.t.elem, b * a.t.l.sb + c * a.t.l.sc + v * a.t.l.sv);
  if (!(t >= acc_t(0) && t <= acc_t(1))) {
    record_bad(bad, (b * a.lx.C + c) * a.lx.S + v);
    return false;
  }
  return true;
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreads) sigmoid_sums_partial_kernel(
    const scalar_t* __restrict__ x, SigmoidKernelArgs a, int64_t nblk, acc_t* __restrict__ partial /* [B*C, nblk, 6] */,
    long long* bad) {
  __shared__ acc_t smem[kWarps];
  const Layout& lx = a.lx;
  const int64_t S = lx.S, nrow = lx.B * lx.C;
  const int64_t ngroup = ceil_div(S, kVoxelsPerBlock);
  for (int64_t w = blockIdx.x; w < nrow * nblk; w += gridDim.x) {  // uniform across the block
    const int64_t row = w / nblk, blk = w % nblk;
    const int64_t b = row / lx.C, c = row % lx.C;
    const scalar_t* xr = x + b * lx.sb + c * lx.sc;
    acc_t sums[kSigmoidRows];
#pragma unroll
    for (int r = 0; r < kSigmoidRows; ++r) sums[r] = acc_t(0);
    for (int64_t group = blk; group < ngroup; group += nblk) {
      for (int i = 0; i < kVoxelsPerThread; ++i) {
        const int64_t v = (group * kVoxelsPerThread + i) * kThreads + threadIdx.x;
        if (v >= S) break;
        acc_t t;
        if (!element_target(a, b, c, v, bad, t)) continue;
        const acc_t xs = static_cast<acc_t>(xr[v * lx.sv]);
        acc_t s0, s1, e;
        sigmoid_pair(xs, s0, s1, e);
        sums[kRowI] += s1 * t;
        sums[kRowP] += ipow(s1, a.p);
        sums[kRowT] += ipow(t, a.p);
        sums[kRowN] += acc_t(1);
        if (a.with_ce) {
          sums[kRowLpos] += t * softplus_(-xs, e);
          sums[kRowLneg] += (acc_t(1) - t) * softplus_(xs, e);
        }
      }
    }
    acc_t* out = partial + (row * nblk + blk) * kSigmoidRows;
#pragma unroll
    for (int r = 0; r < kSigmoidRows; ++r) {
      const acc_t total = block_sum(sums[r], smem);
      if (threadIdx.x == 0) out[r] = total;
    }
  }
}

// out[b, r, c] = sum over the nblk partials of row (b, c), sum r, in block order, in double.
template <typename acc_t>
__global__ void sigmoid_sums_final_kernel(const acc_t* __restrict__ partial, int64_t B, int64_t C, int64_t nblk,
                                          double* __restrict__ out /* [B, 6, C] */) {
  const int64_t n = B * kSigmoidRows * C;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / (kSigmoidRows * C), r = (i / C) % kSigmoidRows, c = i % C;
    const acc_t* p = partial + (b * C + c) * nblk * kSigmoidRows + r;
    double total = 0.0;
    for (int64_t k = 0; k < nblk; ++k) total += static_cast<double>(p[k * kSigmoidRows]);
    out[i] = total;
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreads) sigmoid_backward_kernel(const scalar_t* __restrict__ x, SigmoidKernelArgs a,
                                                                    const acc_t* __restrict__ coef /* [B, 6, C] */,
                                                                    scalar_t* __restrict__ g, Layout lg) {
  const Layout& lx = a.lx;
  const int64_t C = lx.C, S = lx.S, n = lx.B * C * S;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    const int64_t row = i / S, v = i % S, b = row / C, c = row % C;
    scalar_t* gv = g + b * lg.sb + c * lg.sc + v * lg.sv;
    acc_t t;
    if (!element_target(a, b, c, v, static_cast<long long*>(nullptr), t)) {
      *gv = scalar_t(0);
      continue;
    }
    const acc_t* cb = coef + b * kSigmoidRows * C + c;
    acc_t s0, s1;
    sigmoid_pair(static_cast<acc_t>(x[b * lx.sb + c * lx.sc + v * lx.sv]), s0, s1);
    *gv = static_cast<scalar_t>(sigmoid_grad(s0, s1, t, ipow(s1, a.p - 1), cb[kRowI * C], cb[kRowP * C],
                                             cb[kRowLpos * C], cb[kRowLneg * C]));
  }
}

// The kernel arguments of a multi-label op; `tensors` keeps the data alive.
struct SigmoidInputs {
  SigmoidTensors tensors;
  SigmoidKernelArgs args;
};

SigmoidInputs sigmoid_inputs(const char* op, const at::Tensor& x, const at::Tensor& t_in,
                             const c10::optional<at::Tensor>& mask, int64_t p) {
  SigmoidInputs in{sigmoid_tensors(op, x, t_in, mask, p), {}};
  const SigmoidTensors& t = in.tensors;
  SigmoidKernelArgs& a = in.args;
  a.lx = t.lx;
  a.t = input_of(t.t, t.lt);
  a.mask = input_of(t.mask, t.lm);
  a.p = static_cast<int>(p);
  return in;
}

at::Tensor dice_sigmoid_sums_cuda(const at::Tensor& x_in, const at::Tensor& t_in, const c10::optional<at::Tensor>& mask,
                                  int64_t p, bool with_ce, bool validate, c10::string_view api) {
  check_cuda("dice_sigmoid_sums", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  SigmoidInputs in = sigmoid_inputs("dice_sigmoid_sums", x_in, t_in, mask, p);
  SigmoidKernelArgs& a = in.args;
  a.with_ce = with_ce;
  const Layout& lx = a.lx;
  at::Tensor out = at::zeros({lx.B, kSigmoidRows, lx.C}, in.tensors.x.options().dtype(at::kDouble));
  if (lx.B == 0 || lx.C == 0 || lx.S == 0) return out;
  at::Tensor bad = validate ? new_bad_report(in.tensors.x) : at::Tensor();
  long long* bad_ptr = validate ? reinterpret_cast<long long*>(bad.mutable_data_ptr<int64_t>()) : nullptr;
  const int64_t nrow = lx.B * lx.C;
  const int64_t nblk = blocks_per_row(lx.S, nrow);
  at::Tensor partial = at::empty({nrow, nblk, kSigmoidRows}, in.tensors.x.options().dtype(acc_dtype(in.tensors.x)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.tensors.x.scalar_type(), "dice_sigmoid_sums_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(nrow * nblk, int64_t(1) << 30));
    sigmoid_sums_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        in.tensors.x.const_data_ptr<scalar_t>(), a, nblk, partial.mutable_data_ptr<acc_t>(), bad_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sigmoid_sums_final_kernel<acc_t><<<grid_for(lx.B * kSigmoidRows * lx.C), kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), lx.B, lx.C, nblk, out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (validate) {
    const int64_t index = read_bad_report(bad);  // the one host sync, only with validation
    TORCH_CHECK_VALUE(index < 0, bad_target_message(std::string(api), in.tensors.t, index));
  }
  return out;
}

at::Tensor dice_sigmoid_backward_cuda(const at::Tensor& x_in, const at::Tensor& t_in,
                                      const c10::optional<at::Tensor>& mask, const at::Tensor& grad_sums, int64_t p) {
  check_cuda("dice_sigmoid_backward", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  SigmoidInputs in = sigmoid_inputs("dice_sigmoid_backward", x_in, t_in, mask, p);
  const SigmoidKernelArgs& a = in.args;
  const at::Tensor coef = check_grad_sums("dice_sigmoid_backward", grad_sums, in.tensors.x, kSigmoidRows, a.lx.C, p);
  at::Tensor g = empty_grad(in.tensors.x);
  const Layout lg = strided_layout(g, true);
  const int64_t n = a.lx.B * a.lx.C * a.lx.S;
  if (n == 0) return g.zero_();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.tensors.x.scalar_type(), "dice_sigmoid_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sigmoid_backward_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
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
  m.impl("dice_sigmoid_sums", &seglosses::dice::cuda::dice_sigmoid_sums_cuda);
  m.impl("dice_sigmoid_backward", &seglosses::dice::cuda::dice_sigmoid_backward_cuda);
}
