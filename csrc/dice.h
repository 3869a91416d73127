// Host-side helpers shared by the Dice kernels of every backend: argument checks and the
// strided (batch, channel, voxel) view of x, y and the gradient. A tensor whose spatial dims
// collapse into one stride (contiguous, channels_last, a channel slice of a bigger tensor, ...)
// is read in place; anything else is made contiguous first.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "dice_math.h"

namespace seglosses {
namespace dice {

// Strides of a [B, C, S] (or [B, S] for labels) view.
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

inline int64_t num_classes(const at::Tensor& x) { return num_classes_from_c(x.size(1)); }

// Checks shared by dice_sums and dice_backward. Returns y viewed as [B, *spatial].
inline at::Tensor check_inputs(const char* op, const at::Tensor& x, const at::Tensor& y, int64_t p) {
  TORCH_CHECK_VALUE(x.dim() >= 3 && x.dim() <= 5, op, ": x must be [B, C, *spatial] with 1 to 3 spatial dims, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK_TYPE(at::isIntegralType(y.scalar_type(), /*includeBool=*/false), op,
                   ": y must hold integer labels (uint8, int16, int32 or int64), got ", y.scalar_type());
  TORCH_CHECK_VALUE(p >= 1, op, ": p must be an integer >= 1, got ", p);
  TORCH_CHECK_VALUE(x.size(1) >= 1, op, ": x must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK_VALUE(y.device() == x.device(), op, ": y must be on x's device (", x.device(), "), got ", y.device());
  at::Tensor yv = y;
  if (y.dim() == x.dim() && y.size(1) == 1) yv = y.squeeze(1);
  bool ok = yv.dim() == x.dim() - 1 && yv.size(0) == x.size(0);
  for (int64_t d = 1; ok && d < yv.dim(); ++d) ok = yv.size(d) == x.size(d + 1);
  TORCH_CHECK_VALUE(ok, op, ": y must be [B, *spatial] or [B, 1, *spatial] matching x ", x.sizes(), ", got ", y.sizes());
  return yv;
}

// [B, C, S] view of x (made contiguous if its spatial dims do not collapse).
inline Layout x_layout(at::Tensor& x) {
  if (collapsed_stride(x, 2) < 0) x = x.contiguous();
  Layout l;
  l.B = x.size(0);
  l.C = x.size(1);
  l.S = 1;
  for (int64_t d = 2; d < x.dim(); ++d) l.S *= x.size(d);
  l.sb = x.stride(0);
  l.sc = x.stride(1);
  l.sv = collapsed_stride(x, 2);
  return l;
}

// [B, S] view of labels y (already [B, *spatial]).
inline Layout y_layout(at::Tensor& y) {
  if (collapsed_stride(y, 1) < 0) y = y.contiguous();
  Layout l;
  l.B = y.size(0);
  l.C = 1;
  l.S = 1;
  for (int64_t d = 1; d < y.dim(); ++d) l.S *= y.size(d);
  l.sb = y.stride(0);
  l.sv = collapsed_stride(y, 1);
  return l;
}

// Gradient buffer with x's memory format where that format is a collapsible layout.
inline at::Tensor empty_grad(const at::Tensor& x) {
  at::Tensor g = at::empty_like(x, at::MemoryFormat::Preserve);
  if (collapsed_stride(g, 2) < 0) g = at::empty_like(x, at::MemoryFormat::Contiguous);
  return g;
}

// Coefficient tables [B, K] in the accumulation dtype, contiguous, on x's device.
inline at::Tensor check_coef(const char* op, const char* name, const at::Tensor& coef, const at::Tensor& x) {
  const int64_t K = num_classes(x);
  TORCH_CHECK_VALUE(coef.dim() == 2 && coef.size(0) == x.size(0) && coef.size(1) == K, op, ": ", name,
                    " must be [B, K] = [", x.size(0), ", ", K, "], got ", coef.sizes());
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return coef.to(x.device(), acc).contiguous();
}

inline std::string bad_label_message(const char* op, int64_t label, int64_t K, int64_t ignore_label) {
  return std::string(op) + ": y contains label " + std::to_string(label) + " outside [0, " + std::to_string(K) +
         ") (ignore_label=" + std::to_string(ignore_label) + ")";
}

}  // namespace dice
}  // namespace seglosses
