#pragma once
// Scalar element conversions for the kernel's edges (the tail of a row that
// does not fill a vector, the decode merge), written out in integer ops.
//
// Why not Eigen's conversions or ism::to_float: those are inline functions
// outside the kernel's per-instruction-set namespace, and Eigen compiles them
// with F16C or AVX-512 instructions when the translation unit's flags allow.
// A program that links an -mavx2 and an -mavx512f translation unit gets one
// copy of each such function, picked by the linker; on an AVX2-only machine
// the AVX-512 copy is a SIGILL. Everything the kernel calls therefore lives in
// ism::cpu::<isa>:: (see simd/select.hpp), and these functions are the
// element conversions it uses.
#include <cstdint>
#include <cstring>

#include <Eigen/Core>

#include "ism/cpu/simd/select.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

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

// Exact widening to float.
inline float widen(float x) { return x; }
inline float widen(Eigen::bfloat16 x) { return float_from_bits(std::uint32_t(bits16(x)) << 16); }
inline float widen(Eigen::half x) {
  const std::uint32_t h = bits16(x);
  const std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return float_from_bits(sign | 0x7f800000u | (man << 13));  // Inf, NaN (payload kept)
  if (exp != 0) return float_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in float.
  return float_from_bits(sign | bits_of(float(man) * 0x1p-24f));
}

// Round-to-nearest-even narrowing; NaN stays a quiet NaN of the same sign.
template <class T>
inline T narrow(float x);
template <>
inline float narrow<float>(float x) {
  return x;
}
template <>
inline Eigen::bfloat16 narrow<Eigen::bfloat16>(float x) {
  const std::uint32_t u = bits_of(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return from_bits16<Eigen::bfloat16>(std::uint16_t((u >> 16) | 0x40u));
  return from_bits16<Eigen::bfloat16>(std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16));
}
template <>
inline Eigen::half narrow<Eigen::half>(float x) {
  const std::uint32_t u = bits_of(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return from_bits16<Eigen::half>(std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x1ffu)));
  if (a >= 0x477ff000u) return from_bits16<Eigen::half>(std::uint16_t(sign | 0x7c00u));  // >= 65520: Inf
  if (a < 0x38800000u) {
    // Below 2^-14: a subnormal half, round(|x| * 2^24) units of 2^-24. Adding
    // and subtracting 2^23 rounds to the nearest integer, ties to even.
    const float v = float_from_bits(a) * 0x1p24f;
    const float r = (v + 0x1p23f) - 0x1p23f;
    return from_bits16<Eigen::half>(std::uint16_t(sign | std::uint32_t(r)));
  }
  std::uint32_t r = a - (112u << 23);  // rebias the exponent from 127 to 15
  r += 0xfffu + ((r >> 13) & 1u);      // round the 13 dropped bits, ties to even
  return from_bits16<Eigen::half>(std::uint16_t(sign | (r >> 13)));
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
