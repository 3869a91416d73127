// CUDA backend of connected_components: thresholds on the device, so only one byte per edge
// crosses the bus (once, into pinned memory, then one wait: host_staging.cuh), runs the host
// union-find (csrc/cpu/connected_components_cpu.cpp) into pinned memory and copies the labels
// back asynchronously on the current stream.
// Per-operator headers instead of ATen/ATen.h: a fraction of the compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/gt.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "connected_components.h"
#include "cuda/host_staging.cuh"

namespace seglosses {
namespace {

at::Tensor connected_components_cuda(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                     bool singleton_background, int64_t num_threads, c10::string_view fn) {
  const c10::cuda::CUDAGuard guard(affs.device());
  // The components of the thresholded graph equal those of affs.
  cuda::ToHost trip;
  const at::Tensor compact = cuda::without_broadcast_dims(affs);
  const at::Tensor edges = trip.copy(at::gt(compact, threshold).expand(affs.sizes()));
  trip.wait();
  const at::Tensor labels =
      connected_components_host(edges, nhood, 0.5, singleton_background, num_threads, fn, /*pin_result=*/true);
  return cuda::to_device(labels, affs.device());
}

}  // namespace
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) { m.impl("connected_components", &seglosses::connected_components_cuda); }
