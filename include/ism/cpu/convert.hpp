#pragma once
// Scalar element conversions for the kernel's edges (the tail of a row that
// does not fill a vector, the decode merge): the integer-op conversions of
// core/element.hpp under the kernel's names. Never Eigen's conversions: see
// core/element.hpp and core/isa.hpp for why everything the kernel calls lives
// in ism::...::simd_<isa>::.
#include "ism/core/element.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// Exact widening to float.
template <class T>
inline float widen(T x) {
  return ism::to_float(x);
}

// Round-to-nearest-even narrowing; NaN stays a quiet NaN of the same sign.
template <class T>
inline T narrow(float x) {
  return ism::from_float<T>(x);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
