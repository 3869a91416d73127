// The table of MALIS kernels: the inner loops that have one variant per instruction set. A call
// picks one table (kernels_for(current_isa())) and hands its functions to the stages, so the
// algorithm has no instruction-set branches.
//
//   baseline  the portable kernels compiled for the build's baseline (x86-64: SSE2)
//   avx2      the portable kernels compiled for AVX2 (what an AVX2 machine without AVX-512 runs)
//   avx512    hand-written AVX-512 F/BW/DQ/VL kernels (kernels_avx512.cpp); same results
//
// The default is the best variant the CPU supports; SEGLOSSES_DISABLE_AVX512 (set to a non-empty
// value other than "0") takes AVX-512 out of that choice, and set_kernel_isa() overrides it for
// the tests, which run every variant in one process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "components.h"
#include "cycle_filter.h"
#include "emission.h"
#include "flags.h"
#include "geometry.h"

namespace seglosses {
namespace malis {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

template <typename scalar_t>
struct Kernels {
  Isa isa;
  FlagRowKernel flag_row;
  CycleKernel<scalar_t> drop_cycle_maxima;
  EmitKernel<scalar_t> emit_items;
  InitKernel init_components;
};

// The tables (kernels_portable.cpp, kernels_avx512.cpp); only those of available_isas() exist.
template <typename scalar_t>
Kernels<scalar_t> baseline_kernels();
template <typename scalar_t>
Kernels<scalar_t> avx2_kernels();
template <typename scalar_t>
Kernels<scalar_t> avx512_kernels();

// The variant a call uses now: the override of set_kernel_isa, else the default above.
Isa current_isa();

template <typename scalar_t>
Kernels<scalar_t> kernels_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return avx512_kernels<scalar_t>();
    case Isa::kAvx2:
      return avx2_kernels<scalar_t>();
    default:
      return baseline_kernels<scalar_t>();
  }
}

const char* isa_name(Isa isa);

// Names of the variants this build and CPU can run, baseline first.
std::vector<std::string> available_isas();

// Makes every later call use the variant `name` (one of available_isas()), or the default again
// for "auto"; returns the previous setting ("auto" or a name). For tests.
std::string set_kernel_isa(const std::string& name);

}  // namespace malis
}  // namespace seglosses
