#pragma once
// The portable path: the SIMD vocabulary on one float at a time. It is the
// definition the vector files are checked against, so it uses the same exp2
// algorithm (not std::exp2) and the same masking semantics.
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ism/core/element.hpp"
#include "ism/core/isa.hpp"
#include "ism/cpu/simd/exp2_poly.hpp"

namespace ism::cpu::simd {
inline namespace ISM_SIMD_NAMESPACE {

struct Scalar {
  static constexpr const char* name = "scalar";
  static constexpr int width = 1;
  // Register blocking of the micro-kernels (see cpu/tile_ops.hpp): score block
  // of s_vecs x s_keys, output block of o_rows x o_vecs.
  static constexpr int s_vecs = 4, s_keys = 4, o_rows = 4, o_vecs = 4;
  using V = float;
  // The portable path needs no register pinning.
  static void pin(V&) {}

  static V zero() { return 0.f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V x) { *p = x; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V max(V a, V b) { return a > b ? a : b; }  // b when either is NaN, as x86
  static V fma(V a, V b, V c) { return std::fma(a, b, c); }  // a * b + c
  static V div(V a, V b) { return a / b; }
  static V abs(V a) { return std::fabs(a); }
  static V copysign(V mag, V sign) { return std::copysign(mag, sign); }  // |mag| with sign's sign bit
  static float reduce_add(V a) { return a; }
  static float reduce_max(V a) { return a; }
  // x where lo <= j < hi (per lane), else fill.
  static V keep_in_range(V x, V j, V lo, V hi, V fill) { return (lo <= j && j < hi) ? x : fill; }

  static V exp2(V x) {
    namespace c = exp2_poly;
    if (x != x) return x;  // NaN stays NaN (and never reaches the int conversion)
    x = x < c::min_arg ? c::min_arg : (x > c::max_arg ? c::max_arg : x);  // also maps -inf
    const float n = std::nearbyint(x);
    const float f = x - n;
    const float p = c::polynomial<Scalar>(f);
    const std::uint32_t bits = std::uint32_t(std::int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
  }

  // Element conversions: exact widening, round-to-nearest-even narrowing.
  // (core/element.hpp's integer conversions, never Eigen's.)
  static V load(const Eigen::bfloat16* p) { return to_float(*p); }
  static V load(const Eigen::half* p) { return to_float(*p); }
  static void store(Eigen::bfloat16* p, V x) { *p = from_float<Eigen::bfloat16>(x); }
  static void store(Eigen::half* p, V x) { *p = from_float<Eigen::half>(x); }
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu::simd
