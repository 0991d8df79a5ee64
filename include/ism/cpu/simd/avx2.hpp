#pragma once
// AVX2 + FMA: 8 float lanes, 16 registers. fp16 uses F16C (VCVTPH2PS /
// VCVTPS2PH, present on every AVX2 CPU and required here); bf16 is a shift
// (widening) and integer round-to-nearest-even (narrowing).
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "ism/cpu/simd/avx2.hpp needs an AVX2 + FMA + F16C target (-mavx2 -mfma -mf16c or -march=haswell)"
#endif
#include <immintrin.h>

#include <Eigen/Core>

#include "ism/core/isa.hpp"
#include "ism/cpu/simd/exp2_poly.hpp"

namespace ism::cpu::simd {
inline namespace ISM_SIMD_NAMESPACE {

struct Avx2 {
  static constexpr const char* name = "avx2";
  static constexpr int width = 8;
  // Register blocking of the micro-kernels (cpu/tile_ops.hpp) for 16
  // registers: scores 3 row vectors x 4 keys (12 accumulators, 3 Q vectors,
  // 1 broadcast key), output 6 rows x 2 dim vectors (12 accumulators, 2 V
  // vectors, 1 broadcast probability). 12 independent FMA chains cover the
  // FMA latency x throughput of Haswell to Zen 4 (8-10), and every loaded
  // operand feeds 3-6 FMAs, so loads never bind.
  static constexpr int s_vecs = 3, s_keys = 4, o_rows = 6, o_vecs = 2;
  using V = __m256;
  // Keeps a loaded operand in a register: an opaque use, so the compiler
  // cannot fold its reloads into every FMA as memory operands (which makes
  // the micro-kernels load-bound).
  static void pin(V& x) { asm("" : "+x"(x)); }

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
  static V copysign(V mag, V sign) {
    const V m = _mm256_set1_ps(-0.f);
    return _mm256_or_ps(_mm256_andnot_ps(m, mag), _mm256_and_ps(m, sign));
  }
  static float reduce_add(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(V a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V keep_in_range(V x, V j, V lo, V hi, V fill) {
    const V in = _mm256_and_ps(_mm256_cmp_ps(lo, j, _CMP_LE_OQ), _mm256_cmp_ps(j, hi, _CMP_LT_OQ));
    return _mm256_blendv_ps(fill, x, in);
  }

  static V exp2(V x) {
    namespace c = exp2_poly;
    // min/max return their second operand when one is NaN: x goes second so a
    // NaN argument stays NaN (a NaN score must poison its row, not vanish).
    x = _mm256_min_ps(set1(c::max_arg), _mm256_max_ps(set1(c::min_arg), x));
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(x, n);
    const V p = c::polynomial<Avx2>(f);
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }

  static V load(const Eigen::bfloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static V load(const Eigen::half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(Eigen::bfloat16* p, V x) {
    // Round to nearest even on the upper 16 bits; NaNs stay quiet NaNs.
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // Pack 8 x u32 (each < 2^16) to 8 x u16 without saturation surprises.
    const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(lo, hi));
  }
  static void store(Eigen::half* p, V x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu::simd
