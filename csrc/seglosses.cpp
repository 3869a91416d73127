// Every seglosses operator is declared here, once. Backends register their kernels
// in csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; fake (meta) kernels
// and autograd formulas are registered from Python (seglosses/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "connected_components.h"
#include "malis.h"

extern "C" {
// `import seglosses._C` loads this shared object, which runs the static
// registrations below; the Python module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "seglosses compiled operators (torch.ops.seglosses)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(seglosses, m) {
  // Dice: per (sample, class) sums I = sum s_c [y=c], P = sum s_c^p, T = sum [y=c] over
  // voxels whose label is not ignore_label. x: logits [B, C, *], y: labels [B, *].
  // Returns [B, 3, K] (float32; float64 for double x); K = C, or 2 when C == 1.
  m.def("dice_sums(Tensor x, Tensor y, int ignore_label, int p) -> Tensor");
  // Vector-Jacobian product of dice_sums. coef_a = dLoss/dI and coef_b = p dLoss/dP ([B, K]
  // tables A and Bt); with g_c = coef_a[b,c] [y=c] + coef_b[b,c] s_c^(p-1),
  // grad_x = s_k (g_k - sum_c g_c s_c) (softmax) or s(1-s)(g_1 - g_0) (C == 1); 0 at ignored
  // voxels. Same shape and dtype as x.
  m.def("dice_backward(Tensor x, Tensor y, Tensor coef_a, Tensor coef_b, int ignore_label, int p) -> Tensor");

  // MALIS. pred: [B, C, *spatial] affinities, seg: [B, *spatial] labels >= 0, nhood: C rows of
  // len(spatial) offsets, flattened. gt_affs / mask: optional, same shape as pred (mask != 0: the
  // edge is inside). constrain_masked: the earlier mask rule (excluded edges stay constrained).
  // num_threads: the threads the call may use (at most torch's intra-op threads; 0: all of those). fn /
  // pred_arg / seg_arg: the public function called and its argument names, for error messages.
  // malis_weights: normalised float32 weights [B, C, *]; malis_counts: exact int64 (pos, neg).
  m.def(
      "malis_weights(Tensor pred, Tensor seg, Tensor? gt_affs, Tensor? mask, int[] nhood, bool constrained, "
      "bool constrain_masked, int num_threads, str fn, str pred_arg, str seg_arg) -> Tensor");
  m.def(
      "malis_counts(Tensor pred, Tensor seg, Tensor? gt_affs, Tensor? mask, int[] nhood, bool constrained, "
      "bool constrain_masked, int num_threads, str fn, str pred_arg, str seg_arg) -> (Tensor, Tensor)");
  // Connected components of the graph whose edges have affs > threshold. affs: [B, C, *spatial].
  // Returns int64 labels [B, *spatial], 1..n per sample in raster order of first voxel; with
  // singleton_background, components of one voxel get 0. num_threads, fn: as above.
  m.def(
      "connected_components(Tensor affs, int[] nhood, float threshold, bool singleton_background, "
      "int num_threads, str fn) -> Tensor");
  // Frees the per-thread MALIS scratch kept between calls (no tensors, so one device-independent
  // implementation); returns the bytes freed.
  m.def("release_malis_workspace() -> int", &seglosses::malis::release_malis_workspace);
  // For tests: the MALIS kernel variants this CPU runs (baseline first), the variant a call uses
  // now, and setting the variant every later call uses ("auto": the best; returns the previous
  // setting).
  m.def("_malis_isas() -> str[]", &seglosses::malis::malis_isas);
  m.def("_malis_isa() -> str", &seglosses::malis::malis_isa);
  m.def("_malis_set_isa(str isa) -> str", &seglosses::malis::malis_set_isa);
}
