#pragma once
// AVX-512F: 16 float lanes, 32 registers. bf16 -> fp32 is a shift (exact);
// fp32 -> bf16 uses AVX512_BF16's VCVTNEPS2BF16 when the target has it (round
// to nearest even, except that it flushes fp32 subnormals, below 1.2e-38, to a
// signed zero whatever MXCSR says) and the same rounding in integer ops
// otherwise (subnormals kept); fp16 uses VCVTPH2PS /
// VCVTPS2PH, which AVX-512F includes for 512-bit registers.
#if !defined(__AVX512F__)
#error "ism/cpu/simd/avx512.hpp needs an AVX-512F target (-mavx512f or -march=...)"
#endif
#include <immintrin.h>

#include <Eigen/Core>

#include "ism/core/isa.hpp"
#include "ism/cpu/simd/exp2_poly.hpp"

namespace ism::cpu::simd {
inline namespace ISM_SIMD_NAMESPACE {

// GCC 12's plain forms of several AVX-512 intrinsics pass _mm512_undefined_*()
// as the merge source, which trips -Wmaybe-uninitialized once inlined (GCC bug
// 105593). The zero-masked forms with an all-ones mask are the same
// instruction and carry no undefined operand.
namespace avx512_detail {
inline constexpr __mmask16 all = 0xFFFF;
}

struct Avx512 {
  static constexpr const char* name = "avx512";
  static constexpr int width = 16;
  // Register blocking of the micro-kernels (cpu/tile_ops.hpp): scores 4 row
  // vectors x 4 keys, output 4 rows x 4 dim vectors; 16 accumulators plus 5
  // operands of the 32 registers. 16 chains cover 2 FMA units x latency 4
  // (Intel) and 1 double-pumped unit (Zen 4); a 64-row query tile is one
  // score panel.
  static constexpr int s_vecs = 4, s_keys = 4, o_rows = 4, o_vecs = 4;
  using V = __m512;
  // Keeps a loaded operand in a register ("v": any of the 32).
  static void pin(V& x) { asm("" : "+v"(x)); }

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_maskz_max_ps(avx512_detail::all, a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V abs(V a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff))); }
  static V copysign(V mag, V sign) {
    const __m512i m = _mm512_set1_epi32(0x7fffffff);
    // (mag & m) | (sign & ~m): bitwise select in one VPTERNLOGD.
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(m, _mm512_castps_si512(mag), _mm512_castps_si512(sign), 0xCA));
  }
  static float reduce_add(V a) { return _mm512_reduce_add_ps(a); }
  static float reduce_max(V a) { return _mm512_reduce_max_ps(a); }
  static V keep_in_range(V x, V j, V lo, V hi, V fill) {
    const __mmask16 in = _mm512_cmp_ps_mask(lo, j, _CMP_LE_OQ) & _mm512_cmp_ps_mask(j, hi, _CMP_LT_OQ);
    return _mm512_mask_blend_ps(in, fill, x);
  }

  static V exp2(V x) {
    namespace c = exp2_poly;
    // min returns its second operand when one is NaN: x goes second so a NaN
    // argument stays NaN (a NaN score must poison its row, not vanish).
    x = _mm512_maskz_min_ps(avx512_detail::all, set1(c::max_arg), x);
    // Below min_arg + 1/2 the result is exactly 0, as in the other paths
    // (where n = min_arg makes 2^n's bits 0): masked scores are -inf. "Not
    // less than" is true for NaN, which must go through.
    const __mmask16 keep = _mm512_cmp_ps_mask(x, set1(c::min_arg + 0.5f), _CMP_NLT_UQ);
    const V n = _mm512_maskz_roundscale_ps(avx512_detail::all, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // p * 2^n in one instruction (VSCALEFPS), in place of building 2^n's bits.
    return _mm512_maskz_scalef_ps(keep, c::polynomial<Avx512>(_mm512_sub_ps(x, n)), n);
  }

  static V load(const Eigen::bfloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(avx512_detail::all, _mm512_maskz_cvtepu16_epi32(avx512_detail::all, h), 16));
  }
  static V load(const Eigen::half* p) {
    return _mm512_maskz_cvtph_ps(avx512_detail::all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store(Eigen::bfloat16* p, V x) {
#if defined(__AVX512BF16__)
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);  // same bits, integer view
#else
    // Round to nearest even on the upper 16 bits; NaNs stay quiet NaNs.
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(avx512_detail::all, u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_maskz_srli_epi32(avx512_detail::all, _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
    const __m256i h = _mm512_maskz_cvtepi32_epi16(avx512_detail::all, r);
#endif
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  }
  static void store(Eigen::half* p, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_maskz_cvtps_ph(avx512_detail::all, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu::simd
