// The CPU Dice kernels as plain C++ (no ATen): what csrc/cpu/dice_cpu.cpp (the ATen driver:
// checks, layouts, threads, the fixed-order combination of partial sums) calls for each chunk of
// voxels. Keeping ATen out of the kernel translation units keeps them fast to compile; keeping
// dtypes out of the templates (inputs are converted per tile, see dice_rows.h) keeps the number
// of compiled kernel bodies small: one per accumulation type (float, double) and CPU clone.
#pragma once

#include <cstdint>
#include <vector>

#include "dice_math.h"

namespace seglosses {
namespace dice {
namespace cpu {

// A strided [B, C, S] view (C = 1 for label maps). A stride of 0 broadcasts.
struct View {
  const void* data = nullptr;
  Elem elem = Elem::kF32;
  int64_t sb = 0, sc = 0, sv = 0;
};

// The gradient, written in x's dtype.
struct OutView {
  void* data = nullptr;
  Elem elem = Elem::kF32;
  int64_t sb = 0, sc = 0, sv = 0;
};

// Voxels per chunk: fixed (not derived from the thread count) so that the partial sums, combined
// in chunk order, give bitwise the same result for any number of threads.
constexpr int64_t kChunk = 8192;

inline int64_t num_chunks(int64_t S) { return (S + kChunk - 1) / kChunk; }

// No bad element seen (the value of first_bad when validation finds nothing).
constexpr int64_t kNoBad = -1;

// ---------------------------------------------------------------------------------------------
// Label maps: x [B, C, S] logits (softmax over C >= 2, or the binary sigmoid for C == 1, K = 2),
// y [B, S] integer labels, optional mask [B, S] (0 = the voxel counts nowhere).
// ---------------------------------------------------------------------------------------------
struct LabelArgs {
  View x, y, mask;  // mask.data == nullptr: no mask
  int64_t B = 0, C = 0, K = 0, S = 0;
  int64_t ignore_label = -1;
  int p = 1;
  bool with_ce = false;  // sums: also accumulate the cross-entropy row L
};

// Voxels per tile: the unit of the vectorised loops (a tile's rows stay in L1).
constexpr int64_t kTile = 256;

// Per-thread scratch of the label-map kernels: one tile of every channel plus per-voxel rows.
template <typename acc_t>
struct LabelTile {
  explicit LabelTile(int64_t C) : x(static_cast<size_t>(C * kTile)), g(static_cast<size_t>(C * kTile)) {}
  std::vector<acc_t> x;  // [C, kTile]: logits, then e_c = exp(x_c - m), then s_c
  std::vector<acc_t> g;  // [C, kTile]: dLoss/ds_c (backward)
  alignas(64) acc_t m[kTile];      // max logit
  alignas(64) acc_t inv_z[kTile];  // 1 / sum_c e_c (0 where the voxel does not count)
  alignas(64) acc_t nll[kTile];    // -log s_y (cross-entropy)
  alignas(64) acc_t aux[kTile];    // logit of the label's class (forward); its CE coefficient (backward)
  alignas(64) acc_t dot[kTile];    // sum_c g_c s_c (backward)
  alignas(64) acc_t pw[kTile];     // s^p or s^(p-1)
  alignas(64) acc_t tmp[kTile];    // scratch of the powers
  alignas(64) int32_t cls[kTile];  // class index, or kIgnored (ignored, masked, bad or padding)
};

// Sums of voxels [v0, v1) of sample b into out [4, K] (acc_t: float, or double for double x).
// first_bad: flat index b * S + v of the chunk's first bad label (it counts nowhere), else kNoBad.
template <typename acc_t>
void label_sums_chunk(const LabelArgs& a, LabelTile<acc_t>& tile, int64_t b, int64_t v0, int64_t v1, acc_t* out,
                      int64_t& first_bad);

// Gradient of voxels [v0, v1) of sample b; coef: the [B, 4, K] gradient of the loss with respect
// to the sums (row P already multiplied by p).
template <typename acc_t>
void label_backward_chunk(const LabelArgs& a, LabelTile<acc_t>& tile, int64_t b, int64_t v0, int64_t v1,
                          const acc_t* coef, const OutView& g);

// ---------------------------------------------------------------------------------------------
// Multi-label sigmoid: x [B, C, S] logits, t [B, C, S] targets in [0, 1] (bool, integer or float),
// optional mask [B, C or 1, S]. Each channel is its own binary problem.
// ---------------------------------------------------------------------------------------------
struct SigmoidArgs {
  View x, t, mask;
  int64_t B = 0, C = 0, S = 0;
  int p = 1;
  bool with_ce = false;
};

// Sums of elements [v0, v1) of row (b, c) into out [6].
template <typename acc_t>
void sigmoid_sums_chunk(const SigmoidArgs& a, int64_t b, int64_t c, int64_t v0, int64_t v1, acc_t* out,
                        int64_t& first_bad);

template <typename acc_t>
void sigmoid_backward_chunk(const SigmoidArgs& a, int64_t b, int64_t c, int64_t v0, int64_t v1, const acc_t* coef,
                            const OutView& g);

}  // namespace cpu
}  // namespace dice
}  // namespace seglosses
