// CUDA backend of the MALIS ops: the Kruskal sweep is sequential pointer chasing, so it runs on
// the host (csrc/cpu/malis_cpu.cpp). This file moves the inputs there — thresholding gt_affs and
// the mask on the GPU first, so only one byte per edge crosses the bus — and returns the result
// on the caller's device, on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "malis.h"

namespace seglosses {
namespace malis {
namespace {

// The dispatcher picks this backend when any argument is on CUDA; pred must be.
void check_on_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be on the CUDA device of the other arguments, got ", t.device());
}

std::optional<at::Tensor> edge_bits_to_host(const std::optional<at::Tensor>& t, bool is_mask) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return (is_mask ? at::ne(*t, 0) : at::gt(*t, 0.5)).cpu();
}

at::Tensor malis_weights_cuda(const at::Tensor& pred, const at::Tensor& seg, const std::optional<at::Tensor>& gt_affs,
                              const std::optional<at::Tensor>& mask, at::IntArrayRef nhood, bool constrained) {
  check_on_cuda("malis_weights", "pred_affs", pred);
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor w = malis_weights_cpu(pred.cpu(), seg.cpu(), edge_bits_to_host(gt_affs, false),
                                         edge_bits_to_host(mask, true), nhood, constrained);
  return w.to(pred.device());
}

std::tuple<at::Tensor, at::Tensor> malis_counts_cuda(const at::Tensor& pred, const at::Tensor& seg,
                                                     const std::optional<at::Tensor>& gt_affs,
                                                     const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                     bool constrained) {
  check_on_cuda("malis_counts", "pred_affs", pred);
  const c10::cuda::CUDAGuard guard(pred.device());
  auto counts = malis_counts_cpu(pred.cpu(), seg.cpu(), edge_bits_to_host(gt_affs, false),
                                 edge_bits_to_host(mask, true), nhood, constrained);
  return {std::get<0>(counts).to(pred.device()), std::get<1>(counts).to(pred.device())};
}

at::Tensor connected_components_cuda(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                     bool singleton_background) {
  const c10::cuda::CUDAGuard guard(affs.device());
  // Threshold on the GPU; the components of the thresholded graph equal those of affs.
  const at::Tensor edges = at::gt(affs, threshold).cpu();
  return connected_components_cpu(edges, nhood, 0.5, singleton_background).to(affs.device());
}

}  // namespace
}  // namespace malis
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) {
  m.impl("malis_weights", &seglosses::malis::malis_weights_cuda);
  m.impl("malis_counts", &seglosses::malis::malis_counts_cuda);
  m.impl("connected_components", &seglosses::malis::connected_components_cuda);
}
