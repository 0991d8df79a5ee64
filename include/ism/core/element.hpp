#pragma once
// Storage element types (float, Eigen::bfloat16, Eigen::half; double for the
// reference) and their conversions to and from float: exact widening,
// round-to-nearest-even narrowing, NaN kept a quiet NaN of the same sign.
//
// Written out in integer operations rather than Eigen's conversions: Eigen's
// compile to F16C or AVX-512 instructions where the translation unit's flags
// allow, outside any namespace of ours, so a program that links an -mavx2
// and an -mavx512f translation unit would share one copy of them. These live
// in the per-instruction-set inline namespace (core/isa.hpp) like the kernel.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "ism/core/isa.hpp"

namespace ism {

template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> ||
    std::is_same_v<T, Eigen::half> || std::is_same_v<T, double>;

template <class T>
inline const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, double>) return "fp64";
  else if constexpr (std::is_same_v<T, Eigen::bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<T, Eigen::half>) return "fp16";
  else return "unknown";
}

inline namespace ISM_SIMD_NAMESPACE {
namespace element_detail {

template <class T>
inline std::uint16_t bits16(T x) {
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
template <class T>
inline T from_bits16(std::uint16_t b) {
  T x;  // Eigen's 16-bit types are not trivial (they have constructors), but are 2 plain bytes
  std::memcpy(static_cast<void*>(&x), &b, sizeof b);
  return x;
}
inline float float_from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
inline std::uint32_t bits_of(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return float_from_bits(sign | 0x7f800000u | (man << 13));  // Inf, NaN (payload kept)
  if (exp != 0) return float_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in float.
  return float_from_bits(sign | bits_of(float(man) * 0x1p-24f));
}

inline std::uint16_t float_to_half(float x) {
  const std::uint32_t u = bits_of(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x1ffu));
  if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // >= 65520: Inf
  if (a < 0x38800000u) {
    // Below 2^-14: a subnormal half, round(|x| * 2^24) units of 2^-24. Adding
    // and subtracting 2^23 rounds to the nearest integer, ties to even.
    const float v = float_from_bits(a) * 0x1p24f;
    const float r = (v + 0x1p23f) - 0x1p23f;
    return std::uint16_t(sign | std::uint32_t(r));
  }
  std::uint32_t r = a - (112u << 23);  // rebias the exponent from 127 to 15
  r += 0xfffu + ((r >> 13) & 1u);      // round the 13 dropped bits, ties to even
  return std::uint16_t(sign | (r >> 13));
}

inline std::uint16_t float_to_bfloat16(float x) {
  const std::uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace element_detail

// Exact widening to float.
inline float to_float(float x) { return x; }
inline float to_float(double x) { return static_cast<float>(x); }
inline float to_float(Eigen::bfloat16 x) { return element_detail::float_from_bits(std::uint32_t(element_detail::bits16(x)) << 16); }
inline float to_float(Eigen::half x) { return element_detail::half_to_float(element_detail::bits16(x)); }

// Round-to-nearest-even narrowing.
template <class T>
inline T from_float(float x) {
  static_assert(is_storage_type_v<T>, "from_float: float, double, Eigen::bfloat16 or Eigen::half");
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return element_detail::from_bits16<T>(element_detail::float_to_bfloat16(x));
  else if constexpr (std::is_same_v<T, Eigen::half>) return element_detail::from_bits16<T>(element_detail::float_to_half(x));
  else return static_cast<T>(x);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
