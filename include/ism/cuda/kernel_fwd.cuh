#pragma once
// The fused forward kernel: one thread block per (query block, query head,
// key split), 16 query rows per warp, S = Q K^T and O += P V on tensor cores
// (mma.sync m16n8k16, fp32 accumulators), online softmax in registers.
//
// The mask enters twice and nowhere else: the block's key-block range comes
// from plan_key_blocks (Empty blocks are never loaded), and inside the loop a
// block that is not Full gets its scores clipped to each row's [lo, hi).
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/element.cuh"
#include "ism/cuda/fragment.hpp"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/mma.cuh"

namespace ism::cuda::detail {

// Copies `rows_valid` rows of `cols` elements (cols a multiple of 8) from a
// strided global tile into shared memory and zero-fills up to `rows_total` rows
// and past `dim`: zero K columns add nothing to a dot product, and zero V rows
// keep 0 * garbage (possibly NaN) out of P V.
template <int kThreads, class T>
__device__ inline void load_rows(T* dst, int dst_stride, const T* src, index_t src_stride, index_t rows_valid,
                                 int rows_total, int cols, int dim, bool vec, int tid) {
  if (vec) {
    const int chunks = cols / 8;
    for (int i = tid; i < rows_total * chunks; i += kThreads) {
      const int r = i / chunks, c = (i % chunks) * 8;
      const bool valid = r < rows_valid && c < dim;
      cp_async_16(dst + r * dst_stride + c, valid ? src + r * src_stride + c : src, valid);
    }
  } else {
    const T zero = from_float<T>(0.f);
    for (int i = tid; i < rows_total * cols; i += kThreads) {
      const int r = i / cols, c = i % cols;
      dst[r * dst_stride + c] = r < rows_valid && c < dim ? src[r * src_stride + c] : zero;
    }
  }
}

template <class Traits, class T, class Mask>
__global__ void __launch_bounds__(Traits::kThreads)
    attention_fwd_kernel(const FwdParams<T> p, const Mask mask) {
  constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN, D = Traits::kDim, S = Traits::kStride;
  constexpr bool kGeneric = D == kMaxGenericDim;
  constexpr unsigned kAll = 0xffffffffu;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* kv_s = q_s + BM * S;  // stage st: K at kv_s + st * 2 * BN * S, V right after K

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Later query blocks see more keys under every mask here; launching them
  // first keeps the tail of the grid short.
  const index_t qb = index_t(gridDim.x) - 1 - blockIdx.x;
  const index_t h = blockIdx.y, kh = h / p.group;
  const int split = blockIdx.z;
  const index_t t0 = qb * BM;
  const index_t rows = p.n_q - t0 < BM ? p.n_q - t0 : BM;
  const index_t q0 = p.q_offset + t0;
  const int cols = kGeneric ? p.dim_pad : D;

  const KeyBlockPlan plan = plan_key_blocks(mask, q0, q0 + rows, p.n_k, BN);
  const BlockRange share = split_share(plan.visits(), p.splits, split);
  const index_t b_begin = plan.visit_begin + share.begin, b_end = plan.visit_begin + share.end;

  const T* q_g = p.q + h * p.q_head_stride + t0 * p.q_token_stride;
  const T* k_g = p.k + kh * p.k_head_stride;
  const T* v_g = p.v + kh * p.v_head_stride;
  auto load_kv = [&](index_t b, int stage) {
    T* k_s = kv_s + stage * 2 * BN * S;
    const index_t k0 = b * BN, valid = p.n_k - k0 < BN ? p.n_k - k0 : BN;
    load_rows<Traits::kThreads>(k_s, S, k_g + k0 * p.k_token_stride, p.k_token_stride, valid, BN, cols, p.dim,
                                p.vec_kv, tid);
    load_rows<Traits::kThreads>(k_s + BN * S, S, v_g + k0 * p.v_token_stride, p.v_token_stride, valid, BN, cols,
                                p.dim, p.vec_kv, tid);
  };
  load_rows<Traits::kThreads>(q_s, S, q_g, p.q_token_stride, rows, BM, cols, p.dim, p.vec_q, tid);
  if (b_begin < b_end) load_kv(b_begin, 0);
  cp_async_commit();

  // This thread's two rows (g and g + 8 of the warp's 16) and what they see.
  const int r_lo = warp * 16 + frag::c_row(lane, 0);
  const bool warp_active = warp * 16 < rows;
  KeyRange seen[2];
  for (int i = 0; i < 2; ++i) seen[i] = visible_keys(mask, q0 + r_lo + 8 * i, p.n_k);
  // m: running max of scaled scores (log2 units); l: this thread's share of
  // the running sum of exp2(score - m) over its columns (summed over the quad
  // at the end); o: the unnormalised output rows, fp32.
  float m[2] = {neg_infinity(), neg_infinity()}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (index_t b = b_begin; b < b_end; ++b) {
    const int stage = int(b - b_begin) & 1;
    // Tile b has landed for every thread, and every warp is done with tile
    // b - 1, whose buffer the prefetch below overwrites.
    cp_async_wait_all();
    __syncthreads();
    if (b + 1 < b_end) load_kv(b + 1, stage ^ 1);
    cp_async_commit();
    if (!warp_active) continue;

    const T* k_s = kv_s + stage * 2 * BN * S;
    const T* v_s = k_s + BN * S;
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      if (kGeneric && kk * 16 >= cols) break;
      unsigned a[4];
      ldmatrix_x4(a, q_s + (warp * 16 + frag::a_row(lane)) * S + kk * 16 + frag::a_col(lane));
#pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        unsigned bk[4];  // B fragments of key tiles j and j + 1
        ldmatrix_x4(bk, k_s + (j * 8 + frag::bt_row(lane)) * S + kk * 16 + frag::bt_col(lane));
        mma_16816<T>(s[j], a, bk[0], bk[1]);
        mma_16816<T>(s[j + 1], a, bk[2], bk[3]);
      }
    }

    // Scale before the max: the scale may be negative, and then the largest
    // raw score is not the largest scaled one.
    const index_t key0 = b * BN;
    const bool full = plan.is_full(b);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * p.scale_log2;
        if (!full && !seen[e >> 1].contains(key0 + j * 8 + frag::c_col(lane, e))) x = neg_infinity();
        s[j][e] = x;
      }

    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
    }
    float base[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // The four threads of a quad hold one row between them.
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(kAll, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(kAll, mx[i], 2));
      // A row that has seen no key yet has max -inf; subtracting it would
      // give -inf - -inf = NaN, so shift by 0 instead (every exp2 is then 0).
      base[i] = mx[i] == neg_infinity() ? 0.f : mx[i];
      const float alpha = exp2f(m[i] - base[i]);
      m[i] = mx[i];
      l[i] *= alpha;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * i] *= alpha;
        o[n][2 * i + 1] *= alpha;
      }
    }
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[j][e] - base[e >> 1]);
        s[j][e] = pe;
        l[e >> 1] += pe;
      }

#pragma unroll
    for (int c = 0; c < BN / 16; ++c) {
      // Score tiles 2c and 2c+1 (C layout) are the A fragment of keys 16c..16c+15.
      const unsigned a[4] = {pack2<T>(s[2 * c][0], s[2 * c][1]), pack2<T>(s[2 * c][2], s[2 * c][3]),
                             pack2<T>(s[2 * c + 1][0], s[2 * c + 1][1]),
                             pack2<T>(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        if (kGeneric && n * 8 >= cols) break;
        unsigned bv[4];  // B fragments of output columns n*8.. and n*8+8..
        ldmatrix_x4_trans(bv, v_s + (c * 16 + frag::b_row(lane)) * S + n * 8 + frag::b_col(lane));
        mma_16816<T>(o[n], a, bv[0], bv[1]);
        mma_16816<T>(o[n + 1], a, bv[2], bv[3]);
      }
    }
  }

  // No copy may still be landing in q_s (a block that visited nothing never
  // waited for its Q load), and other warps' threads loaded this warp's rows.
  cp_async_wait_all();
  __syncthreads();
  if (!warp_active) return;

  float inv[2], lse[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(kAll, l[i], 1);
    l[i] += __shfl_xor_sync(kAll, l[i], 2);
    // A row that saw no key: output 0 and LSE -inf, never 0/0.
    inv[i] = l[i] > 0.f ? 1.f / l[i] : 0.f;
    lse[i] = l[i] > 0.f ? m[i] * 0.69314718055994531f + logf(l[i]) : neg_infinity();
  }

  if (p.splits > 1) {
    const index_t part_row0 = (index_t(split) * gridDim.y + h) * p.n_q + t0;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = r_lo + 8 * i;
      if (r >= rows) continue;
      float* dst = p.part_out + (part_row0 + r) * p.dim_pad;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        if (kGeneric && n * 8 >= cols) break;
        *reinterpret_cast<float2*>(dst + n * 8 + frag::c_col(lane, 0)) =
            make_float2(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
      }
      if (frag::c_col(lane, 0) == 0) p.part_lse[part_row0 + r] = lse[i];
    }
    return;
  }

  // Stage the warp's 16 output rows in its own rows of q_s (no other warp
  // reads them), then write them out with 16-byte stores where legal.
  __syncwarp();
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    if (kGeneric && n * 8 >= cols) break;
#pragma unroll
    for (int i = 0; i < 2; ++i)
      *reinterpret_cast<unsigned*>(q_s + (r_lo + 8 * i) * S + n * 8 + frag::c_col(lane, 0)) =
          pack2<T>(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]);
  }
  __syncwarp();
  const T* stage_rows = q_s + warp * 16 * S;
  T* out_g = p.out + h * p.out_head_stride + (t0 + warp * 16) * p.out_token_stride;
  const int warp_rows = rows - warp * 16 < 16 ? int(rows - warp * 16) : 16;
  if (p.vec_out) {
    const int chunks = p.dim / 8;
    for (int i = lane; i < warp_rows * chunks; i += 32) {
      const int r = i / chunks, c = (i % chunks) * 8;
      *reinterpret_cast<uint4*>(out_g + r * p.out_token_stride + c) =
          *reinterpret_cast<const uint4*>(stage_rows + r * S + c);
    }
  } else {
    for (int i = lane; i < warp_rows * p.dim; i += 32) {
      const int r = i / p.dim, c = i % p.dim;
      out_g[r * p.out_token_stride + c] = stage_rows[r * S + c];
    }
  }
  if (p.lse != nullptr && frag::c_col(lane, 0) == 0)
    for (int i = 0; i < 2; ++i)
      if (r_lo + 8 * i < rows) p.lse[h * p.n_q + t0 + r_lo + 8 * i] = lse[i];
}

}  // namespace ism::cuda::detail
