// MALIS weights (Turaga et al. 2009; constrained form of Funke et al. 2018) and connected
// components of affinity graphs, on the CPU.
//
// Graph: affinity channel c at voxel v is the edge (v, v + nhood[c]); edges whose partner lies
// outside the volume are invalid (weight 0). Flat edge index e = c * V + v.
//
// One sort and one Kruskal sweep per sample give both constrained passes:
//   1. keys: the prediction's float32 bits, made monotone and inverted (descending order). Valid
//      edges are written in index order, GT-1 edges to the front of the buffer, GT-0 edges to the
//      back (constrained) or all together (unconstrained);
//   2. each group is sorted by an LSD radix sort on the key (stable: ties stay in index order);
//   3. the sweep walks GT-1 edges then GT-0 edges through a 32-bit union-find (path halving,
//      union by size). A component knows its labelled-voxel count and either its single label or,
//      once two different labels have met, a label histogram (merged small-into-large). A
//      merging edge counts same-label pairs sum_l hA[l] hB[l] (GT-1 edges, or any edge when
//      unconstrained) and different-label pairs nA nB - sum_l hA[l] hB[l] (GT-0 edges, or any).
// Counts are exact (uint64). Samples of a batch run in parallel (at::parallel_for); each sample is
// computed exactly as in a serial run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "malis.h"

namespace seglosses {
namespace malis {
namespace {

// ---------------------------------------------------------------------------------------------
// Geometry: volume dims padded to 3 (leading 1s) and per-channel offsets and valid ranges.
// ---------------------------------------------------------------------------------------------
struct Geometry {
  int64_t dims[3] = {1, 1, 1};
  int64_t V = 1, C = 0;
  std::vector<int64_t> delta;  // [C] linear offset of the partner voxel
  std::vector<int64_t> lo, hi;  // [C * 3] valid source coordinate range per dim
};

Geometry make_geometry(const char* op, at::IntArrayRef spatial, at::IntArrayRef nhood, int64_t C) {
  const int64_t nd = static_cast<int64_t>(spatial.size());
  TORCH_CHECK_VALUE(nd >= 1 && nd <= 3, op, ": expected 1 to 3 spatial dims, got ", nd);
  TORCH_CHECK_VALUE(static_cast<int64_t>(nhood.size()) == C * nd, op, ": nhood must have one row of ", nd,
                    " offsets per channel (", C, " channels), got ", nhood.size(), " values");
  Geometry g;
  g.C = C;
  for (int64_t d = 0; d < nd; ++d) g.dims[3 - nd + d] = spatial[d];
  g.V = g.dims[0] * g.dims[1] * g.dims[2];
  g.delta.resize(C);
  g.lo.resize(C * 3);
  g.hi.resize(C * 3);
  const int64_t stride[3] = {g.dims[1] * g.dims[2], g.dims[2], 1};
  for (int64_t c = 0; c < C; ++c) {
    int64_t off[3] = {0, 0, 0};
    for (int64_t d = 0; d < nd; ++d) off[3 - nd + d] = nhood[c * nd + d];
    g.delta[c] = 0;
    for (int d = 0; d < 3; ++d) {
      g.delta[c] += off[d] * stride[d];
      g.lo[c * 3 + d] = std::max<int64_t>(0, -off[d]);
      g.hi[c * 3 + d] = std::min<int64_t>(g.dims[d], g.dims[d] - off[d]);
    }
  }
  return g;
}

// Calls f(v, u) for the valid edges of channel c, in increasing v.
template <typename F>
void for_each_edge(const Geometry& g, int64_t c, F&& f) {
  const int64_t* lo = &g.lo[c * 3];
  const int64_t* hi = &g.hi[c * 3];
  const int64_t d = g.delta[c];
  for (int64_t z = lo[0]; z < hi[0]; ++z) {
    for (int64_t y = lo[1]; y < hi[1]; ++y) {
      const int64_t row = (z * g.dims[1] + y) * g.dims[2];
      for (int64_t x = lo[2]; x < hi[2]; ++x) f(row + x, row + x + d);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Sort keys and the radix sort
// ---------------------------------------------------------------------------------------------
// Key whose ascending order is the descending order of f (f finite); -0 and +0 are equal.
inline uint32_t descending_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (f == 0.0f) u = 0;  // fold -0 into +0
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~u;
}

// Stable LSD radix sort of items by their upper 32 bits (the key); the low 32 bits (the edge
// index) ride along. Passes whose digit is the same for every item are skipped.
void radix_sort_by_key(uint64_t* items, int64_t n, std::vector<uint64_t>& tmp) {
  constexpr int kBits[3] = {11, 11, 10};
  constexpr int kShift[3] = {32, 43, 54};
  if (n < 2) return;
  if (static_cast<int64_t>(tmp.size()) < n) tmp.resize(n);
  std::vector<uint32_t> hist(3 * 2048, 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = items[i];
    hist[(k >> 32) & 2047]++;
    hist[2048 + ((k >> 43) & 2047)]++;
    hist[4096 + ((k >> 54) & 1023)]++;
  }
  uint64_t* src = items;
  uint64_t* dst = tmp.data();
  for (int pass = 0; pass < 3; ++pass) {
    uint32_t* h = hist.data() + pass * 2048;
    const uint32_t mask = (1u << kBits[pass]) - 1;
    const int shift = kShift[pass];
    if (h[(src[0] >> shift) & mask] == static_cast<uint32_t>(n)) continue;  // one bucket: no-op pass
    uint32_t sum = 0;
    for (uint32_t b = 0; b <= mask; ++b) {
      const uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t k = src[i];
      dst[h[(k >> shift) & mask]++] = k;
    }
    std::swap(src, dst);
  }
  if (src != items) std::memcpy(items, src, static_cast<size_t>(n) * sizeof(uint64_t));
}

// ---------------------------------------------------------------------------------------------
// The sweep
// ---------------------------------------------------------------------------------------------
struct Merge {
  uint32_t edge;
  uint64_t pos, neg;
};

class Components {
 public:
  Components(int64_t V, const int64_t* seg) : parent_(V), size_(V, 1), nlab_(V), lab_(V) {
    for (int64_t v = 0; v < V; ++v) {
      parent_[v] = static_cast<uint32_t>(v);
      lab_[v] = seg[v];
      nlab_[v] = seg[v] != 0;
    }
  }

  uint32_t find(uint32_t x) {
    while (parent_[x] != x) {
      parent_[x] = parent_[parent_[x]];
      x = parent_[x];
    }
    return x;
  }

  const uint32_t* parent_data() const { return parent_.data(); }

  uint64_t labelled(uint32_t r) const { return nlab_[r]; }

  // sum_l hA[l] hB[l] for roots a != b.
  uint64_t same_label_pairs(uint32_t a, uint32_t b) const {
    if (nlab_[a] == 0 || nlab_[b] == 0) return 0;
    const int64_t la = lab_[a], lb = lab_[b];
    if (la > 0 && lb > 0) return la == lb ? uint64_t(nlab_[a]) * nlab_[b] : 0;
    if (la > 0) return uint64_t(nlab_[a]) * count(hists_[hist_index(lb)], la);
    if (lb > 0) return uint64_t(nlab_[b]) * count(hists_[hist_index(la)], lb);
    const Hist& ha = hists_[hist_index(la)];
    const Hist& hb = hists_[hist_index(lb)];
    const Hist& small = ha.size() <= hb.size() ? ha : hb;
    const Hist& large = ha.size() <= hb.size() ? hb : ha;
    uint64_t total = 0;
    for (const auto& kv : small) total += uint64_t(kv.second) * count(large, kv.first);
    return total;
  }

  // Joins roots a != b (union by size) and merges their label data into the new root.
  void unite(uint32_t a, uint32_t b) {
    if (size_[a] < size_[b]) std::swap(a, b);  // a: the new root
    parent_[b] = a;
    size_[a] += size_[b];
    if (nlab_[b] == 0) return;
    if (nlab_[a] == 0) {
      lab_[a] = lab_[b];
      nlab_[a] = nlab_[b];
      return;
    }
    const int64_t la = lab_[a], lb = lab_[b];
    if (la > 0 && lb > 0) {
      if (la != lb) {
        const int64_t h = new_hist();
        hists_[h][la] = nlab_[a];
        hists_[h][lb] = nlab_[b];
        lab_[a] = -(h + 1);
      }
    } else if (la > 0) {  // b holds a histogram
      hists_[hist_index(lb)][la] += nlab_[a];
      lab_[a] = lb;
    } else if (lb > 0) {
      hists_[hist_index(la)][lb] += nlab_[b];
    } else {  // merge the smaller histogram into the larger
      int64_t ha = hist_index(la), hb = hist_index(lb);
      if (hists_[ha].size() < hists_[hb].size()) std::swap(ha, hb);
      for (const auto& kv : hists_[hb]) hists_[ha][kv.first] += kv.second;
      Hist().swap(hists_[hb]);
      free_.push_back(hb);
      lab_[a] = -(ha + 1);
    }
    nlab_[a] += nlab_[b];
  }

 private:
  using Hist = std::unordered_map<int64_t, uint32_t>;

  static int64_t hist_index(int64_t lab) { return -lab - 1; }
  static uint32_t count(const Hist& h, int64_t label) {
    const auto it = h.find(label);
    return it == h.end() ? 0u : it->second;
  }
  int64_t new_hist() {
    if (!free_.empty()) {
      const int64_t h = free_.back();
      free_.pop_back();
      return h;
    }
    hists_.emplace_back();
    return static_cast<int64_t>(hists_.size()) - 1;
  }

  std::vector<uint32_t> parent_, size_, nlab_;
  std::vector<int64_t> lab_;  // > 0: the only label; 0: no labelled voxel; < 0: -(histogram + 1)
  std::vector<Hist> hists_;
  std::vector<int64_t> free_;
};

struct SampleResult {
  std::vector<Merge> merges;  // merging edges with a non-zero count and not masked out
  uint64_t total_pos = 0, total_neg = 0;
};

// Finds the edge's channel without a division: e = c * V + v.
inline uint32_t edge_channel(uint32_t e, int64_t V, double inv_V, int64_t C) {
  int64_t c = static_cast<int64_t>(static_cast<double>(e) * inv_V);
  if (c >= C) c = C - 1;
  while (c > 0 && c * V > int64_t(e)) --c;
  while ((c + 1) * V <= int64_t(e)) ++c;
  return static_cast<uint32_t>(c);
}

template <typename scalar_t>
SampleResult malis_sample(const Geometry& g, const scalar_t* pred, const int64_t* seg, const bool* gt,
                          const bool* mask, bool constrained, int64_t sample) {
  const int64_t V = g.V, C = g.C, E = C * V;
  for (int64_t e = 0; e < E; ++e) {
    const float f = static_cast<float>(pred[e]);
    TORCH_CHECK_VALUE(std::isfinite(f), "malis_weights: pred_affs must be finite, got ", f, " in sample ", sample,
                      " at flat index ", e);
  }
  for (int64_t v = 0; v < V; ++v) {
    TORCH_CHECK_VALUE(seg[v] >= 0, "malis_weights: gt_seg labels must be >= 0, got ", seg[v], " in sample ", sample);
  }

  // 1. Keys of the valid edges: GT-1 group at the front, GT-0 group at the back (filled backwards,
  //    then reversed, so both groups are in index order before the stable sort).
  int64_t n_valid = 0;
  for (int64_t c = 0; c < C; ++c) {
    int64_t n = 1;
    for (int d = 0; d < 3; ++d) n *= std::max<int64_t>(0, g.hi[c * 3 + d] - g.lo[c * 3 + d]);
    n_valid += n;
  }
  std::vector<uint64_t> items(static_cast<size_t>(n_valid));
  int64_t front = 0, back = n_valid;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t base = c * V;
    for_each_edge(g, c, [&](int64_t v, int64_t u) {
      const int64_t e = base + v;
      const uint64_t item = (uint64_t(descending_key(static_cast<float>(pred[e]))) << 32) | uint64_t(e);
      const bool gt1 = gt != nullptr ? gt[e] : (seg[v] != 0 && seg[v] == seg[u]);
      if (!constrained || gt1) {
        items[front++] = item;
      } else {
        items[--back] = item;
      }
    });
  }
  std::reverse(items.begin() + back, items.end());
  const int64_t n_first = front;  // GT-1 edges (constrained) or all edges

  // 2. Sort each group by prediction, descending.
  std::vector<uint64_t> tmp;
  radix_sort_by_key(items.data(), n_first, tmp);
  radix_sort_by_key(items.data() + n_first, n_valid - n_first, tmp);
  std::vector<uint64_t>().swap(tmp);

  // 3. Kruskal sweep.
  SampleResult res;
  Components comp(V, seg);
  int64_t n_components = V;
  const double inv_V = 1.0 / static_cast<double>(V);
  constexpr int64_t kPrefetch = 8;
  const uint32_t* parent = comp.parent_data();
  for (int64_t i = 0; i < n_valid && n_components > 1; ++i) {
    if (i + kPrefetch < n_valid) {
      const uint32_t ef = static_cast<uint32_t>(items[i + kPrefetch]);
      const uint32_t cf = edge_channel(ef, V, inv_V, C);
      const int64_t vf = int64_t(ef) - int64_t(cf) * V;
      __builtin_prefetch(parent + vf);
      __builtin_prefetch(parent + vf + g.delta[cf]);
    }
    const uint32_t e = static_cast<uint32_t>(items[i]);
    const uint32_t c = edge_channel(e, V, inv_V, C);
    const int64_t v = int64_t(e) - int64_t(c) * V;
    const uint32_t a = comp.find(static_cast<uint32_t>(v));
    const uint32_t b = comp.find(static_cast<uint32_t>(v + g.delta[c]));
    if (a == b) continue;
    const uint64_t na = comp.labelled(a), nb = comp.labelled(b);
    if (na != 0 && nb != 0 && (mask == nullptr || mask[e])) {
      const uint64_t same = comp.same_label_pairs(a, b);
      const bool first_group = i < n_first;
      const uint64_t pos = (!constrained || first_group) ? same : 0;
      const uint64_t neg = (!constrained || !first_group) ? na * nb - same : 0;
      if (pos != 0 || neg != 0) {
        res.merges.push_back({e, pos, neg});
        res.total_pos += pos;
        res.total_neg += neg;
      }
    }
    comp.unite(a, b);
    --n_components;
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// Op entry points
// ---------------------------------------------------------------------------------------------
struct Inputs {
  at::Tensor pred, seg, gt, mask;  // contiguous; gt / mask bool or undefined
  Geometry g;
  int64_t B = 0;
};

Inputs prepare(const char* op, const at::Tensor& pred, const at::Tensor& seg, const std::optional<at::Tensor>& gt_affs,
               const std::optional<at::Tensor>& mask, at::IntArrayRef nhood) {
  TORCH_CHECK_VALUE(pred.dim() >= 3 && pred.dim() <= 5, op,
                    ": pred_affs must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ", pred.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(pred.scalar_type()), op, ": pred_affs must be floating point, got ",
                   pred.scalar_type());
  TORCH_CHECK_TYPE(at::isIntegralType(seg.scalar_type(), /*includeBool=*/false), op,
                   ": gt_seg must hold integer labels, got ", seg.scalar_type());
  const at::IntArrayRef spatial = pred.sizes().slice(2);
  TORCH_CHECK_VALUE(seg.dim() == pred.dim() - 1 && seg.size(0) == pred.size(0) && seg.sizes().slice(1) == spatial, op,
                    ": gt_seg must be [B, *spatial] matching pred_affs ", pred.sizes(), ", got ", seg.sizes());
  Inputs in;
  in.B = pred.size(0);
  in.g = make_geometry(op, spatial, nhood, pred.size(1));
  TORCH_CHECK_VALUE(in.g.C * in.g.V < (int64_t(1) << 32), op, ": at most 2^32 edges per sample, got ", in.g.C * in.g.V);
  in.pred = pred.contiguous();
  in.seg = seg.to(at::kLong).contiguous();
  if (gt_affs.has_value() && gt_affs->defined()) {
    TORCH_CHECK_VALUE(gt_affs->sizes() == pred.sizes(), op, ": gt_affs must have pred_affs' shape ", pred.sizes(),
                      ", got ", gt_affs->sizes());
    in.gt = at::gt(*gt_affs, 0.5).contiguous();
  }
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK_VALUE(mask->sizes() == pred.sizes(), op, ": mask must have pred_affs' shape ", pred.sizes(), ", got ",
                      mask->sizes());
    in.mask = at::ne(*mask, 0).contiguous();
  }
  return in;
}

// Runs the sweep of every sample in parallel and hands each result to write(b, result).
template <typename Write>
void run_batch(const Inputs& in, bool constrained, Write&& write) {
  const int64_t E = in.g.C * in.g.V;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "malis_weights_cpu", [&] {
    const scalar_t* pred = in.pred.const_data_ptr<scalar_t>();
    const int64_t* seg = in.seg.const_data_ptr<int64_t>();
    const bool* gt = in.gt.defined() ? in.gt.const_data_ptr<bool>() : nullptr;
    const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
    at::parallel_for(0, in.B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        SampleResult r = malis_sample<scalar_t>(in.g, pred + b * E, seg + b * in.g.V, gt ? gt + b * E : nullptr,
                                                mask ? mask + b * E : nullptr, constrained, b);
        write(b, r);
      }
    });
  });
}

}  // namespace

at::Tensor malis_weights_cpu(const at::Tensor& pred, const at::Tensor& seg, const std::optional<at::Tensor>& gt_affs,
                             const std::optional<at::Tensor>& mask, at::IntArrayRef nhood, bool constrained) {
  const Inputs in = prepare("malis_weights", pred, seg, gt_affs, mask, nhood);
  at::Tensor w = at::zeros(pred.sizes(), pred.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  if (w.numel() == 0) return w;
  const int64_t E = in.g.C * in.g.V;
  float* out = w.mutable_data_ptr<float>();
  run_batch(in, constrained, [&](int64_t b, const SampleResult& r) {
    const double sp = r.total_pos ? 1.0 / static_cast<double>(r.total_pos) : 0.0;
    const double sn = r.total_neg ? 1.0 / static_cast<double>(r.total_neg) : 0.0;
    float* ob = out + b * E;
    for (const Merge& m : r.merges) ob[m.edge] = static_cast<float>(double(m.pos) * sp + double(m.neg) * sn);
  });
  return w;
}

std::tuple<at::Tensor, at::Tensor> malis_counts_cpu(const at::Tensor& pred, const at::Tensor& seg,
                                                    const std::optional<at::Tensor>& gt_affs,
                                                    const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                    bool constrained) {
  const Inputs in = prepare("malis_counts", pred, seg, gt_affs, mask, nhood);
  const auto opts = pred.options().dtype(at::kLong).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor pos = at::zeros(pred.sizes(), opts), neg = at::zeros(pred.sizes(), opts);
  if (pos.numel() == 0) return {pos, neg};
  const int64_t E = in.g.C * in.g.V;
  int64_t* op = pos.mutable_data_ptr<int64_t>();
  int64_t* on = neg.mutable_data_ptr<int64_t>();
  run_batch(in, constrained, [&](int64_t b, const SampleResult& r) {
    for (const Merge& m : r.merges) {
      op[b * E + m.edge] = static_cast<int64_t>(m.pos);
      on[b * E + m.edge] = static_cast<int64_t>(m.neg);
    }
  });
  return {pos, neg};
}

at::Tensor connected_components_cpu(const at::Tensor& affs, at::IntArrayRef nhood, double threshold,
                                    bool singleton_background) {
  const char* op = "affgraph_to_seg";
  TORCH_CHECK_VALUE(affs.dim() >= 3 && affs.dim() <= 5, op,
                    ": affs must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ", affs.sizes());
  const Geometry g = make_geometry(op, affs.sizes().slice(2), nhood, affs.size(1));
  TORCH_CHECK_VALUE(g.V < (int64_t(1) << 32), op, ": at most 2^32 voxels per sample, got ", g.V);
  std::vector<int64_t> out_sizes{affs.size(0)};
  for (int64_t d = 2; d < affs.dim(); ++d) out_sizes.push_back(affs.size(d));
  at::Tensor labels = at::zeros(out_sizes, affs.options().dtype(at::kLong));
  if (labels.numel() == 0) return labels;
  const at::Tensor on = at::gt(affs, threshold).contiguous();
  const bool* edges = on.const_data_ptr<bool>();
  int64_t* out = labels.mutable_data_ptr<int64_t>();
  const int64_t V = g.V, E = g.C * V;
  at::parallel_for(0, affs.size(0), 1, [&](int64_t begin, int64_t end) {
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
        for_each_edge(g, c, [&](int64_t v, int64_t u) {
          if (!eb[c * V + v]) return;
          uint32_t ra = find(static_cast<uint32_t>(v)), rb = find(static_cast<uint32_t>(u));
          if (ra == rb) return;
          if (size[ra] < size[rb]) std::swap(ra, rb);
          parent[rb] = ra;
          size[ra] += size[rb];
        });
      }
      // Number components in raster order of their first voxel; size[] of a root becomes its id.
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

}  // namespace malis
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CPU, m) {
  m.impl("malis_weights", &seglosses::malis::malis_weights_cpu);
  m.impl("malis_counts", &seglosses::malis::malis_counts_cpu);
  m.impl("connected_components", &seglosses::malis::connected_components_cpu);
}
