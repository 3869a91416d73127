// Every seglosses operator is declared here, once. Backends register their kernels
// in csrc/cpu/*.cpp and csrc/cuda/*.cu with TORCH_LIBRARY_IMPL; fake (meta) kernels
// and autograd formulas are registered from Python (seglosses/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "connected_components.h"
#include "malis.h"
#include "transfer_log.h"

namespace seglosses {
TransferLog& transfer_log() {
  static TransferLog log;
  return log;
}

std::vector<int64_t> transfer_counts() {
  const TransferLog& t = transfer_log();
  return {t.to_host_copies.load(), t.to_host_bytes.load(), t.to_device_copies.load(), t.to_device_bytes.load(),
          t.pageable_copies.load(), t.host_waits.load()};
}
}  // namespace seglosses

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
  // Dice family on label maps. x: logits [B, C, *] (softmax over C >= 2 channels; C == 1: the
  // binary sigmoid, s_1 = sigmoid(x), s_0 = 1 - s_1, K = 2), y: integer labels [B, *] or
  // [B, 1, *], mask: optional, [B, *] or [B, 1, *] (or broadcastable; 0 = the voxel counts
  // nowhere). Over the voxels that count (not ignore_label, not masked, label in [0, K)), per
  // (sample, class): I = sum s_c [y=c], P = sum s_c^p, T = sum [y=c], and with_ce
  // L = sum_{y=c} -log s_c (else 0). Returns [B, 4, K] (rows I, P, T, L), float64 for every x
  // dtype (accumulated in float, double for double x; chunk partials combined in double). validate: a label outside [0, K) that is not ignore_label raises an error naming
  // it and the public function `api` (on CUDA this waits for the kernel); otherwise such a
  // voxel counts nowhere, on every backend.
  m.def(
      "dice_sums(Tensor x, Tensor y, Tensor? mask, int ignore_label, int p, bool with_ce, bool validate, "
      "str api) -> Tensor");
  // Vector-Jacobian product of dice_sums: grad_sums = dLoss/d(sums) [B, 4, K]. 0 where a voxel
  // does not count. Same shape and dtype as x. Never validates labels (dice_sums did).
  m.def("dice_backward(Tensor x, Tensor y, Tensor? mask, Tensor grad_sums, int ignore_label, int p) -> Tensor");
  // Multi-label sigmoid Dice family: x logits [B, C, *], t targets of x's shape (bool, integer or
  // floating point in [0, 1]), mask optional [B, C, *] or [B, 1, *] (or broadcastable). Per
  // (sample, channel), over the elements that count, with s = sigmoid(x): I = sum s t,
  // P = sum s^p, T = sum t^p, Lpos = sum t softplus(-x), Lneg = sum (1 - t) softplus(x) (with_ce,
  // else 0), N = their number. Returns [B, 6, C]. validate: a target outside [0, 1] raises,
  // otherwise that element counts nowhere.
  m.def(
      "dice_sigmoid_sums(Tensor x, Tensor t, Tensor? mask, int p, bool with_ce, bool validate, str api) -> Tensor");
  m.def("dice_sigmoid_backward(Tensor x, Tensor t, Tensor? mask, Tensor grad_sums, int p) -> Tensor");

  // MALIS. pred: [B, C, *spatial] affinities, seg: [B, *spatial] labels >= 0, or None: the
  // connected components of gt_affs > 0.5 over nhood, singleton voxels as background (MalisLoss
  // without gt_seg; computed on the host in the same call). nhood: C rows of len(spatial) offsets,
  // flattened. gt_affs / mask: optional, same shape as pred (mask != 0: the edge is inside).
  // constrain_masked: the earlier mask rule (excluded edges stay constrained). num_threads: the
  // threads the call may use (at most torch's intra-op threads; 0: all of those). fn / pred_arg /
  // seg_arg: the public function called and its argument names, for error messages. With pred on
  // CUDA, seg / gt_affs / mask may be on pred's device or on the CPU (read there, no trip).
  // malis_weights: normalised float32 weights [B, C, *]; malis_counts: exact int64 (pos, neg).
  m.def(
      "malis_weights(Tensor pred, Tensor? seg, Tensor? gt_affs, Tensor? mask, int[] nhood, bool constrained, "
      "bool constrain_masked, int num_threads, str fn, str pred_arg, str seg_arg) -> Tensor");
  m.def(
      "malis_counts(Tensor pred, Tensor? seg, Tensor? gt_affs, Tensor? mask, int[] nhood, bool constrained, "
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
  // For tests: what the CUDA backend has moved so far (csrc/transfer_log.h): device-to-host copies
  // and bytes, host-to-device copies and bytes, copies from pageable memory, host waits.
  m.def("_transfer_counts() -> int[]", &seglosses::transfer_counts);
  // For tests: an internal setting that forces one of the kernel's equivalent paths ("slabs",
  // "split_voxels", "msd_items"; "reset": all to their defaults); returns its previous value.
  m.def("_malis_set_tuning(str name, int value) -> int", &seglosses::malis::malis_set_tuning);
}
