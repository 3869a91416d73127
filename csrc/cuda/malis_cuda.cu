// CUDA backend of the MALIS ops: the Kruskal sweep is sequential pointer chasing, so it runs on
// the host (csrc/cpu/malis_cpu.cpp). This file moves the inputs there — thresholding gt_affs and
// the mask on the GPU first, so only one byte per edge crosses the bus — and returns the result
// on the caller's device, on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "malis.h"

namespace seglosses {
namespace malis {
namespace {

// The dispatcher picks this backend when any argument is on CUDA; pred must be.
void check_on_cuda(c10::string_view fn, c10::string_view name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), std::string(fn), ": ", std::string(name),
                    " must be on the CUDA device of the other arguments, got ", t.device());
}

std::optional<at::Tensor> edge_bits_to_host(const std::optional<at::Tensor>& t, bool is_mask) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return (is_mask ? at::ne(*t, 0) : at::gt(*t, 0.5)).cpu();
}

at::Tensor malis_weights_cuda(const at::Tensor& pred, const at::Tensor& seg, const std::optional<at::Tensor>& gt_affs,
                              const std::optional<at::Tensor>& mask, at::IntArrayRef nhood, bool constrained,
                              bool constrain_masked, int64_t num_threads, c10::string_view fn,
                              c10::string_view pred_arg, c10::string_view seg_arg) {
  check_on_cuda(fn, pred_arg, pred);
  const c10::cuda::CUDAGuard guard(pred.device());
  const at::Tensor w =
      malis_weights_cpu(pred.cpu(), seg.cpu(), edge_bits_to_host(gt_affs, false), edge_bits_to_host(mask, true), nhood,
                        constrained, constrain_masked, num_threads, fn, pred_arg, seg_arg);
  return w.to(pred.device());
}

std::tuple<at::Tensor, at::Tensor> malis_counts_cuda(const at::Tensor& pred, const at::Tensor& seg,
                                                     const std::optional<at::Tensor>& gt_affs,
                                                     const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                     bool constrained, bool constrain_masked, int64_t num_threads,
                                                     c10::string_view fn, c10::string_view pred_arg,
                                                     c10::string_view seg_arg) {
  check_on_cuda(fn, pred_arg, pred);
  const c10::cuda::CUDAGuard guard(pred.device());
  auto counts =
      malis_counts_cpu(pred.cpu(), seg.cpu(), edge_bits_to_host(gt_affs, false), edge_bits_to_host(mask, true), nhood,
                       constrained, constrain_masked, num_threads, fn, pred_arg, seg_arg);
  return {std::get<0>(counts).to(pred.device()), std::get<1>(counts).to(pred.device())};
}

}  // namespace
}  // namespace malis
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) {
  m.impl("malis_weights", &seglosses::malis::malis_weights_cuda);
  m.impl("malis_counts", &seglosses::malis::malis_counts_cuda);
}
