#pragma once
// Chooses the instruction set of the CPU kernel at compile time (the rule and
// the ISM_SIMD override are in core/isa.hpp) and includes its vocabulary:
//   avx512 -> ism/cpu/simd/avx512.hpp     avx2   -> ism/cpu/simd/avx2.hpp
//   neon   -> ism/cpu/simd/neon.hpp       scalar -> ism/cpu/simd/scalar.hpp
// So `-march=native` (or -mavx512f, -march=haswell, ...) picks the path.
// Forcing an instruction set the target lacks is a compile error (the ISA
// header's #error), never a silent fallback.
//
// After this header: ism::cpu::simd::Native is the vocabulary struct (in the
// per-ISA inline namespace, like every kernel symbol), ISM_SIMD_NAMESPACE the
// namespace name, ISM_SIMD_NAME its string.
#include "ism/core/isa.hpp"

#if ISM_SIMD_SELECTED == 3
#include "ism/cpu/simd/avx512.hpp"
namespace ism::cpu::simd { inline namespace ISM_SIMD_NAMESPACE { using Native = Avx512; } }
#elif ISM_SIMD_SELECTED == 2
#include "ism/cpu/simd/avx2.hpp"
namespace ism::cpu::simd { inline namespace ISM_SIMD_NAMESPACE { using Native = Avx2; } }
#elif ISM_SIMD_SELECTED == 4
#include "ism/cpu/simd/neon.hpp"
namespace ism::cpu::simd { inline namespace ISM_SIMD_NAMESPACE { using Native = Neon; } }
#else
#include "ism/cpu/simd/scalar.hpp"
namespace ism::cpu::simd { inline namespace ISM_SIMD_NAMESPACE { using Native = Scalar; } }
#endif

#define ISM_SIMD_NAME (::ism::cpu::simd::Native::name)
