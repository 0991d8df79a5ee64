#pragma once
// Moving tiles between global and shared memory, and the score of one
// (row, key) pair with the options' modifiers: the pieces both kernels share.
#include <math.h>

#include "ism/core/config.hpp"
#include "ism/cuda/element.cuh"
#include "ism/cuda/fragment.hpp"
#include "ism/cuda/mma.cuh"
#include "ism/cuda/params.cuh"

namespace ism::cuda::detail {

inline constexpr float kLog2e = 1.4426950408889634f;

// Copies rows [0, rows_valid) of kCols columns (row r from row_ptr(r), its
// columns below `dim`) into shared memory, and zero-fills up to rows_total
// rows and past dim: zero K columns add nothing to a dot product, and zero V
// rows keep 0 * garbage (possibly NaN) out of P V. rows_valid >= 1.
// kVec: 16-byte cp.async (row starts and dim multiples of 8 elements, checked
// on the host); otherwise element by element. kThreads threads take part,
// `tid` being this one's index among them.
template <bool kVec, int kThreads, int kCols, class T, class RowPtr>
__device__ inline void load_tile(T* dst, int dst_stride, const RowPtr& row_ptr, index_t rows_valid, int rows_total,
                                 int dim, int tid) {
  if constexpr (kVec) {
    constexpr int kChunks = kCols / 8;
    for (int i = tid; i < rows_total * kChunks; i += kThreads) {
      const int r = i / kChunks, c = (i % kChunks) * 8;
      const bool valid = r < rows_valid && c < dim;
      // An invalid chunk reads nothing, but cp.async still wants an address.
      cp_async_16(dst + r * dst_stride + c, valid ? row_ptr(r) + c : row_ptr(0), valid);
    }
  } else {
    const T zero = from_float<T>(0.f);
    for (int i = tid; i < rows_total * kCols; i += kThreads) {
      const int r = i / kCols, c = i % kCols;
      dst[r * dst_stride + c] = r < rows_valid && c < dim ? row_ptr(r)[c] : zero;
    }
  }
}

// The score of q.k (fp32 dot product), in log2 units: scale, then softcap,
// then ALiBi (DESIGN section 2b); the mask comes after, in the kernels. kMods
// is a compile-time set, so a modifier that is off costs nothing.
// slope2 = alibi_slopes[h] * log2 e; dist = |i - j| of the absolute row and
// key (exact in float up to 2^24 positions apart).
template <int kMods>
__device__ inline float modified_score(float qk, const ScoreParams& sp, float slope2, float dist) {
  float x;
  if constexpr ((kMods & kModSoftcap) != 0) x = sp.softcap_log2 * tanhf(qk * sp.softcap_in);
  else x = qk * sp.scale_log2;
  if constexpr ((kMods & kModAlibi) != 0) x -= slope2 * dist;
  return x;
}

// One online-softmax step for a thread's two rows (g and g + 8 of a warp's
// 16) over a score tile s[kN8][4] (C layout, already scaled and masked):
// updates m, l (this thread's share of the row sum) and rescales o, and turns
// s into probabilities. kAll lanes of the warp take part (quad shuffles).
template <int kN8, int kD8>
__device__ inline void online_softmax(float (&s)[kN8][4], float (&m)[2], float (&l)[2], float (&o)[kD8][4]) {
  constexpr unsigned kAll = 0xffffffffu;
  float mx[2] = {m[0], m[1]};
#pragma unroll
  for (int j = 0; j < kN8; ++j) {
    mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
  }
  float base[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    // The four threads of a quad hold one row between them.
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(kAll, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(kAll, mx[i], 2));
    // A row that has seen no key yet has max -inf; subtracting it would give
    // -inf - -inf = NaN, so shift by 0 instead (every exp2 is then 0). fmaxf
    // skips NaN scores, whose exp2 below is NaN: they reach l and o.
    base[i] = mx[i] == -HUGE_VALF ? 0.f : mx[i];
    const float alpha = exp2f(m[i] - base[i]);
    m[i] = mx[i];
    l[i] *= alpha;
#pragma unroll
    for (int n = 0; n < kD8; ++n) {
      o[n][2 * i] *= alpha;
      o[n][2 * i + 1] *= alpha;
    }
  }
#pragma unroll
  for (int j = 0; j < kN8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pe = exp2f(s[j][e] - base[e >> 1]);
      s[j][e] = pe;
      l[e >> 1] += pe;
    }
}

// S (16 x kBN) = Q (16 rows of q_rows, stride S) K^T (kBN rows of k_s).
template <class T, int kD, int kBN, int kS>
__device__ inline void score_tile(float (&s)[kBN / 8][4], const T* q_rows, const T* k_s, int lane) {
#pragma unroll
  for (int j = 0; j < kBN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    unsigned a[4];
    ldmatrix_x4(a, q_rows + frag::a_row(lane) * kS + kk * 16 + frag::a_col(lane));
#pragma unroll
    for (int j = 0; j < kBN / 8; j += 2) {
      unsigned bk[4];  // B fragments of key tiles j and j + 1
      ldmatrix_x4(bk, k_s + (j * 8 + frag::bt_row(lane)) * kS + kk * 16 + frag::bt_col(lane));
      mma_16816<T>(s[j], a, bk[0], bk[1]);
      mma_16816<T>(s[j + 1], a, bk[2], bk[3]);
    }
  }
}

// O (16 x kD) += P (s, probabilities) V (kBN rows of v_s).
template <class T, int kD, int kBN, int kS>
__device__ inline void pv_tile(float (&o)[kD / 8][4], const float (&s)[kBN / 8][4], const T* v_s, int lane) {
#pragma unroll
  for (int c = 0; c < kBN / 16; ++c) {
    // Score tiles 2c and 2c+1 (C layout) are the A fragment of keys 16c..16c+15.
    const unsigned a[4] = {pack2<T>(s[2 * c][0], s[2 * c][1]), pack2<T>(s[2 * c][2], s[2 * c][3]),
                           pack2<T>(s[2 * c + 1][0], s[2 * c + 1][1]), pack2<T>(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
    for (int n = 0; n < kD / 8; n += 2) {
      unsigned bv[4];  // B fragments of output columns n*8.. and n*8+8..
      ldmatrix_x4_trans(bv, v_s + (c * 16 + frag::b_row(lane)) * kS + n * 8 + frag::b_col(lane));
      mma_16816<T>(o[n], a, bv[0], bv[1]);
      mma_16816<T>(o[n + 1], a, bv[2], bv[3]);
    }
  }
}

}  // namespace ism::cuda::detail
