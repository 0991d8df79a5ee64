#pragma once
// Tile shapes of the forward kernel, one set per compiled head dimension, and
// the parameters every launch passes by value.
#include <cstdint>

#include "ism/core/validate.hpp"
#include "ism/core/config.hpp"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/check.cuh"
#include "ism/cuda/element.cuh"

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


namespace detail {

template <class T>
bool vec_ok(const HeadsView<T>& v) {
  return reinterpret_cast<std::uintptr_t>(v.data) % 16 == 0 && v.token_stride % 8 == 0 &&
         v.head_stride % 8 == 0 && v.dim % 8 == 0;
}

// The kernel's parameters for a checked call; the buffers are reinterpreted
// as CUDA's own 16-bit types (element.cuh).
template <class T>
FwdParams<device_element_t<T>> make_params(HeadsView<const T> q, HeadsView<const T> k, HeadsView<const T> v,
                                           HeadsView<T> out, const AttentionShape& s, float* lse) {
  using E = device_element_t<T>;
  FwdParams<E> p{};
  p.q = reinterpret_cast<const E*>(q.data);
  p.k = reinterpret_cast<const E*>(k.data);
  p.v = reinterpret_cast<const E*>(v.data);
  p.out = reinterpret_cast<E*>(out.data);
  p.q_token_stride = q.token_stride, p.q_head_stride = q.head_stride;
  p.k_token_stride = k.token_stride, p.k_head_stride = k.head_stride;
  p.v_token_stride = v.token_stride, p.v_head_stride = v.head_stride;
  p.out_token_stride = out.token_stride, p.out_head_stride = out.head_stride;
  p.n_q = s.n_q, p.n_k = s.n_k, p.q_offset = s.q_offset, p.group = s.group;
  p.dim = int(s.dim);
  p.dim_pad = int((s.dim + 15) / 16 * 16);
  p.scale = s.scale;
  p.scale_log2 = s.scale * 1.4426950408889634f;
  p.lse = lse;
  p.vec_q = vec_ok(q);
  p.vec_kv = vec_ok(k) && vec_ok(v);
  p.vec_out = vec_ok(out);
  p.splits = 1;
  return p;
}

// Thread blocks per query block along the keys: `requested` (LaunchOptions::
// kv_splits) or, for 0, choose_kv_splits; never more than there are key blocks.
template <class Traits, class E>
int plan_splits(const FwdParams<E>& p, index_t q_heads, int requested, int sm_count) {
  const index_t q_blocks = (p.n_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const index_t key_blocks = (p.n_k + Traits::kBlockN - 1) / Traits::kBlockN;
  int splits = requested != 0 ? requested : choose_kv_splits(q_blocks * q_heads, key_blocks, sm_count);
  if (splits > key_blocks) splits = key_blocks < 1 ? 1 : int(key_blocks);
  return splits;
}

// Runtime dim -> compile-time tile shapes, once, at the entry point.
template <class F>
void dispatch_dim(index_t dim, F&& f) {
  if (dim == 64) f(Traits64{});
  else if (dim == 128) f(Traits128{});
  else f(TraitsGeneric{});
}

}  // namespace detail
}  // namespace ism::cuda
