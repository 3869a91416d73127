// MALIS weights (Turaga et al. 2009; constrained form of Funke et al. 2018) on the CPU: the op
// entry points, their input checks, and the per-sample driver. Each stage is a file of
// csrc/cpu/malis/; the inner loops that have one variant per instruction set come from one kernel
// table, chosen once per call (malis/kernels.h).
//
// A sample is one or two passes (malis/passes.h: two with a mask under PyTorch Connectomics' rule),
// each a Kruskal sweep over its edges in the order: first group by predicted affinity descending,
// then second group likewise, ties by flat edge index. A sample runs on one thread or, when the
// batch has fewer samples than threads, on several: it is cut into slabs of rows (malis/slabs.h)
// that the stages before the sort handle in parallel. A pass is:
//   1. flags         which group each edge is in, and whether its count is kept (malis/flags.h);
//   2. cycle filter  the last edge of every 4-cycle can never merge and is left out
//                    (malis/cycle_filter.h; ~47 % of the edges with random affinities);
//   3. emission      sort items (key << 32 | edge) of the rest, in index order; first-group items
//                    into label parts when the group splits by label (malis/emission.h);
//   4. sort          stable radix sort by key (malis/radix_sort.h), part by part;
//   5. sweep         union-find with label data; each merge records the pairs it counts
//                    (malis/sweep.h; branch-free within single-label parts). The parts are tasks
//                    on the sample's threads; one too big for a thread is swept slab by slab and
//                    finished by a global pass (malis/parts.h, malis/split.h).
// Then 6. write: normalised weights or exact counts (malis/write.h). Counts are exact (uint64), and
// the same for any number of threads or slabs.
// Per-operator headers instead of ATen/ATen.h: a fraction of the compile time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/_unique.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "connected_components.h"
#include "malis.h"
#include "malis/components.h"
#include "malis/cycle_filter.h"
#include "malis/emission.h"
#include "malis/finite.h"
#include "malis/flags.h"
#include "malis/geometry.h"
#include "malis/kernels.h"
#include "malis/parts.h"
#include "malis/passes.h"
#include "malis/radix_sort.h"
#include "malis/slabs.h"
#include "malis/sweep.h"
#include "malis/tasks.h"
#include "malis/tuning.h"
#include "malis/workspace.h"
#include "malis/write.h"

namespace seglosses {
namespace malis {
namespace {

// What every sample of a call shares.
struct Call {
  std::string fn, pred_arg, seg_arg;
  Geometry g;
  std::vector<SquarePair> pairs;  // the cycle filter's channel pairs
  SquareReach reach;              // how far their squares reach across rows
  int64_t n_valid = 0;            // valid edges per sample
  bool constrained = true;
  Plan plan;
  int64_t num_threads = 1;
};

template <typename scalar_t>
struct Sample {
  const scalar_t* pred;  // [C, *spatial]
  const int32_t* seg;    // [*spatial]
  const bool* gt;        // [C, *spatial] or nullptr (from seg)
  const bool* mask;      // [C, *spatial] or nullptr (no mask)
  int64_t index;         // in the batch, for error messages
};

// 4 + 5 of a first group that does not split by label: one sort and one sweep with label data.
void sweep_one_part(const Rooms& rooms, uint64_t* first, uint64_t* scratch, Components& comp, const SweepState& st,
                    Count count, int64_t& n_components, MergeArena& arena, Workspace& ws, SampleResult& res) {
  const int64_t n = rooms.part_items(0);
  rooms.part_segments(0, first, ws.segs);
  const uint64_t* sorted = sort_segments(ws.segs, n, first + rooms.part_begin(0), scratch, tuning().sort, ws.msd);
  const bool both = count == Count::kBoth;
  Records rec = arena.take((both ? 2 : 1) * std::min(n, st.g.V) + 1);
  n_components = sweep(comp, st, sorted, n, count, rec, n_components);
  res.records.push_back(rec);
}

template <typename scalar_t>
void malis_sample(const Call& call, const Kernels<scalar_t>& k, const Sample<scalar_t>& s, int threads,
                  SampleResult& res) {
  const Geometry& g = call.g;
  const int64_t V = g.V, C = g.C;
  const char* fn = call.fn.c_str();
  const int shift = payload_shift(V);
  const Tuning tune = tuning();
  const Slabs slabs = make_slabs(g, static_cast<int>(tune.slabs > 0 ? tune.slabs : threads));
  const int S = slabs.n;
  Workspace& ws = workspace();
  uint8_t* flags = ws.flags.get(C * V, fn);
  Node* nodes = ws.nodes.get(V, fn);
  LabelInfo* info = ws.info.get(V, fn);
  MergeArena arena(ws.merges, fn);
  auto each_slab = [&](auto&& f) { run_tasks(threads, S, [&](int64_t i) { f(static_cast<int>(i)); }); };

  for (int p = 0; p < call.plan.n_passes; ++p) {
    const Pass& pass = call.plan.pass[p];
    // 1. flags
    std::vector<FlagSummary> fs(S);
    each_slab([&](int i) {
      fs[i] = compute_flags(g, pass, call.constrained, s.seg, s.gt, s.mask, k.flag_row, flags, slabs.row[i],
                            slabs.row[i + 1]);
    });
    const bool one_part = !single_label(call.constrained, fs);
    // 2. cycle filter: the squares inside each slab in parallel, those across slabs after
    each_slab([&](int i) {
      k.drop_cycle_maxima(g, call.pairs, s.pred, flags, slabs.row[i] + call.reach.below,
                          slabs.row[i + 1] - call.reach.above);
    });
    for (int i = 0; i < S; ++i) {
      const int64_t r0 = slabs.row[i], r1 = slabs.row[i + 1];
      const int64_t inner0 = std::min(r1, r0 + call.reach.below), inner1 = std::max(inner0, r1 - call.reach.above);
      k.drop_cycle_maxima(g, call.pairs, s.pred, flags, r0, inner0);
      k.drop_cycle_maxima(g, call.pairs, s.pred, flags, inner1, r1);
    }
    // 3. emission, into rooms sized from the voxel counts of the label parts
    std::vector<int64_t> part_voxels(static_cast<size_t>(S) * kParts, 0);
    each_slab([&](int i) {
      if (slabs.voxel[i + 1] > slabs.voxel[i]) {
        k.init_components(slabs.voxel[i], slabs.voxel[i + 1], s.seg, nodes, info, &part_voxels[i * kParts]);
      }
    });
    Rooms rooms(g, slabs, part_voxels, one_part);
    uint64_t* first = ws.first.get(rooms.first_slots(), fn);
    uint64_t* second = ws.second.get(rooms.second_slots(), fn);
    std::vector<char> maybe_nonfinite(S, 0);
    each_slab([&](int i) {
      for (int64_t c = 0; c < C; ++c) {
        rooms.begin_second(c, i);
        Emission out{first, rooms.fills(c, i), second + rooms.second_start(c, i), 0};
        maybe_nonfinite[i] |= k.emit_items(g, c, slabs.row[i], slabs.row[i + 1], s.pred, flags, s.seg, one_part,
                                           shift, out);
        rooms.second_fill(c, i) = out.n_second;
      }
    });
    if (p == 0) {
      const bool any = std::find(maybe_nonfinite.begin(), maybe_nonfinite.end(), 1) != maybe_nonfinite.end();
      check_finite_predictions(g, s.pred, any, s.index, fn, call.pred_arg.c_str());
    }
    // 4 + 5. sort and sweep: the first group, then the second
    const SweepState st{g, shift, static_cast<uint32_t>((uint64_t(1) << shift) - 1),
                        call.plan.counted_only ? flags : nullptr};
    // With one slab the second group's items are contiguous and the rest of their buffer is free.
    uint64_t* free_second = S == 1 ? second + rooms.second_free(0) : nullptr;
    const int64_t free_items = S == 1 ? rooms.second_slots() - rooms.second_free(0) : 0;
    Components comp(nodes, info);
    int64_t n_components = V;
    if (!one_part) {
      // The parts share the free tail as sort scratch only when they run one after the other (a
      // one-row sample gets one slab yet may still sweep its parts on several threads).
      const bool parts_in_turn = threads == 1;
      const LabelParts parts{rooms,   first, part_voxels, slabs, threads, parts_in_turn ? free_second : nullptr,
                             parts_in_turn ? free_items : 0};
      const size_t before = res.records.size();
      sweep_label_parts(parts, nodes, st, pass.first, arena, ws, fn, res.records);
      for (size_t i = before; i < res.records.size(); ++i) n_components -= res.records[i].joined;
      if (pass.second != Count::kNothing) {
        each_slab([&](int i) { comp.restore_single_label_info(slabs.voxel[i], slabs.voxel[i + 1], s.seg); });
      }
    } else {
      uint64_t* scratch = free_second != nullptr && free_items >= rooms.part_items(0) ? free_second
                                                                                      : ws.task_b.get(rooms.part_items(0), fn);
      sweep_one_part(rooms, first, scratch, comp, st, pass.first, n_components, arena, ws, res);
    }
    if (pass.second != Count::kNothing) {
      const int64_t n = rooms.second_items();
      rooms.second_segments(second, ws.segs);
      const uint64_t* sorted = sort_segments(ws.segs, n, second, first, tune.sort, ws.msd);
      Records rec = arena.take(std::min(n, V) + 1);
      sweep(comp, st, sorted, n, pass.second, rec, n_components);
      res.records.push_back(rec);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------
struct Inputs {
  at::Tensor pred, seg, gt, mask;  // contiguous; seg int32 or int64 (dense_labels); gt / mask bool or undefined
  int64_t B = 0;
};

// Labels whose values fit in int32, with the same equalities and the same zeros: int64 labels as
// they are when their values fit (int32_labels narrows them per sample into scratch), other
// integer types as int32, and labels above the int32 range as their rank among the distinct labels.
at::Tensor dense_labels(const Call& call, const at::Tensor& seg) {
  if (seg.numel() == 0) return seg.to(at::kInt).contiguous();
  const auto range = at::aminmax(seg);
  const int64_t lo = std::get<0>(range).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0, call.fn, ": ", call.seg_arg, " labels must be >= 0, got ", lo);
  if (std::get<1>(range).item<int64_t>() <= std::numeric_limits<int32_t>::max()) {
    return seg.scalar_type() == at::kLong ? seg.contiguous() : seg.to(at::kInt).contiguous();
  }
  const at::Tensor s = seg.to(at::kLong);
  const at::Tensor inverse = std::get<1>(at::_unique(s.flatten(), /*sorted=*/true, /*return_inverse=*/true));
  return inverse.add(lo == 0 ? 0 : 1).to(at::kInt).view(s.sizes()).contiguous();
}

Call make_call(const at::Tensor& pred, at::IntArrayRef nhood, bool constrained, bool constrain_masked, bool has_mask,
               int64_t num_threads, c10::string_view fn, c10::string_view pred_arg, c10::string_view seg_arg) {
  Call call;
  call.fn = std::string(fn);
  call.pred_arg = std::string(pred_arg);
  call.seg_arg = std::string(seg_arg);
  const char* f = call.fn.c_str();
  TORCH_CHECK_VALUE(pred.dim() >= 3 && pred.dim() <= 5, f, ": ", call.pred_arg,
                    " must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ", pred.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(pred.scalar_type()), f, ": ", call.pred_arg, " must be floating point, got ",
                   pred.scalar_type());
  TORCH_CHECK_VALUE(num_threads >= 0, f, ": num_threads must be >= 1 (or 0: torch's), got ", num_threads);
  call.g = make_geometry(f, pred.sizes().slice(2), nhood, pred.size(1));
  const Geometry& g = call.g;
  TORCH_CHECK_VALUE(g.V <= (int64_t(1) << 31), f, ": at most 2^31 voxels per sample, got ", g.V);
  TORCH_CHECK_VALUE(g.C <= (int64_t(1) << (32 - payload_shift(g.V))), f, ": ", g.C, " channels of ", g.V,
                    " voxels are too many edges per sample");
  call.pairs = square_pairs(g);
  call.reach = square_reach(g, call.pairs);
  for (int64_t c = 0; c < g.C; ++c) call.n_valid += valid_edges(g, c);
  call.constrained = constrained;
  call.plan = plan_passes(constrained, has_mask, constrain_masked);
  call.num_threads = num_threads == 0 ? at::get_num_threads() : num_threads;
  return call;
}

Inputs prepare(const Call& call, const at::Tensor& pred, const std::optional<at::Tensor>& seg,
               const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask,
               at::IntArrayRef nhood) {
  const char* f = call.fn.c_str();
  Inputs in;
  in.B = pred.size(0);
  in.pred = pred.contiguous();
  if (gt_affs.has_value() && gt_affs->defined()) {
    TORCH_CHECK_VALUE(gt_affs->sizes() == pred.sizes(), f, ": gt_affs must have ", call.pred_arg, "' shape ",
                      pred.sizes(), ", got ", gt_affs->sizes());
    in.gt = at::gt(*gt_affs, 0.5).contiguous();
  }
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK_VALUE(mask->sizes() == pred.sizes(), f, ": mask must have ", call.pred_arg, "' shape ", pred.sizes(),
                      ", got ", mask->sizes());
    in.mask = at::ne(*mask, 0).contiguous();
  }
  if (!seg.has_value() || !seg->defined()) {
    // MalisLoss without gt_seg: the components of the GT graph, singleton voxels as background;
    // int64 labels below 2^30 (at most V / 2 components of two voxels or more).
    TORCH_CHECK_VALUE(in.gt.defined(), f, ": without ", call.seg_arg,
                      " the labels are the connected components of gt_affs, so gt_affs must be given");
    in.seg = connected_components_host(in.gt, nhood, 0.5, /*singleton_background=*/true, call.num_threads, call.fn,
                                       /*pin_result=*/false);
    return in;
  }
  TORCH_CHECK_TYPE(at::isIntegralType(seg->scalar_type(), /*includeBool=*/false), f, ": ", call.seg_arg,
                   " must hold integer labels, got ", seg->scalar_type());
  const at::IntArrayRef spatial = pred.sizes().slice(2);
  TORCH_CHECK_VALUE(seg->dim() == pred.dim() - 1 && seg->size(0) == pred.size(0) && seg->sizes().slice(1) == spatial,
                    f, ": ", call.seg_arg, " must be [B, *spatial] matching ", call.pred_arg, " ", pred.sizes(),
                    ", got ", seg->sizes());
  in.seg = dense_labels(call, *seg);
  return in;
}

// Runs every sample on at most call.num_threads threads (of torch's intra-op pool) and hands each
// result to write(b, result, threads): with at least as many samples as threads, one sample per
// thread; with fewer, the samples one after the other, each on every thread.
template <typename Write>
void run_batch(const Call& call, const Inputs& in, Write&& write) {
  const WorkspaceInUse in_use;
  const int64_t V = call.g.V, E = call.g.C * V;
  const int threads = static_cast<int>(call.num_threads);
  const bool per_sample = in.B < threads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "malis_weights_cpu", [&] {
    const Kernels<scalar_t> k = kernels_for<scalar_t>(current_isa());
    const scalar_t* pred = in.pred.const_data_ptr<scalar_t>();
    const bool* gt = in.gt.defined() ? in.gt.const_data_ptr<bool>() : nullptr;
    const bool* mask = in.mask.defined() ? in.mask.const_data_ptr<bool>() : nullptr;
    auto run = [&](const auto* seg) {
      auto one = [&](int64_t b, int sample_threads) {
        const Sample<scalar_t> s{pred + b * E, int32_labels(seg + b * V, V, call.fn.c_str(), sample_threads),
                                 gt ? gt + b * E : nullptr, mask ? mask + b * E : nullptr, b};
        SampleResult res;
        malis_sample(call, k, s, sample_threads, res);
        write(b, res, sample_threads);
      };
      if (per_sample) {
        for (int64_t b = 0; b < in.B; ++b) one(b, threads);
      } else {
        run_tasks(threads, in.B, [&](int64_t b) { one(b, 1); });
      }
    };
    if (in.seg.scalar_type() == at::kLong) {
      run(in.seg.const_data_ptr<int64_t>());
    } else {
      run(in.seg.const_data_ptr<int32_t>());
    }
  });
}

}  // namespace

at::Tensor malis_weights_host(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                              const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask,
                              at::IntArrayRef nhood, bool constrained, bool constrain_masked, int64_t num_threads,
                              c10::string_view fn, c10::string_view pred_arg, c10::string_view seg_arg,
                              bool pin_result) {
  const bool has_mask = mask.has_value() && mask->defined();
  const Call call = make_call(pred, nhood, constrained, constrain_masked, has_mask, num_threads, fn, pred_arg, seg_arg);
  const Inputs in = prepare(call, pred, seg, gt_affs, mask, nhood);
  at::Tensor w = at::zeros(pred.sizes(), pred.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous)
                                             .pinned_memory(pin_result));
  if (w.numel() == 0) return w;
  const int64_t E = call.g.C * call.g.V;
  float* out = w.mutable_data_ptr<float>();
  run_batch(call, in, [&](int64_t b, const SampleResult& r, int threads) { write_weights(r, out + b * E, threads); });
  return w;
}

std::tuple<at::Tensor, at::Tensor> malis_counts_host(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                                                     const std::optional<at::Tensor>& gt_affs,
                                                     const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                     bool constrained, bool constrain_masked, int64_t num_threads,
                                                     c10::string_view fn, c10::string_view pred_arg,
                                                     c10::string_view seg_arg, bool pin_result) {
  const bool has_mask = mask.has_value() && mask->defined();
  const Call call = make_call(pred, nhood, constrained, constrain_masked, has_mask, num_threads, fn, pred_arg, seg_arg);
  const Inputs in = prepare(call, pred, seg, gt_affs, mask, nhood);
  const auto opts =
      pred.options().dtype(at::kLong).memory_format(at::MemoryFormat::Contiguous).pinned_memory(pin_result);
  at::Tensor pos = at::zeros(pred.sizes(), opts), neg = at::zeros(pred.sizes(), opts);
  if (pos.numel() == 0) return {pos, neg};
  const int64_t E = call.g.C * call.g.V;
  int64_t* op = pos.mutable_data_ptr<int64_t>();
  int64_t* on = neg.mutable_data_ptr<int64_t>();
  run_batch(call, in,
            [&](int64_t b, const SampleResult& r, int threads) { write_counts(r, op + b * E, on + b * E, threads); });
  return {pos, neg};
}

int64_t release_malis_workspace() { return release_all_workspaces(); }

std::vector<std::string> malis_isas() { return available_isas(); }

std::string malis_isa() { return isa_name(current_isa()); }

std::string malis_set_isa(c10::string_view isa) { return set_kernel_isa(std::string(isa)); }

int64_t malis_set_tuning(c10::string_view name, int64_t value) { return set_tuning(std::string(name), value); }

namespace {

// The op entries of the CPU backend.
at::Tensor malis_weights_cpu(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                             const std::optional<at::Tensor>& gt_affs, const std::optional<at::Tensor>& mask,
                             at::IntArrayRef nhood, bool constrained, bool constrain_masked, int64_t num_threads,
                             c10::string_view fn, c10::string_view pred_arg, c10::string_view seg_arg) {
  return malis_weights_host(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                            seg_arg, /*pin_result=*/false);
}

std::tuple<at::Tensor, at::Tensor> malis_counts_cpu(const at::Tensor& pred, const std::optional<at::Tensor>& seg,
                                                    const std::optional<at::Tensor>& gt_affs,
                                                    const std::optional<at::Tensor>& mask, at::IntArrayRef nhood,
                                                    bool constrained, bool constrain_masked, int64_t num_threads,
                                                    c10::string_view fn, c10::string_view pred_arg,
                                                    c10::string_view seg_arg) {
  return malis_counts_host(pred, seg, gt_affs, mask, nhood, constrained, constrain_masked, num_threads, fn, pred_arg,
                           seg_arg, /*pin_result=*/false);
}

}  // namespace
}  // namespace malis
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CPU, m) {
  m.impl("malis_weights", &seglosses::malis::malis_weights_cpu);
  m.impl("malis_counts", &seglosses::malis::malis_counts_cpu);
}
