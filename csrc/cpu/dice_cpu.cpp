// CPU backend of the Dice-family ops (schemas in csrc/seglosses.cpp): checks, layouts, threads.
//
// dice_sums / dice_sigmoid_sums: one pass over logits and targets; per (sample, class) sums. The
// voxels are cut into fixed chunks (independent of the thread count) that at::parallel_for
// distributes; each chunk accumulates its own partial sums (csrc/cpu/dice_*_kernels.cpp) and the
// partials are combined in chunk order, in double (the returned tables are float64), so the result is bitwise identical for any
// number of threads. dice_backward / dice_sigmoid_backward: one elementwise pass from the
// gradient of the loss with respect to the sums.
//
// Label validation is free here (the kernels classify every label anyway): with validate, the
// first bad label (in sample, voxel order) raises an error that names it; without, bad labels
// count nowhere, exactly as on CUDA.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "dice.h"
#include "dice_kernels.h"

namespace seglosses {
namespace dice {
namespace {

cpu::View view_of(const at::Tensor& t, const Layout& l) {
  cpu::View v;
  v.data = t.const_data_ptr();
  v.elem = elem_of(t.scalar_type());
  v.sb = l.sb, v.sc = l.sc, v.sv = l.sv;
  return v;
}

cpu::OutView out_view_of(at::Tensor& t, const Layout& l) {
  cpu::OutView v;
  v.data = t.mutable_data_ptr();
  v.elem = elem_of(t.scalar_type());
  v.sb = l.sb, v.sc = l.sc, v.sv = l.sv;
  return v;
}

void check_cpu(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be on the device of the other tensors (cpu), got ", x.device());
}

// The kernel arguments of a label-map op; `tensors` keeps the data alive.
struct LabelInputs {
  LabelTensors tensors;
  cpu::LabelArgs args;
};

LabelInputs label_inputs(const char* op, const at::Tensor& x, const at::Tensor& y,
                         const c10::optional<at::Tensor>& mask, int64_t ignore_label, int64_t p) {
  check_cpu(op, x);
  LabelInputs in{label_tensors(op, x, y, mask, p), {}};
  const LabelTensors& t = in.tensors;
  cpu::LabelArgs& a = in.args;
  a.x = view_of(t.x, t.lx);
  a.y = view_of(t.y, t.ly);
  if (t.mask.defined()) a.mask = view_of(t.mask, t.lm);
  a.B = t.lx.B, a.C = t.lx.C, a.K = num_classes_from_c(t.lx.C), a.S = t.lx.S;
  a.ignore_label = ignore_label;
  a.p = static_cast<int>(p);
  return in;
}

struct SigmoidInputs {
  SigmoidTensors tensors;
  cpu::SigmoidArgs args;
};

SigmoidInputs sigmoid_inputs(const char* op, const at::Tensor& x, const at::Tensor& t_in,
                             const c10::optional<at::Tensor>& mask, int64_t p) {
  check_cpu(op, x);
  SigmoidInputs in{sigmoid_tensors(op, x, t_in, mask, p), {}};
  const SigmoidTensors& t = in.tensors;
  cpu::SigmoidArgs& a = in.args;
  a.x = view_of(t.x, t.lx);
  a.t = view_of(t.t, t.lt);
  if (t.mask.defined()) a.mask = view_of(t.mask, t.lm);
  a.B = t.lx.B, a.C = t.lx.C, a.S = t.lx.S;
  a.p = static_cast<int>(p);
  return in;
}

// Tasks per thread at least: small inputs run on the calling thread (waking the pool costs more
// than the work; the result does not depend on it).
int64_t grain(int64_t elements_per_task) {
  constexpr int64_t kMinElementsPerThread = int64_t(1) << 16;
  return std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(elements_per_task, 1));
}

// Runs tasks(begin, end, partials, firsts) for the tasks of every thread's range (partials:
// [ntask, width] in acc_t, zeroed; firsts: the first bad element of each task), then adds the
// partials task by task, in double, into row out_row(task) of out ([*, width]). Returns the first
// bad element in task order.
template <typename acc_t, typename Tasks, typename OutRow>
int64_t run_sums(int64_t ntask, int64_t width, int64_t grain_size, Tasks&& tasks, OutRow&& out_row, double* out) {
  std::vector<acc_t> partial(static_cast<size_t>(ntask * width), acc_t(0));
  std::vector<int64_t> bad(static_cast<size_t>(ntask), cpu::kNoBad);
  at::parallel_for(0, ntask, grain_size,
                   [&](int64_t begin, int64_t end) { tasks(begin, end, partial.data(), bad.data()); });
  for (int64_t task = 0; task < ntask; ++task) {
    double* o = out + out_row(task) * width;
    const acc_t* pt = partial.data() + task * width;
    for (int64_t j = 0; j < width; ++j) o[j] += static_cast<double>(pt[j]);
  }
  for (int64_t task = 0; task < ntask; ++task) {
    if (bad[task] != cpu::kNoBad) return bad[task];
  }
  return cpu::kNoBad;
}

template <typename acc_t>
int64_t label_sums(const cpu::LabelArgs& a, double* out /* [B, 4, K] */) {
  const int64_t nchunk = cpu::num_chunks(a.S), width = kLabelRows * a.K;
  return run_sums<acc_t>(
      a.B * nchunk, width, grain(std::min(a.S, cpu::kChunk) * a.C),
      [&](int64_t begin, int64_t end, acc_t* partial, int64_t* bad) {
        cpu::LabelTile<acc_t> tile(a.C);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / nchunk, v0 = (task % nchunk) * cpu::kChunk;
          cpu::label_sums_chunk<acc_t>(a, tile, b, v0, std::min(a.S, v0 + cpu::kChunk), partial + task * width,
                                       bad[task]);
        }
      },
      [&](int64_t task) { return task / nchunk; }, out);
}

at::Tensor dice_sums_cpu(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                         int64_t ignore_label, int64_t p, bool with_ce, bool validate, c10::string_view api) {
  LabelInputs in = label_inputs("dice_sums", x, y, mask, ignore_label, p);
  cpu::LabelArgs& a = in.args;
  a.with_ce = with_ce;
  at::Tensor out64 = at::zeros({a.B, kLabelRows, a.K}, x.options().dtype(at::kDouble));
  if (a.B > 0 && a.S > 0) {
    const int64_t bad = x.scalar_type() == at::kDouble ? label_sums<double>(a, out64.mutable_data_ptr<double>())
                                                       : label_sums<float>(a, out64.mutable_data_ptr<double>());
    TORCH_CHECK_VALUE(!validate || bad == cpu::kNoBad,
                      bad_label_message(std::string(api), in.tensors.y, bad, a.K, ignore_label));
  }
  return out64;
}

at::Tensor dice_backward_cpu(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                             const at::Tensor& grad_sums, int64_t ignore_label, int64_t p) {
  LabelInputs in = label_inputs("dice_backward", x, y, mask, ignore_label, p);
  const cpu::LabelArgs& a = in.args;
  const at::Tensor coef = check_grad_sums("dice_backward", grad_sums, x, kLabelRows, a.K, p);
  at::Tensor g = empty_grad(x);
  const cpu::OutView gv = out_view_of(g, strided_layout(g, true));
  if (a.B == 0 || a.S == 0) return g.zero_();
  const int64_t nchunk = cpu::num_chunks(a.S);
  auto run = [&](auto zero) {
    using acc_t = decltype(zero);
    const acc_t* c = coef.const_data_ptr<acc_t>();
    const int64_t grain_size = grain(std::min(a.S, cpu::kChunk) * a.C);
    at::parallel_for(0, a.B * nchunk, grain_size, [&](int64_t begin, int64_t end) {
      cpu::LabelTile<acc_t> tile(a.C);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / nchunk, v0 = (task % nchunk) * cpu::kChunk;
        cpu::label_backward_chunk<acc_t>(a, tile, b, v0, std::min(a.S, v0 + cpu::kChunk), c, gv);
      }
    });
  };
  if (x.scalar_type() == at::kDouble) {
    run(0.0);
  } else {
    run(0.0f);
  }
  return g;
}

template <typename acc_t>
int64_t sigmoid_sums(const cpu::SigmoidArgs& a, double* out /* [B, C, 6] */) {
  const int64_t nchunk = cpu::num_chunks(a.S), width = kSigmoidRows;
  return run_sums<acc_t>(
      a.B * a.C * nchunk, width, grain(std::min(a.S, cpu::kChunk)),
      [&](int64_t begin, int64_t end, acc_t* partial, int64_t* bad) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t row = task / nchunk, v0 = (task % nchunk) * cpu::kChunk;
          cpu::sigmoid_sums_chunk<acc_t>(a, row / a.C, row % a.C, v0, std::min(a.S, v0 + cpu::kChunk),
                                         partial + task * width, bad[task]);
        }
      },
      [&](int64_t task) { return task / nchunk; }, out);
}

at::Tensor dice_sigmoid_sums_cpu(const at::Tensor& x, const at::Tensor& t, const c10::optional<at::Tensor>& mask,
                                 int64_t p, bool with_ce, bool validate, c10::string_view api) {
  SigmoidInputs in = sigmoid_inputs("dice_sigmoid_sums", x, t, mask, p);
  cpu::SigmoidArgs& a = in.args;
  a.with_ce = with_ce;
  at::Tensor out = at::zeros({a.B, kSigmoidRows, a.C}, x.options().dtype(at::kDouble));
  at::Tensor rows64 = at::zeros({a.B, a.C, kSigmoidRows}, x.options().dtype(at::kDouble));
  if (a.B > 0 && a.C > 0 && a.S > 0) {
    const int64_t bad = x.scalar_type() == at::kDouble ? sigmoid_sums<double>(a, rows64.mutable_data_ptr<double>())
                                                       : sigmoid_sums<float>(a, rows64.mutable_data_ptr<double>());
    TORCH_CHECK_VALUE(!validate || bad == cpu::kNoBad, bad_target_message(std::string(api), in.tensors.t, bad));
  }
  return out.copy_(rows64.transpose(1, 2));
}

at::Tensor dice_sigmoid_backward_cpu(const at::Tensor& x, const at::Tensor& t, const c10::optional<at::Tensor>& mask,
                                     const at::Tensor& grad_sums, int64_t p) {
  SigmoidInputs in = sigmoid_inputs("dice_sigmoid_backward", x, t, mask, p);
  const cpu::SigmoidArgs& a = in.args;
  const at::Tensor coef = check_grad_sums("dice_sigmoid_backward", grad_sums, x, kSigmoidRows, a.C, p);
  at::Tensor g = empty_grad(x);
  const cpu::OutView gv = out_view_of(g, strided_layout(g, true));
  if (a.B == 0 || a.C == 0 || a.S == 0) return g.zero_();
  const int64_t nchunk = cpu::num_chunks(a.S);
  auto run = [&](auto zero) {
    using acc_t = decltype(zero);
    const acc_t* c = coef.const_data_ptr<acc_t>();
    at::parallel_for(0, a.B * a.C * nchunk, grain(std::min(a.S, cpu::kChunk)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = task / nchunk, v0 = (task % nchunk) * cpu::kChunk;
        cpu::sigmoid_backward_chunk<acc_t>(a, row / a.C, row % a.C, v0, std::min(a.S, v0 + cpu::kChunk), c, gv);
      }
    });
  };
  if (x.scalar_type() == at::kDouble) {
    run(0.0);
  } else {
    run(0.0f);
  }
  return g;
}

}  // namespace
}  // namespace dice
}  // namespace seglosses

TORCH_LIBRARY_IMPL(seglosses, CPU, m) {
  m.impl("dice_sums", &seglosses::dice::dice_sums_cpu);
  m.impl("dice_backward", &seglosses::dice::dice_backward_cpu);
  m.impl("dice_sigmoid_sums", &seglosses::dice::dice_sigmoid_sums_cpu);
  m.impl("dice_sigmoid_backward", &seglosses::dice::dice_sigmoid_backward_cpu);
}
