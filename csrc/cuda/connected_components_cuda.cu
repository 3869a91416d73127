// CUDA backend of connected_components: thresholds on the GPU, so only one byte per edge crosses
// the bus, runs the host union-find (csrc/cpu/connected_components_cpu.cpp) and returns the labels
// on the caller's device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "connected_components.h"

namespace seglosses {
namespace {

at::Tensor connected_components_cuda(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                     bool singleton_background, int64_t num_threads, c10::string_view fn) {
  const c10::cuda::CUDAGuard guard(affs.device());
  // The components of the thresholded graph equal those of affs.
  const at::Tensor edges = at::gt(affs, threshold).cpu();
  return connected_components_cpu(edges, nhood, 0.5, singleton_background, num_threads, fn).to(affs.device());
}

}  // namespace
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) { m.impl("connected_components", &seglosses::connected_components_cuda); }
