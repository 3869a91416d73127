// Function multi-versioning for the CPU kernels' vectorisable loops.
//
// A function marked SEGLOSSES_CPU_CLONES is compiled three times, for AVX-512, AVX2 and the x86-64
// baseline (SSE2), and the loader picks the best clone the CPU supports (GCC's target_clones, an
// ifunc). Other compilers and platforms build the baseline only.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define SEGLOSSES_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEGLOSSES_CPU_CLONES
#endif
#define SEGLOSSES_ALWAYS_INLINE inline __attribute__((always_inline))

// Hand-written AVX-512 kernels (intrinsics in functions marked SEGLOSSES_AVX512), for x86-64
// GCC-compatible compilers; callers check the CPU at run time before calling them.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SEGLOSSES_HAVE_AVX512 1
#define SEGLOSSES_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#else
#define SEGLOSSES_HAVE_AVX512 0
#endif
