// Instruction-set targets of the CPU kernels.
//
// SEGLOSSES_CPU_CLONES (Dice): a function compiled three times, for AVX-512, AVX2 and the x86-64
// baseline (SSE2); the loader picks the best clone the CPU supports (GCC's target_clones, an ifunc).
//
// SEGLOSSES_TARGET_AVX2 / SEGLOSSES_TARGET_AVX512 (MALIS): one explicit variant per instruction
// set, so that a kernel table (csrc/cpu/malis/kernels.h) can name each one and the tests can run
// every variant in one process. A variant is a wrapper with the target attribute around an
// always-inline portable body (or hand-written intrinsics), so the body is compiled for that target.
//
// Other compilers and platforms build the baseline only.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define SEGLOSSES_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEGLOSSES_CPU_CLONES
#endif
#define SEGLOSSES_ALWAYS_INLINE inline __attribute__((always_inline))
// For lambdas in always-inline bodies: a lambda does not take the target of the function it is
// written in, so it must be inlined to be compiled for that target.
#define SEGLOSSES_LAMBDA_INLINE __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define SEGLOSSES_HAVE_X86_VARIANTS 1
#define SEGLOSSES_TARGET_AVX2 __attribute__((target("avx2")))
#define SEGLOSSES_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#else
#define SEGLOSSES_HAVE_X86_VARIANTS 0
#endif
