// Device helpers shared by the CUDA Dice kernels (csrc/cuda/dice_cuda.cu: label maps,
// csrc/cuda/dice_sigmoid_cuda.cu: multi-label sigmoid): the fixed-order block reduction, readers of
// labels / masks / targets in their own dtype (a switch that is uniform across a kernel, so it
// costs no divergence and does not multiply the instantiations), launch sizes, the bad-element
// report.
//
// Determinism: every reduction is per-block partials combined in block order; the only atomic is
// the atomicMin of the bad-element report, whose result does not depend on the order.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <limits>
#include <string>

#include "dice.h"
#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kVoxelsPerThread = 4;
constexpr int64_t kVoxelsPerBlock = int64_t(kThreads) * kVoxelsPerThread;
// At most this many blocks share one reduction row (their partials are added in order).
constexpr int64_t kMaxBlocksPerRow = 1024;
// Enough blocks in flight to fill a large GPU (132 SMs x 16 blocks); rows get fewer blocks as
// there are more rows, so the partial buffer stays small for large B * K.
constexpr int64_t kTargetBlocks = 2048;
// Grid-stride kernels launch at most this many blocks (any B * S works).
constexpr int64_t kMaxGrid = int64_t(1) << 20;
constexpr long long kNoBad = std::numeric_limits<long long>::max();

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks per reduction row of `n` elements when there are `rows` rows.
inline int64_t blocks_per_row(int64_t n, int64_t rows) {
  const int64_t want = std::max<int64_t>(1, ceil_div(kTargetBlocks, std::max<int64_t>(rows, 1)));
  return std::max<int64_t>(1, std::min({ceil_div(n, kVoxelsPerBlock), kMaxBlocksPerRow, want}));
}

inline unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(n, kThreads), kMaxGrid))); }

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

// Keeps the smallest flat index of a bad element (bad == nullptr: validation is off).
__device__ __forceinline__ void record_bad(long long* bad, long long index) {
  if (bad != nullptr && index < *reinterpret_cast<volatile long long*>(bad)) atomicMin(bad, index);
}

template <typename T>
__device__ __forceinline__ T load_as(const void* base, int64_t offset) {
  return static_cast<const T*>(base)[offset];
}

// Class of the label at element `offset` (kIgnored / kBadLabel as in dice_math.h).
__device__ __forceinline__ int32_t read_class(const void* y, Elem e, int64_t offset, int64_t K, int64_t ignore_label) {
  switch (e) {
    case Elem::kU8: return classify_label(static_cast<uint64_t>(load_as<uint8_t>(y, offset)), K, ignore_label);
    case Elem::kI8: return classify_label(static_cast<int64_t>(load_as<int8_t>(y, offset)), K, ignore_label);
    case Elem::kU16: return classify_label(static_cast<uint64_t>(load_as<uint16_t>(y, offset)), K, ignore_label);
    case Elem::kI16: return classify_label(static_cast<int64_t>(load_as<int16_t>(y, offset)), K, ignore_label);
    case Elem::kU32: return classify_label(static_cast<uint64_t>(load_as<uint32_t>(y, offset)), K, ignore_label);
    case Elem::kI32: return classify_label(static_cast<int64_t>(load_as<int32_t>(y, offset)), K, ignore_label);
    case Elem::kU64: return classify_label(load_as<uint64_t>(y, offset), K, ignore_label);
    default: return classify_label(load_as<int64_t>(y, offset), K, ignore_label);
  }
}

// Whether the mask element at `offset` is nonzero (as mask.bool(): -0.0 is zero, NaN nonzero).
__device__ __forceinline__ bool read_mask(const void* m, Elem e, int64_t offset) {
  switch (e) {
    case Elem::kBool:
    case Elem::kU8:
    case Elem::kI8: return load_as<uint8_t>(m, offset) != 0;
    case Elem::kU16:
    case Elem::kI16: return load_as<uint16_t>(m, offset) != 0;
    case Elem::kF16:
    case Elem::kBF16: return (load_as<uint16_t>(m, offset) & 0x7fffu) != 0;
    case Elem::kU32:
    case Elem::kI32: return load_as<uint32_t>(m, offset) != 0;
    case Elem::kF32: return (load_as<uint32_t>(m, offset) & 0x7fffffffu) != 0;
    case Elem::kF64: return (load_as<uint64_t>(m, offset) & 0x7fffffffffffffffull) != 0;
    default: return load_as<uint64_t>(m, offset) != 0;
  }
}

// A multi-label target (bool, integer or floating point) as acc_t.
template <typename acc_t>
__device__ __forceinline__ acc_t read_target(const void* t, Elem e, int64_t offset) {
  switch (e) {
    case Elem::kBool: return load_as<bool>(t, offset) ? acc_t(1) : acc_t(0);
    case Elem::kU8: return static_cast<acc_t>(load_as<uint8_t>(t, offset));
    case Elem::kI8: return static_cast<acc_t>(load_as<int8_t>(t, offset));
    case Elem::kU16: return static_cast<acc_t>(load_as<uint16_t>(t, offset));
    case Elem::kI16: return static_cast<acc_t>(load_as<int16_t>(t, offset));
    case Elem::kU32: return static_cast<acc_t>(load_as<uint32_t>(t, offset));
    case Elem::kI32: return static_cast<acc_t>(load_as<int32_t>(t, offset));
    case Elem::kU64: return static_cast<acc_t>(load_as<uint64_t>(t, offset));
    case Elem::kI64: return static_cast<acc_t>(load_as<int64_t>(t, offset));
    case Elem::kF16: return static_cast<acc_t>(static_cast<float>(load_as<c10::Half>(t, offset)));
    case Elem::kBF16: return static_cast<acc_t>(static_cast<float>(load_as<c10::BFloat16>(t, offset)));
    case Elem::kF32: return static_cast<acc_t>(load_as<float>(t, offset));
    default: return static_cast<acc_t>(load_as<double>(t, offset));
  }
}

// An optional input read in its own dtype: data == nullptr for "none".
struct Input {
  const void* data = nullptr;
  Elem elem = Elem::kU8;
  Layout l;
};

inline Input input_of(const at::Tensor& t, const Layout& l) {
  Input in;
  if (!t.defined()) return in;
  in.l = l;
  in.data = t.const_data_ptr();
  in.elem = elem_of(t.scalar_type());
  return in;
}

// All tensors on one CUDA device (the dispatcher picks the CUDA kernel when any argument is on
// CUDA, e.g. CPU x with a CUDA grad_sums).
inline void check_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be on the CUDA device of the other tensors, got ", x.device());
}

// The bad-element report of a sums kernel: a one-element int64 tensor holding kNoBad.
inline at::Tensor new_bad_report(const at::Tensor& x) {
  return at::full({}, static_cast<int64_t>(kNoBad), x.options().dtype(at::kLong));
}

// The only host synchronisation of the CUDA Dice ops, run only when the caller asked for label
// validation: waits for the kernels and returns the smallest flat index of a bad element, or -1.
inline int64_t read_bad_report(const at::Tensor& bad) {
  const int64_t index = bad.item<int64_t>();
  return index == static_cast<int64_t>(kNoBad) ? -1 : index;
}

}  // namespace cuda
}  // namespace dice
}  // namespace seglosses
