// MALIS weights and affinity-graph connected components. The computation is a CPU sweep
// (csrc/cpu/malis_cpu.cpp); the CUDA backend (csrc/cuda/malis_cuda.cu) moves its inputs to the
// host, calls these functions and returns the result on the caller's device.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace seglosses {
namespace malis {

at::Tensor malis_weights_cpu(const at::Tensor& pred, const at::Tensor& seg, const std::optional<at::Tensor>& gt_affs,
                             const std::optional<at::Tensor>& mask, at::IntArrayRef nhood, bool constrained);

std::tuple<at::Tensor, at::Tensor> malis_counts_cpu(const at::Tensor& pred, const at::Tensor& seg,
                                                    const std::optional<at::Tensor>& gt_affs,
                                                    const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                    bool constrained);

// Frees the scratch memory that MALIS keeps per thread between calls; returns the bytes freed.
int64_t release_malis_workspace();

at::Tensor connected_components_cpu(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                    bool singleton_background);

}  // namespace malis
}  // namespace seglosses
