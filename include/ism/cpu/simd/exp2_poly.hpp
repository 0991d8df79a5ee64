#pragma once
// The one exp2 every instruction set implements, written once as constants:
// 2^x = 2^n * 2^f with n = round(x), f = x - n in [-1/2, 1/2] (Cody-Waite range
// reduction; for base 2 the split is exact, so no hi/lo constant pair is
// needed), and 2^f by the degree-6 minimax polynomial of Cephes' exp2f
// (relative error about 1.7e-7, i.e. 1-2 ulp).
//
// Inputs are clamped to [min_arg, max_arg]. At min_arg = -127, n = -127 gives
// an exponent field of 0, so 2^n is exactly +0: exp2(-inf) and every argument
// below about -126.5 return exactly 0, never a denormal and never NaN. That is
// what masked scores (-inf) and the "row sees nothing" guard rely on.
#include "ism/core/isa.hpp"

namespace ism::cpu::simd::exp2_poly {

inline constexpr float min_arg = -127.0f;
inline constexpr float max_arg = 127.0f;
// 2^f ~ 1 + f * (c5 + f * (c4 + f * (c3 + f * (c2 + f * (c1 + f * c0)))))
inline constexpr float c0 = 1.535336188319500e-4f;
inline constexpr float c1 = 1.339887440266574e-3f;
inline constexpr float c2 = 9.618437357674640e-3f;
inline constexpr float c3 = 5.550332471162809e-2f;
inline constexpr float c4 = 2.402264791363012e-1f;
inline constexpr float c5 = 6.931472028550421e-1f;

// 2^f for f in [-1/2, 1/2], in any instruction set's vocabulary S (Horner's
// rule on S::fma; each ISA file adds the clamp, the rounding and 2^n).
inline namespace ISM_SIMD_NAMESPACE {
template <class S>
inline typename S::V polynomial(typename S::V f) {
  typename S::V p = S::set1(c0);
  p = S::fma(p, f, S::set1(c1));
  p = S::fma(p, f, S::set1(c2));
  p = S::fma(p, f, S::set1(c3));
  p = S::fma(p, f, S::set1(c4));
  p = S::fma(p, f, S::set1(c5));
  return S::fma(p, f, S::set1(1.f));
}
}  // inline namespace ISM_SIMD_NAMESPACE

}  // namespace ism::cpu::simd::exp2_poly
