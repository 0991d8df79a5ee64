#pragma once
// Tile shapes of the forward kernel, one set per compiled head dimension, and
// the parameters every launch passes by value.
#include "ism/core/config.hpp"
#include "ism/cuda/check.cuh"

namespace ism::cuda {

// Head dims with their own kernel; any other dim up to kMaxGenericDim runs on
// the generic kernel (dim rounded up to 16 with zero columns, which change no
// dot product), and larger dims are rejected at the entry point.
inline constexpr int kMaxGenericDim = 256;

template <int kDim_, int kBlockM_, int kBlockN_>
struct KernelTraits {
  static constexpr int kDim = kDim_;          // head dim held in shared memory (multiple of 16)
  static constexpr int kBlockM = kBlockM_;    // query rows per thread block
  static constexpr int kBlockN = kBlockN_;    // keys per tile
  static constexpr int kWarps = kBlockM / 16; // each warp owns 16 query rows (one mma M)
  static constexpr int kThreads = kWarps * 32;
  // Rows padded by 16 bytes: ldmatrix's 8 row addresses then fall in 8
  // different 4-bank groups (row stride = 4 banks mod 32), so no conflicts.
  static constexpr int kStride = kDim + 8;
  static constexpr int kStages = 2;  // K/V double buffer: load tile i+1 while computing tile i
  static constexpr int kSmemElems = kBlockM * kStride + kStages * 2 * kBlockN * kStride;
  static_assert(kDim % 16 == 0 && kBlockN % 16 == 0 && kBlockM % 16 == 0, "tiles are whole mma shapes");
};

// 64 and 128 (the dims of most models) get tiles sized for them; everything
// else shares one kernel with smaller key tiles so 256 columns fit.
using Traits64 = KernelTraits<64, 128, 64>;
using Traits128 = KernelTraits<128, 128, 64>;
using TraitsGeneric = KernelTraits<kMaxGenericDim, 64, 32>;

template <class T>
struct FwdParams {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  index_t q_token_stride, q_head_stride;
  index_t k_token_stride, k_head_stride;
  index_t v_token_stride, v_head_stride;
  index_t out_token_stride, out_head_stride;
  index_t n_q, n_k, q_offset, group;
  int dim;      // real head dim
  int dim_pad;  // dim rounded up to 16: the columns the mma loops touch
  float scale;  // softmax scale (natural base), for the LSE
  float scale_log2;  // scale * log2(e): scores go through exp2
  float* lse;   // [q_heads][n_q] or null
  // 16-byte vector access is legal (base, strides and dim all multiples of 8
  // elements); otherwise the element-wise path runs. Checked on the host.
  bool vec_q, vec_kv, vec_out;
  // Decode path: splits > 1 writes fp32 partials [split][q_head][n_q][dim_pad]
  // and their LSE [split][q_head][n_q] for the merge kernel instead of `out`.
  int splits;
  float* part_out;
  float* part_lse;
};

}  // namespace ism::cuda
