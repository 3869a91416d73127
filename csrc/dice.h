// Host-side helpers shared by the Dice kernels of every backend: argument checks, the strided
// (batch, channel, voxel) views of x, targets, masks and the gradient, and the error messages.
// A tensor whose spatial dims collapse into one stride (contiguous, channels_last, a channel slice
// of a bigger tensor, an expanded batch or channel, ...) is read in place; anything else is made
// contiguous first.
//
// The Python functions (seglosses/_dice.py) check every argument first and name the public
// function; the checks here are the backstop for direct calls of the ops and name the op.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <sstream>
#include <string>
#include <vector>

#include "dice_math.h"

namespace seglosses {
namespace dice {

// Strides of a [B, C, S] view (C = 1 for label maps [B, S]).
struct Layout {
  int64_t B = 0, C = 0, S = 0;
  int64_t sb = 0, sc = 0, sv = 0;
};

// Stride of the flattened dims [first, ndim), or -1 if they do not collapse into one.
inline int64_t collapsed_stride(const at::Tensor& t, int64_t first) {
  int64_t stride = -1, expected = -1;
  for (int64_t d = t.dim() - 1; d >= first; --d) {
    if (t.size(d) == 1) continue;
    if (stride < 0) {
      stride = t.stride(d);
    } else if (t.stride(d) != expected) {
      return -1;
    }
    expected = t.stride(d) * t.size(d);
  }
  return stride < 0 ? 1 : stride;
}

// [B, C, S] view of t = [B, C, *spatial] (has_channel) or [B, *spatial]; t is made contiguous if
// its spatial dims do not collapse.
inline Layout strided_layout(at::Tensor& t, bool has_channel) {
  const int64_t first = has_channel ? 2 : 1;
  if (collapsed_stride(t, first) < 0) t = t.contiguous();
  Layout l;
  l.B = t.size(0);
  l.C = has_channel ? t.size(1) : 1;
  l.S = 1;
  for (int64_t d = first; d < t.dim(); ++d) l.S *= t.size(d);
  l.sb = t.size(0) == 1 ? 0 : t.stride(0);
  l.sc = has_channel && t.size(1) != 1 ? t.stride(1) : 0;
  l.sv = collapsed_stride(t, first);
  return l;
}

inline Elem elem_of(at::ScalarType t) {
  switch (t) {
    case at::kBool: return Elem::kBool;
    case at::kByte: return Elem::kU8;
    case at::kChar: return Elem::kI8;
    case at::kUInt16: return Elem::kU16;
    case at::kShort: return Elem::kI16;
    case at::kUInt32: return Elem::kU32;
    case at::kInt: return Elem::kI32;
    case at::kUInt64: return Elem::kU64;
    case at::kLong: return Elem::kI64;
    case at::kHalf: return Elem::kF16;
    case at::kBFloat16: return Elem::kBF16;
    case at::kFloat: return Elem::kF32;
    case at::kDouble: return Elem::kF64;
    default: TORCH_CHECK(false, "seglosses: unexpected dtype ", t);
  }
}

inline bool is_label_dtype(at::ScalarType t) {
  switch (t) {
    case at::kByte: case at::kChar: case at::kUInt16: case at::kShort: case at::kUInt32:
    case at::kInt: case at::kUInt64: case at::kLong:
      return true;
    default:
      return false;
  }
}

inline bool is_logit_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

inline bool is_target_dtype(at::ScalarType t) { return t == at::kBool || is_label_dtype(t) || is_logit_dtype(t); }

inline bool is_mask_dtype(at::ScalarType t) { return t == at::kBool || is_label_dtype(t) || is_logit_dtype(t); }

// Accumulation dtype of the sums and coefficient tables: float64 for double x, else float32.
inline at::ScalarType acc_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

inline int64_t label_classes(const at::Tensor& x) { return num_classes_from_c(x.size(1)); }

inline void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " must be on x's device (", x.device(), "), got ",
                    t.device());
}

inline void check_logits(const char* op, const at::Tensor& x, int64_t p) {
  TORCH_CHECK_VALUE(x.dim() >= 3 && x.dim() <= 5, op, ": x must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(is_logit_dtype(x.scalar_type()), op, ": x must be float16, bfloat16, float32 or float64, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(p >= 1 && p <= kMaxP, op, ": p must be an integer in [1, ", kMaxP, "], got ", p);
  TORCH_CHECK_VALUE(x.size(1) >= 1, op, ": x must have at least one channel, got shape ", x.sizes());
}

// Label maps: returns y viewed as [B, *spatial].
inline at::Tensor check_label_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, int64_t p) {
  check_logits(op, x, p);
  TORCH_CHECK_TYPE(is_label_dtype(y.scalar_type()), op,
                   ": y must hold integer labels (uint8, int8, int16, int32, int64 or uint16/32/64), got ",
                   y.scalar_type());
  check_device(op, "y", y, x);
  at::Tensor yv = y;
  if (y.dim() == x.dim() && y.size(1) == 1) yv = y.squeeze(1);
  bool ok = yv.dim() == x.dim() - 1 && yv.size(0) == x.size(0);
  for (int64_t d = 1; ok && d < yv.dim(); ++d) ok = yv.size(d) == x.size(d + 1);
  TORCH_CHECK_VALUE(ok, op, ": y must be [B, *spatial] or [B, 1, *spatial] with x's B and spatial dims (x: ",
                    x.sizes(), "), got ", y.sizes());
  return yv;
}

// Multi-label targets of x's shape.
inline void check_sigmoid_inputs(const char* op, const at::Tensor& x, const at::Tensor& t, int64_t p) {
  check_logits(op, x, p);
  TORCH_CHECK_TYPE(is_target_dtype(t.scalar_type()), op,
                   ": t must hold targets in [0, 1] (bool, integer or floating point), got ", t.scalar_type());
  check_device(op, "t", t, x);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": t must have x's shape ", x.sizes(), ", got ", t.sizes());
}

// Expands mask to `shape` (dims of size 1 broadcast); checks its dtype and device.
inline at::Tensor expand_mask(const char* op, const at::Tensor& mask, at::IntArrayRef shape, const at::Tensor& x,
                              const char* expected) {
  TORCH_CHECK_TYPE(is_mask_dtype(mask.scalar_type()), op, ": mask must be bool, integer or floating point, got ",
                   mask.scalar_type());
  check_device(op, "mask", mask, x);
  bool ok = mask.dim() == static_cast<int64_t>(shape.size());
  for (int64_t d = 0; ok && d < mask.dim(); ++d) ok = mask.size(d) == shape[d] || mask.size(d) == 1;
  TORCH_CHECK_VALUE(ok, op, ": mask must be ", expected, " (or broadcastable to it) for x ", x.sizes(), ", got ",
                    mask.sizes());
  return mask.expand(shape);
}

// Mask of a label map, [B, *spatial] or [B, 1, *spatial]: returned as [B, *spatial].
inline at::Tensor check_label_mask(const char* op, const at::Tensor& mask, const at::Tensor& x) {
  at::Tensor m = mask.dim() == x.dim() && mask.size(1) == 1 ? mask.squeeze(1) : mask;
  std::vector<int64_t> shape{x.size(0)};
  for (int64_t d = 2; d < x.dim(); ++d) shape.push_back(x.size(d));
  TORCH_CHECK_VALUE(mask.dim() != x.dim() || mask.size(1) == 1, op,
                    ": mask must be [B, *spatial] or [B, 1, *spatial] for x ", x.sizes(), ", got ", mask.sizes());
  return expand_mask(op, m, shape, x, "[B, *spatial] or [B, 1, *spatial]");
}

// Mask of multi-label targets, [B, C, *spatial] or [B, 1, *spatial]: returned as [B, C, *spatial].
inline at::Tensor check_sigmoid_mask(const char* op, const at::Tensor& mask, const at::Tensor& x) {
  return expand_mask(op, mask, x.sizes(), x, "[B, C, *spatial] or [B, 1, *spatial]");
}

// The checked tensors of a label-map op and their [B, C, S] / [B, S] layouts: y viewed as
// [B, *spatial], the mask (optional; undefined if absent) expanded to it. A tensor whose spatial
// dims do not collapse is made contiguous here; the struct keeps the data alive.
struct LabelTensors {
  at::Tensor x, y, mask;
  Layout lx, ly, lm;
};

inline LabelTensors label_tensors(const char* op, const at::Tensor& x, const at::Tensor& y,
                                  const c10::optional<at::Tensor>& mask, int64_t p) {
  LabelTensors in;
  in.y = check_label_inputs(op, x, y, p);
  in.x = x;
  in.lx = strided_layout(in.x, true);
  in.ly = strided_layout(in.y, false);
  if (mask.has_value()) {
    in.mask = check_label_mask(op, *mask, x);
    in.lm = strided_layout(in.mask, false);
  }
  return in;
}

// The same for a multi-label op: t of x's shape, the mask expanded to [B, C, *spatial].
struct SigmoidTensors {
  at::Tensor x, t, mask;
  Layout lx, lt, lm;
};

inline SigmoidTensors sigmoid_tensors(const char* op, const at::Tensor& x, const at::Tensor& t,
                                      const c10::optional<at::Tensor>& mask, int64_t p) {
  check_sigmoid_inputs(op, x, t, p);
  SigmoidTensors in;
  in.x = x;
  in.t = t;
  in.lx = strided_layout(in.x, true);
  in.lt = strided_layout(in.t, true);
  if (mask.has_value()) {
    in.mask = check_sigmoid_mask(op, *mask, x);
    in.lm = strided_layout(in.mask, true);
  }
  return in;
}

// The gradient of the loss with respect to a [B, rows, K] sums table, in the accumulation dtype
// and contiguous, with row P multiplied by p (dLoss/ds carries the p of d(s^p)/ds).
inline at::Tensor check_grad_sums(const char* op, const at::Tensor& grad, const at::Tensor& x, int64_t rows,
                                  int64_t K, int64_t p) {
  check_device(op, "grad_sums", grad, x);
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad_sums must be floating point, got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == x.size(0) && grad.size(1) == rows && grad.size(2) == K, op,
                    ": grad_sums must be [B, ", rows, ", K] = [", x.size(0), ", ", rows, ", ", K, "], got ",
                    grad.sizes());
  at::Tensor coef = grad.to(acc_dtype(x)).contiguous().clone();
  coef.select(1, 1).mul_(static_cast<double>(p));
  return coef;
}

// Gradient buffer with x's memory format where that format is a collapsible layout.
inline at::Tensor empty_grad(const at::Tensor& x) {
  at::Tensor g = at::empty_like(x, at::MemoryFormat::Preserve);
  if (collapsed_stride(g, 2) < 0) g = at::empty_like(x, at::MemoryFormat::Contiguous);
  return g;
}

// Value of one element of a (CPU) tensor as text, exact for every integer and float dtype.
inline std::string element_text(const at::Tensor& one) {
  const at::Tensor e = one.cpu();
  switch (e.scalar_type()) {
    case at::kUInt16: return std::to_string(e.const_data_ptr<uint16_t>()[0]);
    case at::kUInt32: return std::to_string(e.const_data_ptr<uint32_t>()[0]);
    case at::kUInt64: return std::to_string(e.const_data_ptr<uint64_t>()[0]);
    case at::kBool: return e.item<bool>() ? "True" : "False";
    default: break;
  }
  if (at::isFloatingType(e.scalar_type())) {
    std::ostringstream os;
    os << e.item<double>();
    return os.str();
  }
  return std::to_string(e.item<int64_t>());
}

// The label at flat index (b * S + v) of y [B, *spatial], for the bad-label message.
inline std::string bad_label_message(const std::string& api, const at::Tensor& y, int64_t index, int64_t K,
                                     int64_t ignore_label) {
  const int64_t S = y.size(0) == 0 ? 1 : y.numel() / y.size(0);
  const std::string label = element_text(y.select(0, index / S).reshape({-1}).select(0, index % S));
  return api + ": y contains label " + label + " outside [0, " + std::to_string(K) +
         ") (ignore_label=" + std::to_string(ignore_label) + ")";
}

// The target at flat index ((b * C + c) * S + v) of t [B, C, *spatial].
inline std::string bad_target_message(const std::string& api, const at::Tensor& t, int64_t index) {
  const int64_t S = t.numel() / (t.size(0) * t.size(1));
  const int64_t row = index / S;
  const std::string value =
      element_text(t.select(0, row / t.size(1)).select(0, row % t.size(1)).reshape({-1}).select(0, index % S));
  return api + ": y contains target " + value + " outside [0, 1] (multi-label targets are probabilities)";
}

}  // namespace dice
}  // namespace seglosses
