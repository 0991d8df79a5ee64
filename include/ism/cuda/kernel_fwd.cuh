#pragma once
// The prefill kernel: one thread block per (query block, query head, key
// split) of each request of the launch, 16 query rows per warp, S = Q K^T and
// O += P V on tensor cores (mma.sync m16n8k16, fp32 accumulators), online
// softmax in registers.
//
// The mask enters twice and nowhere else: the block's key-block range comes
// from plan_key_blocks (Empty blocks are never loaded), and inside the loop a
// block that is not Full gets its scores clipped to each row's [lo, hi).
// Everything that varies by call but not inside the loop is a template
// parameter (head dim, vector loads, modifiers, split), chosen once at the
// entry (launch.cuh).
#include "ism/core/split_merge.hpp"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/params.cuh"
#include "ism/cuda/tile_io.cuh"
#include "ism/mask/tile_kind.hpp"

namespace ism::cuda::detail {

template <class Traits, class T, class KV, class Mask, int kMaxRequests, bool kVec, int kMods, bool kSplit>
__global__ void __launch_bounds__(Traits::kThreads)
    attention_fwd_kernel(const LaunchParams<T, KV, Mask, kMaxRequests> p) {
  constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN, D = Traits::kDim, S = Traits::kStride;
  constexpr int kThreads = Traits::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* kv_s = q_s + BM * S;  // stage st: K at kv_s + st * 2 * BN * S, V right after K

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const Request<T, KV, Mask> rq = p.req[request_of_block(p, blockIdx.x)];
  const index_t local = index_t(blockIdx.x) - rq.block_begin;
  const index_t q_blocks = (rq.n_q + BM - 1) / BM;
  // Later query blocks see more keys under every mask here; launching them
  // first keeps the tail of the grid short.
  const index_t h = local % rq.q_heads, qb = q_blocks - 1 - local / rq.q_heads;
  const index_t kh = h / rq.group;
  const int split = kSplit ? int(blockIdx.z) : 0;
  const index_t t0 = qb * BM;
  const index_t rows = rq.n_q - t0 < BM ? rq.n_q - t0 : BM;
  const index_t q0 = rq.q_offset + t0;

  const KeyBlockPlan plan = plan_key_blocks(rq.mask, q0, q0 + rows, rq.n_k, BN);
  const BlockRange share = split_share(plan.visits(), kSplit ? p.split.splits : 1, split);
  const index_t b_begin = plan.visit_begin + share.begin, b_end = plan.visit_begin + share.end;

  auto load_kv = [&](index_t b, int stage) {
    T* k_s = kv_s + stage * 2 * BN * S;
    const index_t k0 = b * BN, valid = rq.n_k - k0 < BN ? rq.n_k - k0 : BN;
    load_tile<kVec, kThreads, D>(k_s, S, [&](index_t r) { return rq.kv.key(k0 + r, kh); }, valid, BN, p.dim, tid);
    load_tile<kVec, kThreads, D>(k_s + BN * S, S, [&](index_t r) { return rq.kv.value(k0 + r, kh); }, valid, BN,
                                 p.dim, tid);
  };
  const T* q_g = rq.q + h * rq.q_head_stride + t0 * rq.q_token_stride;
  load_tile<kVec, kThreads, D>(q_s, S, [&](index_t r) { return q_g + r * rq.q_token_stride; }, rows, BM, p.dim, tid);
  if (b_begin < b_end) load_kv(b_begin, 0);
  cp_async_commit();

  // This thread's two rows (g and g + 8 of the warp's 16) and what they see.
  // Rows past the call's own see nothing: a policy need not answer for them.
  const int r_lo = warp * 16 + frag::c_row(lane, 0);
  const bool warp_active = warp * 16 < rows;
  KeyRange seen[2];
  for (int i = 0; i < 2; ++i)
    seen[i] = r_lo + 8 * i < rows ? visible_keys(rq.mask, q0 + r_lo + 8 * i, rq.n_k) : KeyRange{0, 0};
  const float slope2 = (kMods & kModAlibi) != 0 ? p.score.alibi[h] * kLog2e : 0.f;
  // m: running max of scores (log2 units); l: this thread's share of the
  // running sum of exp2(score - m) over its columns (summed over the quad at
  // the end); o: the unnormalised output rows, fp32.
  float m[2] = {-HUGE_VALF, -HUGE_VALF}, l[2] = {0.f, 0.f};
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
    float s[BN / 8][4];
    score_tile<T, D, BN, S>(s, q_s + warp * 16 * S, k_s, lane);

    // Scale before the max: the scale may be negative, and then the largest
    // raw score is not the largest scaled one.
    const index_t key0 = b * BN;
    const bool full = plan.is_full(b);
    // Row minus key of this thread's first row and the tile's first key.
    const float d0 = (kMods & kModAlibi) != 0 ? float(q0 + r_lo - key0) : 0.f;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const index_t key = key0 + j * 8 + frag::c_col(lane, e);
        const float dist = fabsf(d0 + float(8 * (e >> 1) - j * 8 - frag::c_col(lane, e)));
        float x = modified_score<kMods>(s[j][e], p.score, slope2, dist);
        if (!full && !seen[e >> 1].contains(key)) x = -HUGE_VALF;
        s[j][e] = x;
      }
    online_softmax(s, m, l, o);
    pv_tile<T, D, BN, S>(o, s, k_s + BN * S, lane);
  }

  // No copy may still be landing in q_s (a block that visited nothing never
  // waited for its Q load), and other warps' threads loaded this warp's rows.
  cp_async_wait_all();
  __syncthreads();
  if (!warp_active) return;

  constexpr unsigned kAll = 0xffffffffu;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(kAll, l[i], 1);
    l[i] += __shfl_xor_sync(kAll, l[i], 2);
  }

  if constexpr (kSplit) {
    // This split's chunk state (core/split_merge.hpp); the merge kernel
    // finishes the row, sinks included.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = r_lo + 8 * i;
      if (r >= rows) continue;
      const index_t row = index_t(split) * p.split.rows + rq.row_begin + h * rq.n_q + t0 + r;
      float* dst = p.split.o + row * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<float2*>(dst + n * 8 + frag::c_col(lane, 0)) = make_float2(o[n][2 * i], o[n][2 * i + 1]);
      if (frag::c_col(lane, 0) == 0) {
        p.split.m[row] = m[i];
        p.split.l[row] = l[i];
      }
    }
    return;
  } else {
    const float sink2 = p.score.sinks != nullptr ? p.score.sinks[h] * kLog2e : -HUGE_VALF;
    FinishedRow fin[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) fin[i] = finish_row(m[i], l[i], sink2);

    // Stage the warp's 16 output rows in its own rows of q_s (no other warp
    // reads them), then write them out with 16-byte stores where legal.
    __syncwarp();
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        *reinterpret_cast<unsigned*>(q_s + (r_lo + 8 * i) * S + n * 8 + frag::c_col(lane, 0)) =
            pack2<T>(o[n][2 * i] * fin[i].inv, o[n][2 * i + 1] * fin[i].inv);
    __syncwarp();
    const T* stage_rows = q_s + warp * 16 * S;
    T* out_g = rq.out + h * rq.out_head_stride + (t0 + warp * 16) * rq.out_token_stride;
    const int warp_rows = rows - warp * 16 < 16 ? int(rows - warp * 16) : 16;
    if constexpr (kVec) {
      const int chunks = p.dim / 8;
      for (int i = lane; i < warp_rows * chunks; i += 32) {
        const int r = i / chunks, c = (i % chunks) * 8;
        *reinterpret_cast<uint4*>(out_g + r * rq.out_token_stride + c) =
            *reinterpret_cast<const uint4*>(stage_rows + r * S + c);
      }
    } else {
      for (int i = lane; i < warp_rows * p.dim; i += 32) {
        const int r = i / p.dim, c = i % p.dim;
        out_g[r * rq.out_token_stride + c] = stage_rows[r * S + c];
      }
    }
    if (rq.lse != nullptr && frag::c_col(lane, 0) == 0)
      for (int i = 0; i < 2; ++i)
        if (r_lo + 8 * i < rows) rq.lse[h * rq.n_q + t0 + r_lo + 8 * i] = fin[i].lse;
  }
}

}  // namespace ism::cuda::detail
