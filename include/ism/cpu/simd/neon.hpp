#pragma once
// AArch64 NEON (Advanced SIMD): 4 float lanes, 32 registers. fp16 <-> fp32
// uses FCVTL / FCVTN (always present on AArch64); bf16 widening is a shift and
// narrowing an integer round-to-nearest-even, which every AArch64 core runs
// (BFCVTN would need the optional BF16 extension for a once-per-row store).
#if !defined(__ARM_NEON) || !defined(__aarch64__)
#error "ism/cpu/simd/neon.hpp needs an AArch64 target with NEON"
#endif
#include <arm_neon.h>

#include <cstdint>

#include <Eigen/Core>

#include "ism/core/isa.hpp"
#include "ism/cpu/simd/exp2_poly.hpp"

namespace ism::cpu::simd {
inline namespace ISM_SIMD_NAMESPACE {

struct Neon {
  static constexpr const char* name = "neon";
  static constexpr int width = 4;
  // Register blocking of the micro-kernels (cpu/tile_ops.hpp): 16
  // accumulators plus 5 operands of the 32 registers, as AVX-512.
  static constexpr int s_vecs = 4, s_keys = 4, o_rows = 4, o_vecs = 4;
  using V = float32x4_t;
  // Keeps a loaded operand in a register ("w": any of the 32 SIMD registers).
  static void pin(V& x) { asm("" : "+w"(x)); }

  static V zero() { return vdupq_n_f32(0.f); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V x) { vst1q_f32(p, x); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  static V div(V a, V b) { return vdivq_f32(a, b); }
  static V abs(V a) { return vabsq_f32(a); }
  static V copysign(V mag, V sign) { return vbslq_f32(vdupq_n_u32(0x7fffffffu), mag, sign); }
  static float reduce_add(V a) { return vaddvq_f32(a); }
  static float reduce_max(V a) { return vmaxvq_f32(a); }
  static V keep_in_range(V x, V j, V lo, V hi, V fill) {
    const uint32x4_t in = vandq_u32(vcleq_f32(lo, j), vcltq_f32(j, hi));
    return vbslq_f32(in, x, fill);
  }

  static V exp2(V x) {
    namespace c = exp2_poly;
    x = vminq_f32(vmaxq_f32(x, set1(c::min_arg)), set1(c::max_arg));  // NaN stays NaN
    const V n = vrndnq_f32(x);
    const V f = vsubq_f32(x, n);
    const V p = c::polynomial<Neon>(f);
    const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(bits));
  }

  static V load(const Eigen::bfloat16* p) {
    const uint16x4_t h = vld1_u16(reinterpret_cast<const std::uint16_t*>(p));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
  }
  static V load(const Eigen::half* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p))));
  }
  static void store(Eigen::bfloat16* p, V x) {
    // Round to nearest even on the upper 16 bits; NaNs stay quiet NaNs.
    const uint32x4_t u = vreinterpretq_u32_f32(x);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
    const uint32x4_t is_num = vceqq_f32(x, x);
    r = vbslq_u32(is_num, r, vdupq_n_u32(0x7fc0));
    vst1_u16(reinterpret_cast<std::uint16_t*>(p), vmovn_u32(r));
  }
  static void store(Eigen::half* p, V x) {
    vst1_u16(reinterpret_cast<std::uint16_t*>(p), vreinterpret_u16_f16(vcvt_f16_f32(x)));
  }
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu::simd
