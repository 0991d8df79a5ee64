#pragma once
// Chooses the instruction set of the CPU kernel at compile time.
//
// Default: the best the compile target has, from the compiler's own macros:
//   __AVX512F__                      -> avx512   (ism/cpu/simd/avx512.hpp)
//   __AVX2__ and __FMA__ and __F16C__ -> avx2     (ism/cpu/simd/avx2.hpp)
//   __aarch64__ with __ARM_NEON      -> neon     (ism/cpu/simd/neon.hpp)
//   anything else                    -> scalar   (ism/cpu/simd/scalar.hpp)
// So `-march=native` (or -mavx512f, -march=haswell, ...) picks the path.
//
// Force one with -DISM_SIMD=scalar|avx2|avx512|neon. Forcing an instruction
// set the target lacks is a compile error (the ISA header's #error), never a
// silent fallback. Every kernel symbol lives in an inline namespace named after
// the chosen set (ism::cpu::simd_avx512::..., spelled ism::cpu::...), so translation
// units built with different flags link into one program without ODR clashes.
//
// After this header: ism::cpu::simd::Native is the vocabulary struct,
// ISM_SIMD_NAMESPACE the inline namespace name, ISM_SIMD_NAME its string.

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
#include "ism/cpu/simd/avx512.hpp"
#define ISM_SIMD_NAMESPACE simd_avx512
namespace ism::cpu::simd { using Native = Avx512; }
#elif ISM_SIMD_SELECTED == 2
#include "ism/cpu/simd/avx2.hpp"
#define ISM_SIMD_NAMESPACE simd_avx2
namespace ism::cpu::simd { using Native = Avx2; }
#elif ISM_SIMD_SELECTED == 4
#include "ism/cpu/simd/neon.hpp"
#define ISM_SIMD_NAMESPACE simd_neon
namespace ism::cpu::simd { using Native = Neon; }
#else
#include "ism/cpu/simd/scalar.hpp"
#define ISM_SIMD_NAMESPACE simd_scalar
namespace ism::cpu::simd { using Native = Scalar; }
#endif

#define ISM_SIMD_NAME (::ism::cpu::simd::Native::name)
