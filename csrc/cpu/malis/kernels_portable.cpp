// The portable kernel tables: the always-inline bodies of the stage headers, compiled once for the
// build's baseline and, on x86-64, once more for AVX2 (wrappers with the target attribute).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "kernels.h"

namespace seglosses {
namespace malis {
namespace {

bool flag_row_baseline(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask, const FlagTable& t,
                       bool check_crossing, uint8_t* flags, int64_t n) {
  return flag_row_portable(a, b, gt, mask, t, check_crossing, flags, n);
}

template <typename scalar_t>
void drop_cycle_maxima_baseline(const Geometry& g, const std::vector<SquarePair>& pairs, const scalar_t* pred,
                                uint8_t* flags, int64_t r0, int64_t r1) {
  drop_cycle_maxima_portable(g, pairs, pred, flags, r0, r1);
}

template <typename scalar_t>
bool emit_items_baseline(const Geometry& g, int64_t c, int64_t r0, int64_t r1, const scalar_t* pred,
                         const uint8_t* flags, const int32_t* seg, bool one_part, int shift, Emission& out) {
  return emit_items_portable(g, c, r0, r1, pred, flags, seg, one_part, shift, out);
}

void init_components_baseline(int64_t v0, int64_t v1, const int32_t* seg, Node* nodes, LabelInfo* info,
                              int64_t* part_voxels) {
  init_components_portable(v0, v1, seg, nodes, info, part_voxels);
}

#if SEGLOSSES_HAVE_X86_VARIANTS
SEGLOSSES_TARGET_AVX2 bool flag_row_avx2(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask,
                                         const FlagTable& t, bool check_crossing, uint8_t* flags, int64_t n) {
  return flag_row_portable(a, b, gt, mask, t, check_crossing, flags, n);
}

template <typename scalar_t>
SEGLOSSES_TARGET_AVX2 void drop_cycle_maxima_avx2(const Geometry& g, const std::vector<SquarePair>& pairs,
                                                  const scalar_t* pred, uint8_t* flags, int64_t r0, int64_t r1) {
  drop_cycle_maxima_portable(g, pairs, pred, flags, r0, r1);
}

template <typename scalar_t>
SEGLOSSES_TARGET_AVX2 bool emit_items_avx2(const Geometry& g, int64_t c, int64_t r0, int64_t r1,
                                           const scalar_t* pred, const uint8_t* flags, const int32_t* seg,
                                           bool one_part, int shift, Emission& out) {
  return emit_items_portable(g, c, r0, r1, pred, flags, seg, one_part, shift, out);
}

SEGLOSSES_TARGET_AVX2 void init_components_avx2(int64_t v0, int64_t v1, const int32_t* seg, Node* nodes,
                                                LabelInfo* info, int64_t* part_voxels) {
  init_components_portable(v0, v1, seg, nodes, info, part_voxels);
}
#endif

}  // namespace

template <typename scalar_t>
Kernels<scalar_t> baseline_kernels() {
  return {Isa::kBaseline, &flag_row_baseline, &drop_cycle_maxima_baseline<scalar_t>, &emit_items_baseline<scalar_t>,
          &init_components_baseline};
}

template <typename scalar_t>
Kernels<scalar_t> avx2_kernels() {
#if SEGLOSSES_HAVE_X86_VARIANTS
  return {Isa::kAvx2, &flag_row_avx2, &drop_cycle_maxima_avx2<scalar_t>, &emit_items_avx2<scalar_t>,
          &init_components_avx2};
#else
  return baseline_kernels<scalar_t>();  // never selected: available_isas() does not list it
#endif
}

#define SEGLOSSES_INSTANTIATE(T)                  \
  template Kernels<T> baseline_kernels<T>(); \
  template Kernels<T> avx2_kernels<T>();
SEGLOSSES_INSTANTIATE(float)
SEGLOSSES_INSTANTIATE(double)
SEGLOSSES_INSTANTIATE(c10::Half)
SEGLOSSES_INSTANTIATE(c10::BFloat16)
#undef SEGLOSSES_INSTANTIATE

}  // namespace malis
}  // namespace seglosses
