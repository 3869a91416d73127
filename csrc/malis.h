// MALIS weights. The computation is a CPU sweep (csrc/cpu/malis_cpu.cpp, stages in
// csrc/cpu/malis/); the CUDA backend (csrc/cuda/malis_cuda.cu) moves its inputs to the host in one
// trip, calls these functions and copies the result back in one trip.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace seglosses {
namespace malis {

// The CPU kernels of malis_weights / malis_counts, on host tensors: pred: [B, C, *spatial]
// affinities, seg: [B, *spatial] labels >= 0 or none (the connected components of gt_affs); see
// the schemas in csrc/seglosses.cpp. fn, pred_arg and seg_arg name the public function the user
// called and its prediction and label arguments, for error messages. pin_result: the result in
// pinned memory (for the CUDA backend's asynchronous copy back).
at::Tensor malis_weights_host(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                              const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask,
                              at::IntArrayRef nhood, bool constrained, bool constrain_masked, int64_t num_threads,
                              c10::string_view fn, c10::string_view pred_arg, c10::string_view seg_arg,
                              bool pin_result);

std::tuple<at::Tensor, at::Tensor> malis_counts_host(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                                                     const std::optional<at::Tensor>& gt_affs,
                                                     const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                     bool constrained, bool constrain_masked, int64_t num_threads,
                                                     c10::string_view fn, c10::string_view pred_arg,
                                                     c10::string_view seg_arg, bool pin_result);

// Frees the scratch memory that MALIS keeps per thread between calls; returns the bytes freed.
int64_t release_malis_workspace();

// The kernel variants (csrc/cpu/malis/kernels.h): those this CPU runs, the one a call uses now,
// and the override for tests ("auto" or a name; returns the previous setting).
std::vector<std::string> malis_isas();
std::string malis_isa();
std::string malis_set_isa(c10::string_view isa);

// For tests: the internal settings that force the kernel's equivalent paths (csrc/cpu/malis/tuning.h:
// "slabs", "split_voxels", "msd_items", "reset"); returns the previous value.
int64_t malis_set_tuning(c10::string_view name, int64_t value);

}  // namespace malis
}  // namespace seglosses
