// CUDA backend of the MALIS ops. The Kruskal sweep is sequential pointer chasing, so it runs on
// the host (csrc/cpu/malis_cpu.cpp); this file moves a call's data there and back, one trip each
// way (host_staging.cuh):
//   1. on the device, each input becomes what the host reads, in as few bytes as that allows:
//      pred as it is (the sweep orders by its exact values), gt_affs > 0.5 and mask != 0 as one
//      byte per edge, int64 labels narrowed to int32 (with their min and max, to know whether
//      they fit); broadcast dims of any input cross once;
//   2. asynchronous copies into pinned host buffers on the current stream, then one wait;
//   3. the sweep on the host, into pinned memory (with seg absent, the connected components of
//      gt_affs first, in the same host visit);
//   4. one asynchronous copy of the result back on the current stream (no wait).
// Labels above the int32 range are the one exception: they cross again as int64 after the wait.
// Inputs already on the CPU are read where they are.
// Per-operator headers instead of ATen/ATen.h: a fraction of the compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "cuda/host_staging.cuh"
#include "malis.h"

namespace seglosses {
namespace malis {
namespace {

using cuda::ToHost;

// The op's names, for error messages.
struct Names {
  c10::string_view fn, pred_arg, seg_arg;
};

// The dispatcher picks this backend when any argument is on CUDA; pred must be, and every other
// tensor on pred's device or on the CPU.
void check_devices(const Names& n, const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                   const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK_VALUE(pred.is_cuda(), std::string(n.fn), ": ", std::string(n.pred_arg),
                    " must be on the CUDA device of the other arguments, got ", pred.device());
  auto check = [&](c10::string_view name, const std::optional<at::Tensor>& t) {
    if (!t.has_value() || !t->defined()) return;
    TORCH_CHECK_VALUE(t->device() == pred.device() || t->is_cpu(), std::string(n.fn), ": ", std::string(name),
                      " must be on ", std::string(n.pred_arg), "'s device ", pred.device(), " or on the CPU, got ",
                      t->device());
  };
  check(n.seg_arg, seg);
  check("gt_affs", gt_affs);
  check("mask", mask);
}

// The inputs of a call on the host, as malis_*_host reads them.
struct HostInputs {
  at::Tensor pred;
  std::optional<at::Tensor> seg, gt_affs, mask;
};

// Labels on their way to the host: int64 labels cross as int32 when their values fit, which
// their min and max (copied in the same trip) tell once the trip has landed.
class LabelsToHost {
 public:
  LabelsToHost(ToHost& trip, const at::Tensor& seg) : seg_(seg) {
    if (seg.is_cpu()) {
      host_ = seg;
      return;
    }
    const at::Tensor compact = cuda::without_broadcast_dims(seg);
    if (seg.scalar_type() != at::kLong || seg.numel() == 0) {
      host_ = trip.copy(seg);  // narrower labels as they are; other dtypes for the host's checks
      return;
    }
    const auto [lo, hi] = at::aminmax(compact);
    range_ = trip.copy(at::stack({lo, hi}));
    host_ = trip.copy(compact.to(at::kInt)).expand(seg.sizes());
  }

  // After the trip's wait: the labels on the host.
  at::Tensor get(const Names& n) {
    if (!range_.defined()) return host_;
    const int64_t* range = range_.const_data_ptr<int64_t>();  // host memory, landed
    const int64_t lo = range[0], hi = range[1];
    TORCH_CHECK_VALUE(lo >= 0, std::string(n.fn), ": ", std::string(n.seg_arg), " labels must be >= 0, got ", lo);
    if (hi <= std::numeric_limits<int32_t>::max()) return host_;
    ToHost again;  // labels beyond int32: the int64 values (the host relabels them densely)
    at::Tensor wide = again.copy(seg_);
    again.wait();
    return wide;
  }

 private:
  at::Tensor seg_, host_, range_;
};

// One edge byte: gt_affs > 0.5 or mask != 0, thresholded on the device; bool tensors as they are.
at::Tensor edge_bytes(const at::Tensor& t, bool is_mask) {
  if (t.scalar_type() == at::kBool) return t;
  const at::Tensor compact = cuda::without_broadcast_dims(t);
  return (is_mask ? at::ne(compact, 0) : at::gt(compact, 0.5)).expand(t.sizes());
}

HostInputs inputs_to_host(const Names& n, const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                          const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask) {
  ToHost trip;
  HostInputs h;
  auto edges = [&](const std::optional<at::Tensor>& t, bool is_mask) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return std::nullopt;
    return t->is_cpu() ? *t : trip.copy(edge_bytes(*t, is_mask));
  };
  h.pred = trip.copy(pred);
  h.gt_affs = edges(gt_affs, false);
  h.mask = edges(mask, true);
  std::optional<LabelsToHost> labels;
  if (seg.has_value() && seg->defined()) labels.emplace(trip, *seg);
  trip.wait();
  if (labels) h.seg = labels->get(n);
  return h;
}

at::Tensor malis_weights_cuda(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                              const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask,
                              at::IntArrayRef nhood, bool constrained, bool constrain_masked, int64_t num_threads,
                              c10::string_view fn, c10::string_view pred_arg, c10::string_view seg_arg) {
  const Names n{fn, pred_arg, seg_arg};
  check_devices(n, pred, seg, gt_affs, mask);
  const c10::cuda::CUDAGuard guard(pred.device());
  const HostInputs h = inputs_to_host(n, pred, seg, gt_affs, mask);
  const at::Tensor w = malis_weights_host(h.pred, h.seg, h.gt_affs, h.mask, nhood, constrained, constrain_masked,
                                          num_threads, fn, pred_arg, seg_arg, /*pin_result=*/true);
  return cuda::to_device(w, pred.device());
}

std::tuple<at::Tensor, at::Tensor> malis_counts_cuda(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                                                     const std::optional<at::Tensor>& gt_affs,
                                                     const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                     bool constrained, bool constrain_masked, int64_t num_threads,
                                                     c10::string_view fn, c10::string_view pred_arg,
                                                     c10::string_view seg_arg) {
  const Names n{fn, pred_arg, seg_arg};
  check_devices(n, pred, seg, gt_affs, mask);
  const c10::cuda::CUDAGuard guard(pred.device());
  const HostInputs h = inputs_to_host(n, pred, seg, gt_affs, mask);
  const auto [pos, neg] = malis_counts_host(h.pred, h.seg, h.gt_affs, h.mask, nhood, constrained, constrain_masked,
                                            num_threads, fn, pred_arg, seg_arg, /*pin_result=*/true);
  return {cuda::to_device(pos, pred.device()), cuda::to_device(neg, pred.device())};
}

}  // namespace
}  // namespace malis
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CUDA, m) {
  m.impl("malis_weights", &seglosses::malis::malis_weights_cuda);
  m.impl("malis_counts", &seglosses::malis::malis_counts_cuda);
}
