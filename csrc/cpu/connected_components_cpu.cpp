// Connected components of an affinity graph on the CPU: one union-find pass over the edges above
// the threshold per sample (path halving, union by size), then raster-order numbering. Samples run
// in parallel threads.
// Per-operator headers instead of ATen/ATen.h: a fraction of the compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/gt.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

#include "connected_components.h"
#include "malis/geometry.h"

namespace seglosses {

at::Tensor connected_components_host(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                     bool singleton_background, int64_t num_threads, c10::string_view fn,
                                     bool pin_result) {
  const std::string name(fn);
  const char* f = name.c_str();
  TORCH_CHECK_VALUE(affs.dim() >= 3 && affs.dim() <= 5, f,
                    ": affs must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ", affs.sizes());
  TORCH_CHECK_VALUE(num_threads >= 0, f, ": num_threads must be >= 1 (or 0: torch's), got ", num_threads);
  if (num_threads == 0) num_threads = at::get_num_threads();
  const malis::Geometry g = malis::make_geometry(f, affs.sizes().slice(2), nhood, affs.size(1));
  TORCH_CHECK_VALUE(g.V < (int64_t(1) << 32), f, ": at most 2^32 voxels per sample, got ", g.V);
  std::vector<int64_t> out_sizes{affs.size(0)};
  for (int64_t d = 2; d < affs.dim(); ++d) out_sizes.push_back(affs.size(d));
  at::Tensor labels = at::zeros(out_sizes, affs.options().dtype(at::kLong).pinned_memory(pin_result));
  if (labels.numel() == 0) return labels;
  // Edges that are already bits (the CUDA backend's, MALIS's gt_affs) are read as they are.
  const bool bits = affs.scalar_type() == at::kBool && threshold >= 0 && threshold < 1;
  const at::Tensor on = bits ? affs.contiguous() : at::gt(affs, threshold).contiguous();
  const bool* edges = on.const_data_ptr<bool>();
  int64_t* out = labels.mutable_data_ptr<int64_t>();
  const int64_t B = affs.size(0), V = g.V, E = g.C * V;
  const int64_t grain = (B + num_threads - 1) / num_threads;  // at most num_threads chunks
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::vector<uint32_t> parent(V), size(V, 1);
      for (int64_t v = 0; v < V; ++v) parent[v] = static_cast<uint32_t>(v);
      auto find = [&](uint32_t x) {
        while (parent[x] != x) {
          parent[x] = parent[parent[x]];
          x = parent[x];
        }
        return x;
      };
      const bool* eb = edges + b * E;
      for (int64_t c = 0; c < g.C; ++c) {
        malis::for_each_edge(g, c, [&](int64_t v, int64_t u) {
          if (!eb[c * V + v]) return;
          uint32_t ra = find(static_cast<uint32_t>(v)), rb = find(static_cast<uint32_t>(u));
          if (ra == rb) return;
          if (size[ra] < size[rb]) std::swap(ra, rb);
          parent[rb] = ra;
          size[ra] += size[rb];
        });
      }
      // Components numbered in raster order of their first voxel.
      std::vector<int64_t> id(V, 0);
      int64_t next = 0;
      int64_t* ob = out + b * V;
      for (int64_t v = 0; v < V; ++v) {
        const uint32_t r = find(static_cast<uint32_t>(v));
        if (singleton_background && size[r] == 1) continue;
        if (id[r] == 0) id[r] = ++next;
        ob[v] = id[r];
      }
    }
  });
  return labels;
}

namespace {

at::Tensor connected_components_cpu(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                    bool singleton_background, int64_t num_threads, c10::string_view fn) {
  return connected_components_host(affs, nhood, threshold, singleton_background, num_threads, fn, false);
}

}  // namespace
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CPU, m) { m.impl("connected_components", &seglosses::connected_components_cpu); }
