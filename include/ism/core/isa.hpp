#pragma once
// Which instruction set this translation unit compiles ism's CPU code for,
// and the inline namespace that code lives in.
//
// Default: the best the compile target has, from the compiler's own macros:
//   __AVX512F__                       -> avx512
//   __AVX2__ and __FMA__ and __F16C__ -> avx2
//   __aarch64__ with __ARM_NEON       -> neon
//   anything else                     -> scalar
// Force one with -DISM_SIMD=scalar|avx2|avx512|neon; an unknown name is an
// error here, and an instruction set the target lacks is an error in its
// vocabulary header (cpu/simd/<isa>.hpp), never a silent fallback.
//
// Why a namespace per instruction set: an engine may compile one translation
// unit with -mavx2 and another with -mavx512f and pick one at run time. Inline
// functions and templates compiled in both (the kernel, its vocabulary, its
// workspace, the element conversions) would otherwise share one mangled name,
// and the linker keeps one copy for both callers: the AVX-512 copy is a
// SIGILL on an AVX2 machine. In ism::...::simd_<isa>:: (an inline namespace,
// so still spelled ism::...) each translation unit's copies are its own.
//
// After this header: ISM_SIMD_SELECTED (1 scalar, 2 avx2, 3 avx512, 4 neon)
// and ISM_SIMD_NAMESPACE (simd_scalar, simd_avx2, simd_avx512, simd_neon).

#define ISM_SIMD_ID_scalar 1
#define ISM_SIMD_ID_avx2 2
#define ISM_SIMD_ID_avx512 3
#define ISM_SIMD_ID_neon 4
#define ISM_SIMD_CAT_(a, b) a##b
#define ISM_SIMD_CAT(a, b) ISM_SIMD_CAT_(a, b)

#if defined(ISM_SIMD)
#define ISM_SIMD_SELECTED ISM_SIMD_CAT(ISM_SIMD_ID_, ISM_SIMD)
#if ISM_SIMD_SELECTED < 1 || ISM_SIMD_SELECTED > 4
#error "ISM_SIMD must be one of scalar, avx2, avx512, neon"
#endif
#elif defined(__AVX512F__)
#define ISM_SIMD_SELECTED 3
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ISM_SIMD_SELECTED 2
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define ISM_SIMD_SELECTED 4
#else
#define ISM_SIMD_SELECTED 1
#endif

#if ISM_SIMD_SELECTED == 3
#define ISM_SIMD_NAMESPACE simd_avx512
#elif ISM_SIMD_SELECTED == 2
#define ISM_SIMD_NAMESPACE simd_avx2
#elif ISM_SIMD_SELECTED == 4
#define ISM_SIMD_NAMESPACE simd_neon
#else
#define ISM_SIMD_NAMESPACE simd_scalar
#endif
