// CUDA kernels of the fused, one-hot-free Dice loss. The per-voxel arithmetic is the one of
// csrc/dice_math.h, shared with (and tested through) the CPU kernels.
//
// dice_sums, stage 1: grid (class tiles of kClassTile, voxel blocks, B), the tile fastest so the
// tiles of one voxel range run together and re-read x from L2. At most kMaxBlocks blocks per
// (tile, sample); block k handles voxel groups k, k + nblk, ... of kVoxelsPerBlock voxels, in
// which consecutive threads read consecutive voxels (coalesced). Each thread computes the softmax
// statistics of its voxels over all C channels and accumulates I, P, T of the tile's classes in
// registers; a block reduction in a fixed order writes one partial per (sample, block, class).
// Any number of classes works (more classes = more tiles; no shared memory per class).
// dice_sums, stage 2: one thread per (b, row, class) adds the <= kMaxBlocks partials in block
// order, in double. No atomics on the data path, so the result is deterministic.
// dice_backward: one thread per voxel, the O(K) formula from the [B, K] tables A and Bt.
// A label outside [0, K) that is not ignore_label: the smallest flat index (b * S + v) of such a
// voxel is kept with atomicMin; the host reads that voxel's label and raises, so the error names
// the same label as on the CPU and no garbage is returned.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "dice.h"
#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kClassTile = 8;
constexpr int kVoxelsPerThread = 4;
constexpr int64_t kVoxelsPerBlock = int64_t(kThreads) * kVoxelsPerThread;
constexpr int64_t kMaxBlocks = 1024;
constexpr long long kNoBadVoxel = std::numeric_limits<long long>::max();

// Keeps the smallest flat index of a voxel with a bad label.
__device__ __forceinline__ void record_bad_voxel(long long* bad, long long index) {
  if (index < *reinterpret_cast<volatile long long*>(bad)) atomicMin(bad, index);
}

// Softmax statistics of one voxel over its C channels (stride sc): the max logit m and
// inv_z = 1 / sum_c exp(x_c - m), from the shared per-element functions.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void softmax_stats(const scalar_t* xv, int64_t sc, int64_t C, acc_t& m, acc_t& inv_z) {
  m = static_cast<acc_t>(xv[0]);
  for (int64_t c = 1; c < C; ++c) m = max_(m, static_cast<acc_t>(xv[c * sc]));
  acc_t z = acc_t(0);
  for (int64_t c = 0; c < C; ++c) z += shifted_exp(static_cast<acc_t>(xv[c * sc]), m);
  inv_z = acc_t(1) / z;
}

// Sum of v over the block, in a fixed order; the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // smem may still be read by the previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += smem[w];
  }
  return total;
}

template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads) dice_sums_partial_kernel(
    const scalar_t* __restrict__ x, Layout lx, const label_t* __restrict__ y, Layout ly, int64_t ignore_label, int p,
    at::opmath_type<scalar_t>* __restrict__ partial /* [B, nblk, 3, K] */, long long* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kWarps];
  const int64_t C = lx.C, K = num_classes_from_c(C), S = lx.S;
  const int64_t b = blockIdx.z, blk = blockIdx.y, nblk = gridDim.y;
  const int64_t c0 = int64_t(blockIdx.x) * kClassTile;
  const scalar_t* xb = x + b * lx.sb;
  const label_t* yb = y + b * ly.sb;

  acc_t I[kClassTile], P[kClassTile], T[kClassTile];
#pragma unroll
  for (int j = 0; j < kClassTile; ++j) I[j] = P[j] = T[j] = acc_t(0);

  const int64_t ngroup = (S + kVoxelsPerBlock - 1) / kVoxelsPerBlock;
  for (int64_t group = blk; group < ngroup; group += nblk) {
    for (int i = 0; i < kVoxelsPerThread; ++i) {
      const int64_t v = (group * kVoxelsPerThread + i) * kThreads + threadIdx.x;
      if (v >= S) break;
      const int64_t label = static_cast<int64_t>(yb[v * ly.sv]);
      const int64_t cls = classify_label(label, K, ignore_label);
      if (cls == kBadLabel && c0 == 0) record_bad_voxel(bad, b * S + v);
      if (cls < 0) continue;
      const scalar_t* xv = xb + v * lx.sv;
      if (C == 1) {
        acc_t s[2];
        sigmoid_pair(static_cast<acc_t>(xv[0]), s[0], s[1]);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          P[j] += ipow(s[j], p);
          I[j] += cls == j ? s[j] : acc_t(0);
          T[j] += cls == j ? acc_t(1) : acc_t(0);
        }
        continue;
      }
      acc_t m, inv_z;
      softmax_stats(xv, lx.sc, C, m, inv_z);
#pragma unroll
      for (int j = 0; j < kClassTile; ++j) {
        const int64_t c = c0 + j;
        if (c < C) {
          const acc_t s = shifted_exp(static_cast<acc_t>(xv[c * lx.sc]), m) * inv_z;
          P[j] += ipow(s, p);
          I[j] += cls == c ? s : acc_t(0);
          T[j] += cls == c ? acc_t(1) : acc_t(0);
        }
      }
    }
  }

  acc_t* out = partial + (b * nblk + blk) * 3 * K;
#pragma unroll
  for (int j = 0; j < kClassTile; ++j) {
    const int64_t c = c0 + j;
    if (c >= K) break;  // uniform across the block
    const acc_t si = block_sum(I[j], smem);
    const acc_t sp = block_sum(P[j], smem);
    const acc_t st = block_sum(T[j], smem);
    if (threadIdx.x == 0) {
      out[c] = si;
      out[K + c] = sp;
      out[2 * K + c] = st;
    }
  }
}

template <typename acc_t>
__global__ void dice_sums_final_kernel(const acc_t* __restrict__ partial, int64_t B, int64_t nblk, int64_t K,
                                       double* __restrict__ out /* [B, 3, K] */) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * 3 * K) return;
  const int64_t b = i / (3 * K), j = i % (3 * K);
  double total = 0.0;
  for (int64_t k = 0; k < nblk; ++k) total += static_cast<double>(partial[(b * nblk + k) * 3 * K + j]);
  out[i] = total;
}

template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads) dice_backward_kernel(
    const scalar_t* __restrict__ x, Layout lx, const label_t* __restrict__ y, Layout ly,
    const at::opmath_type<scalar_t>* __restrict__ coef_a, const at::opmath_type<scalar_t>* __restrict__ coef_b,
    int64_t ignore_label, int p, scalar_t* __restrict__ g, Layout lg, long long* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = lx.C, K = num_classes_from_c(C), S = lx.S;
  const int64_t b = blockIdx.y;
  const int64_t v = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (v >= S) return;
  const scalar_t* xv = x + b * lx.sb + v * lx.sv;
  scalar_t* gv = g + b * lg.sb + v * lg.sv;
  const acc_t* a = coef_a + b * K;
  const acc_t* bt = coef_b + b * K;
  const int64_t label = static_cast<int64_t>(y[b * ly.sb + v * ly.sv]);
  const int64_t cls = classify_label(label, K, ignore_label);
  if (cls < 0) {
    if (cls == kBadLabel) record_bad_voxel(bad, b * S + v);
    for (int64_t c = 0; c < C; ++c) gv[c * lg.sc] = scalar_t(0);
    return;
  }
  if (C == 1) {
    acc_t s0, s1;
    sigmoid_pair(static_cast<acc_t>(xv[0]), s0, s1);
    const acc_t g0 = class_grad(a[0], bt[0], s0, cls == 0, p);
    const acc_t g1 = class_grad(a[1], bt[1], s1, cls == 1, p);
    gv[0] = static_cast<scalar_t>(sigmoid_grad(s0, s1, g0, g1));
    return;
  }
  acc_t m, inv_z;
  softmax_stats(xv, lx.sc, C, m, inv_z);
  acc_t dot = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t s = shifted_exp(static_cast<acc_t>(xv[c * lx.sc]), m) * inv_z;
    dot += class_grad(a[c], bt[c], s, c == cls, p) * s;
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t s = shifted_exp(static_cast<acc_t>(xv[c * lx.sc]), m) * inv_z;
    gv[c * lg.sc] = static_cast<scalar_t>(softmax_grad(s, class_grad(a[c], bt[c], s, c == cls, p), dot));
  }
}

// Raises (after the kernels ran) if a bad label was recorded, naming the label of the first bad
// voxel in (sample, voxel) order, as the CPU kernels do.
void check_bad_label(const at::Tensor& bad, const at::Tensor& y, int64_t S, int64_t K, int64_t ignore_label) {
  const long long index = bad.item<int64_t>();  // synchronises with the stream
  if (index == kNoBadVoxel) return;
  const int64_t label = y.reshape({y.size(0), S}).select(0, index / S).select(0, index % S).item<int64_t>();
  TORCH_CHECK_VALUE(false, bad_label_message("dice_loss", label, K, ignore_label));
}

at::Tensor dice_sums_cuda(const at::Tensor& x_in, const at::Tensor& y_in, int64_t ignore_label, int64_t p) {
  at::Tensor yv = check_inputs("dice_sums", x_in, y_in, p);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in;
  const Layout lx = x_layout(x);
  const Layout ly = y_layout(yv);
  const int64_t K = num_classes(x);
  at::Tensor out64 = at::zeros({lx.B, 3, K}, x.options().dtype(at::kDouble));
  if (lx.B > 0 && lx.S > 0) {
    TORCH_CHECK_VALUE(lx.B <= 65535, "dice_sums: at most 65535 samples per call on CUDA, got ", lx.B);
    const int64_t nblk = std::min(kMaxBlocks, (lx.S + kVoxelsPerBlock - 1) / kVoxelsPerBlock);
    const int64_t ntile = (K + kClassTile - 1) / kClassTile;
    TORCH_CHECK_VALUE(ntile <= 65535, "dice_sums: at most ", 65535 * kClassTile, " classes on CUDA, got ", K);
    at::Tensor bad = at::full({}, kNoBadVoxel, x.options().dtype(at::kLong));
    const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor partial = at::empty({lx.B, nblk, 3, K}, x.options().dtype(acc_type));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dice_sums_cuda", [&] {
      using x_t = scalar_t;
      using acc_t = at::opmath_type<x_t>;
      AT_DISPATCH_INTEGRAL_TYPES(yv.scalar_type(), "dice_sums_cuda_labels", [&] {
        using label_t = scalar_t;
        const dim3 grid(static_cast<unsigned>(ntile), static_cast<unsigned>(nblk), static_cast<unsigned>(lx.B));
        dice_sums_partial_kernel<x_t, label_t><<<grid, kThreads, 0, stream>>>(
            x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<label_t>(), ly, ignore_label, static_cast<int>(p),
            partial.mutable_data_ptr<acc_t>(), reinterpret_cast<long long*>(bad.mutable_data_ptr<int64_t>()));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const int64_t n = lx.B * 3 * K;
        dice_sums_final_kernel<acc_t><<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
            partial.const_data_ptr<acc_t>(), lx.B, nblk, K, out64.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    check_bad_label(bad, yv, lx.S, K, ignore_label);
  }
  return x.scalar_type() == at::kDouble ? out64 : out64.to(at::kFloat);
}

at::Tensor dice_backward_cuda(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& coef_a,
                              const at::Tensor& coef_b, int64_t ignore_label, int64_t p) {
  at::Tensor yv = check_inputs("dice_backward", x_in, y_in, p);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = x_in;
  const Layout lx = x_layout(x);
  const Layout ly = y_layout(yv);
  at::Tensor a = check_coef("dice_backward", "coef_a", coef_a, x);
  at::Tensor bt = check_coef("dice_backward", "coef_b", coef_b, x);
  at::Tensor g = empty_grad(x);
  const Layout lg = x_layout(g);
  if (lx.B == 0 || lx.S == 0) return g.zero_();
  TORCH_CHECK_VALUE(lx.B <= 65535, "dice_backward: at most 65535 samples per call on CUDA, got ", lx.B);
  at::Tensor bad = at::full({}, kNoBadVoxel, x.options().dtype(at::kLong));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dice_backward_cuda", [&] {
    using x_t = scalar_t;
    using acc_t = at::opmath_type<x_t>;
    AT_DISPATCH_INTEGRAL_TYPES(yv.scalar_type(), "dice_backward_cuda_labels", [&] {
      using label_t = scalar_t;
      const dim3 grid(static_cast<unsigned>((lx.S + kThreads - 1) / kThreads), static_cast<unsigned>(lx.B));
      dice_backward_kernel<x_t, label_t><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<x_t>(), lx, yv.const_data_ptr<label_t>(), ly, a.const_data_ptr<acc_t>(),
          bt.const_data_ptr<acc_t>(), ignore_label, static_cast<int>(p), g.mutable_data_ptr<x_t>(), lg,
          reinterpret_cast<long long*>(bad.mutable_data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  check_bad_label(bad, yv, lx.S, num_classes(x), ignore_label);
  return g;
}

}  // namespace
}  // namespace dice
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) {
  m.impl("dice_sums", &seglosses::dice::dice_sums_cuda);
  m.impl("dice_backward", &seglosses::dice::dice_backward_cuda);
}
