// Connected components of affinity graphs (affgraph_to_seg, and MalisLoss's segmentation when no
// gt_seg is given). The computation is a CPU union-find (csrc/cpu/connected_components_cpu.cpp);
// the CUDA backend (csrc/cuda/connected_components_cuda.cu) thresholds on the device, moves the
// edges to the host and calls it.
#pragma once

#include <ATen/core/Tensor.h>

namespace seglosses {

// affs: [B, C, *spatial] on the host; an edge (v, v + nhood[c]) joins its voxels when
// affs > threshold. Returns int64 labels [B, *spatial], 1..n per sample in raster order of each
// component's first voxel; with singleton_background, one-voxel components get 0. fn names the
// public function the user called, for error messages. pin_result: the labels in pinned memory
// (for the CUDA backend's asynchronous copy back).
at::Tensor connected_components_host(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                     bool singleton_background, int64_t num_threads, c10::string_view fn,
                                     bool pin_result);

}  // namespace seglosses
