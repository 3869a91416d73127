// The hand-written AVX-512 (F/BW/DQ/VL) kernels and their table: the same results as the portable
// kernels, with the same finiteness contract (finite.h). Only this file uses intrinsics; every
// function that does has the AVX-512 target attribute, and the table is only used when the CPU
// has AVX-512 (kernels.cpp). Timings of what these bought: BENCHMARKS.md.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*
// values wherever they are inlined (GCC bug 105593), a screenful per build; it is reported at the
// headers' lines, so it is turned off for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "kernels.h"

#if SEGLOSSES_HAVE_X86_VARIANTS
#include <immintrin.h>

namespace seglosses {
namespace malis {
namespace {

// 16 predictions as float32 (lanes outside m read nothing and are 0).
template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 inline __m512 load_floats16(const scalar_t* p, __mmask16 m) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return _mm512_maskz_loadu_ps(m, p);
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    const __m256 lo = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p));
    const __m256 hi = _mm512_cvtpd_ps(_mm512_maskz_loadu_pd(static_cast<__mmask8>(m >> 8), p + 8));
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  } else {
    static_assert(std::is_same_v<scalar_t, c10::BFloat16>);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

// descending_key on 16 lanes.
SEGLOSSES_TARGET_AVX512 inline __m512i descending_keys16(__m512 x) {
  __m512i u = _mm512_castps_si512(x);
  u = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(u, _mm512_set1_epi32(0x7fffffff)), u);  // -0 -> +0
  const __m512i neg = _mm512_srai_epi32(u, 31);
  const __m512i flip = _mm512_or_si512(neg, _mm512_set1_epi32(static_cast<int32_t>(0x80000000u)));
  return _mm512_xor_si512(_mm512_xor_si512(u, flip), _mm512_set1_epi32(-1));
}

// ---- flags: the portable body, compiled for AVX-512 ---------------------------------------------
SEGLOSSES_TARGET_AVX512 bool flag_row_avx512(const int32_t* a, const int32_t* b, const bool* gt, const bool* mask,
                                             const FlagTable& t, bool check_crossing, uint8_t* flags, int64_t n) {
  return flag_row_portable(a, b, gt, mask, t, check_crossing, flags, n);
}

// ---- cycle filter -------------------------------------------------------------------------------
// Order keys of 16 edges (lanes outside m: 0).
template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 inline __m512i order_keys16(const scalar_t* p, const uint8_t* f, __mmask16 m) {
  const __m512i key = descending_keys16(load_floats16(p, m));
  const __m512i fl = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, f));
  static_assert(kLate == 1, "the late bit is shifted from bit 0 to bit 31 (the other flag bits shift out)");
  return _mm512_or_si512(_mm512_slli_epi32(fl, 31), _mm512_srli_epi32(key, 1));
}

// Sets kDropped in the flags of the lanes in d.
SEGLOSSES_TARGET_AVX512 inline void mark(uint8_t* f, __mmask16 d) {
  _mm_mask_storeu_epi8(f, d, _mm_or_si128(_mm_maskz_loadu_epi8(d, f), _mm_set1_epi8(static_cast<char>(kDropped))));
}

// drop_square_row_portable with mask registers: the same marks (the strictly unique maximum of
// each square), 16 squares per block; a row's last block is masked instead of overlapping the one
// before. Flags are updated after each chunk's blocks are computed (see kSquareChunkBlocks).
template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 void drop_square_row_avx512(const scalar_t* p1, const scalar_t* p2, uint8_t* f1, uint8_t* f2,
                                                    int64_t v0, int64_t n, int64_t d1, int64_t d2) {
  __mmask16 drop[4][kSquareChunkBlocks];
  const int64_t n_blocks = (n + 15) / 16;
  for (int64_t b0 = 0; b0 < n_blocks; b0 += kSquareChunkBlocks) {
    const int64_t nb = std::min(kSquareChunkBlocks, n_blocks - b0);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t v = v0 + (b0 + b) * 16, left = v0 + n - v;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      const __m512i k0 = order_keys16(p1 + v, f1 + v, m);
      const __m512i k1 = order_keys16(p2 + v + d1, f2 + v + d1, m);
      const __m512i k2 = order_keys16(p1 + v + d2, f1 + v + d2, m);
      const __m512i k3 = order_keys16(p2 + v, f2 + v, m);
      const __m512i top = _mm512_max_epu32(_mm512_max_epu32(k0, k1), _mm512_max_epu32(k2, k3));
      const __mmask16 e0 = _mm512_cmpeq_epu32_mask(k0, top), e1 = _mm512_cmpeq_epu32_mask(k1, top);
      const __mmask16 e2 = _mm512_cmpeq_epu32_mask(k2, top), e3 = _mm512_cmpeq_epu32_mask(k3, top);
      // Lanes where two or more edges hold the maximum drop nothing.
      const __mmask16 shared = (e0 & (e1 | e2 | e3)) | (e1 & (e2 | e3)) | (e2 & e3);
      const __mmask16 unique = m & ~shared;
      drop[0][b] = e0 & unique;
      drop[1][b] = e1 & unique;
      drop[2][b] = e2 & unique;
      drop[3][b] = e3 & unique;
    }
    for (int64_t b = 0; b < nb; ++b) mark(f1 + v0 + (b0 + b) * 16, drop[0][b]);
    for (int64_t b = 0; b < nb; ++b) mark(f2 + v0 + (b0 + b) * 16 + d1, drop[1][b]);
    for (int64_t b = 0; b < nb; ++b) mark(f1 + v0 + (b0 + b) * 16 + d2, drop[2][b]);
    for (int64_t b = 0; b < nb; ++b) mark(f2 + v0 + (b0 + b) * 16, drop[3][b]);
  }
}

template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 void drop_cycle_maxima_avx512(const Geometry& g, const std::vector<SquarePair>& pairs,
                                                      const scalar_t* pred, uint8_t* flags, int64_t r0, int64_t r1) {
  const int64_t V = g.V;
  for_each_square_row(g, pairs, r0, r1, [&](const SquarePair& q, int64_t v0, int64_t n) SEGLOSSES_LAMBDA_INLINE {
    drop_square_row_avx512(pred + q.c1 * V, pred + q.c2 * V, flags + q.c1 * V, flags + q.c2 * V, v0, n, q.d1, q.d2);
  });
}

// ---- emission -----------------------------------------------------------------------------------
// Packs the items of the lanes in sel (lo: lanes 0-7, hi: lanes 8-15) to dst, in lane order;
// stores 16 slots' worth at most. Returns the number packed.
SEGLOSSES_TARGET_AVX512 inline int64_t pack_items(uint64_t* dst, __m512i lo, __m512i hi, __mmask16 sel) {
  const __mmask8 slo = static_cast<__mmask8>(sel), shi = static_cast<__mmask8>(sel >> 8);
  const int64_t nlo = __builtin_popcount(slo);
  _mm512_storeu_si512(dst, _mm512_maskz_compress_epi64(slo, lo));
  _mm512_storeu_si512(dst + nlo, _mm512_maskz_compress_epi64(shi, hi));
  return nlo + __builtin_popcount(shi);
}

// emit_items_portable for one row of channel c's edges (sources v0 .. v0 + len - 1; pc, fc: the
// channel's predictions and flags; cbits: c << shift), 16 edges at a time: keys computed in vector
// registers, each group's items packed by a compress and stored 8 at a time (the stores run past
// the fill into free slots: the part pad and the second buffer's pad). A block whose voxels carry
// several labels is stored once per label. Returns whether a prediction was not finite.
template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 bool emit_row_avx512(const scalar_t* pc, const uint8_t* fc, const int32_t* seg, bool one_part,
                                             uint64_t cbits, int64_t v0, int64_t len, Emission& out) {
  uint64_t* const parts = out.parts;
  int64_t* const part_end = out.part_end;
  uint64_t* const second = out.second;
  int64_t n_second = out.n_second;
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m128i group_bits = _mm_set1_epi8(static_cast<char>(kDropped | kLate));
  const __m128i late = _mm_set1_epi8(static_cast<char>(kLate));
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  __mmask16 nonfinite = 0;
  for (int64_t v = v0; v < v0 + len; v += 16) {
    const __mmask16 m = v + 16 <= v0 + len ? __mmask16(0xffff) : __mmask16((1u << (v0 + len - v)) - 1);
    const __m512 x = load_floats16(pc + v, m);
    nonfinite |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(x), exponent), exponent);
    const __m512i key = descending_keys16(x);
    const __m512i base = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(cbits | uint64_t(v))), lane);
    const __m512i lo =
        _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(key)), 32), base);
    const __m512i hi = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(key, 1)), 32),
                                       _mm512_add_epi64(base, _mm512_set1_epi64(8)));
    const __m128i f = _mm_and_si128(_mm_maskz_loadu_epi8(m, fc + v), group_bits);
    const __mmask16 first = _mm_mask_testn_epi8_mask(m, f, f);
    const __mmask16 second_group = _mm_mask_cmpeq_epi8_mask(m, f, late);
    n_second += pack_items(second + n_second, lo, hi, second_group);
    if (first == 0) continue;
    if (one_part) {
      part_end[0] += pack_items(parts + part_end[0], lo, hi, first);
      continue;
    }
    const __m512i labels = _mm512_maskz_loadu_epi32(first, seg + v);
    __mmask16 left = first;
    while (left != 0) {
      const int32_t label = seg[v + __builtin_ctz(left)];
      const __mmask16 sel = _mm512_mask_cmpeq_epi32_mask(left, labels, _mm512_set1_epi32(label));
      left = static_cast<__mmask16>(left & ~sel);
      int64_t& fill = part_end[part_of(label)];
      fill += pack_items(parts + fill, lo, hi, sel);
    }
  }
  out.n_second = n_second;
  return nonfinite != 0;
}

template <typename scalar_t>
SEGLOSSES_TARGET_AVX512 bool emit_items_avx512(const Geometry& g, int64_t c, int64_t r0, int64_t r1,
                                               const scalar_t* pred, const uint8_t* flags, const int32_t* seg,
                                               bool one_part, int shift, Emission& out) {
  bool nonfinite = false;
  const scalar_t* pc = pred + c * g.V;
  const uint8_t* fc = flags + c * g.V;
  const uint64_t cbits = uint64_t(c) << shift;
  for_each_edge_row(g, c, r0, r1, [&](int64_t v0, int64_t len) SEGLOSSES_LAMBDA_INLINE {
    nonfinite |= emit_row_avx512(pc, fc, seg, one_part, cbits, v0, len, out);
  });
  return nonfinite;
}

// ---- union-find init ----------------------------------------------------------------------------
// init_components_portable, 16 voxels at a time from voxel v0 + 1 to the last whole block (run
// boundaries from a mask), then the portable loop for the rest.
SEGLOSSES_TARGET_AVX512 void init_components_avx512(int64_t v0, int64_t v1, const int32_t* seg, Node* nodes,
                                                    LabelInfo* info, int64_t* part_voxels) {
  static_assert(sizeof(Node) == 8 && sizeof(LabelInfo) == 8, "nodes and info are written as 64-bit lanes");
  int32_t run_label = seg[v0];
  int64_t run_start = v0;
  int64_t v = v0;
  if (v1 - v0 >= 17) {
    nodes[v0] = {static_cast<uint32_t>(v0), 1u};
    info[v0] = {seg[v0] != 0 ? 1u : 0u, seg[v0]};
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i size_one = _mm512_set1_epi64(int64_t(1) << 32);  // {parent, size = 1}
    const __m512i one = _mm512_set1_epi64(1);
    for (v = v0 + 1; v + 16 <= v1; v += 16) {
      const __m512i s = _mm512_loadu_si512(seg + v);
      const __m512i index = _mm512_add_epi64(_mm512_set1_epi64(v), lane);
      _mm512_storeu_si512(nodes + v, _mm512_or_si512(index, size_one));
      _mm512_storeu_si512(nodes + v + 8, _mm512_or_si512(_mm512_add_epi64(index, _mm512_set1_epi64(8)), size_one));
      // {nlab = label != 0, lab = label} (labels are >= 0)
      const __m512i lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(s));
      const __m512i hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(s, 1));
      _mm512_storeu_si512(info + v, _mm512_or_si512(_mm512_slli_epi64(lo, 32), _mm512_min_epu64(lo, one)));
      _mm512_storeu_si512(info + v + 8, _mm512_or_si512(_mm512_slli_epi64(hi, 32), _mm512_min_epu64(hi, one)));
      for (uint32_t b = _mm512_cmpneq_epi32_mask(s, _mm512_loadu_si512(seg + v - 1)); b != 0; b &= b - 1) {
        const int64_t at = v + __builtin_ctz(b);
        part_voxels[part_of(run_label)] += at - run_start;
        run_label = seg[at];
        run_start = at;
      }
    }
  }
  for (; v < v1; ++v) {
    nodes[v] = {static_cast<uint32_t>(v), 1u};
    info[v] = {seg[v] != 0 ? 1u : 0u, seg[v]};
    if (seg[v] != run_label) {
      part_voxels[part_of(run_label)] += v - run_start;
      run_label = seg[v];
      run_start = v;
    }
  }
  part_voxels[part_of(run_label)] += v1 - run_start;
}

}  // namespace

template <typename scalar_t>
Kernels<scalar_t> avx512_kernels() {
  return {Isa::kAvx512, &flag_row_avx512, &drop_cycle_maxima_avx512<scalar_t>, &emit_items_avx512<scalar_t>,
          &init_components_avx512};
}

}  // namespace malis
}  // namespace seglosses

#else  // no x86 variants: the table is never selected (available_isas() does not list it)

namespace seglosses {
namespace malis {
template <typename scalar_t>
Kernels<scalar_t> avx512_kernels() {
  return baseline_kernels<scalar_t>();
}
}  // namespace malis
}  // namespace seglosses

#endif

namespace seglosses {
namespace malis {
template Kernels<float> avx512_kernels<float>();
template Kernels<double> avx512_kernels<double>();
template Kernels<c10::Half> avx512_kernels<c10::Half>();
template Kernels<c10::BFloat16> avx512_kernels<c10::BFloat16>();
}  // namespace malis
}  // namespace seglosses
