#pragma once
// The decode kernel: a few new tokens against a long cache. One thread block
// takes 16 packed rows, (query token, query head) pairs of ONE KV head's GQA
// group, so each K/V tile is read once for all the heads that share it, not
// once per query head. The block's keys (its split's share) are dealt out to
// its warps tile by tile; each warp runs its own double buffer and online
// softmax, so no warp only loads. At the end the warps' states merge by the
// rule of core/split_merge.hpp, and either the row is finished (one split) or
// the block's state goes to the split partials for merge.cuh.
#include "ism/core/split_merge.hpp"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/params.cuh"
#include "ism/cuda/tile_io.cuh"
#include "ism/mask/tile_kind.hpp"

namespace ism::cuda::detail {

template <class Traits, class T, class KV, class Mask, int kMaxRequests, bool kVec, int kMods, bool kSplit>
__global__ void __launch_bounds__(Traits::kThreads)
    attention_decode_kernel(const LaunchParams<T, KV, Mask, kMaxRequests> p) {
  constexpr int R = Traits::kRows, BN = Traits::kBlockN, D = Traits::kDim, S = Traits::kStride;
  constexpr int W = Traits::kWarps, kThreads = Traits::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* q_s = reinterpret_cast<T*>(smem_raw);
  T* kv_all = q_s + Traits::kQElems;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const Request<T, KV, Mask> rq = p.req[request_of_block(p, blockIdx.x)];
  const index_t kv_heads = rq.q_heads / rq.group;
  const index_t local = index_t(blockIdx.x) - rq.block_begin;
  const index_t kh = local % kv_heads, chunk = local / kv_heads;
  // Packed row pr (token-major over the group): token pr / group, query head
  // kh * group + pr % group.
  const index_t p0 = chunk * R, packed = rq.n_q * rq.group;
  const int rows = packed - p0 < R ? int(packed - p0) : R;
  const index_t t_first = p0 / rq.group, t_last = (p0 + rows - 1) / rq.group;
  const int split = kSplit ? int(blockIdx.z) : 0;

  // Every token between t_first and t_last has rows here, so the plan of
  // those query positions is the plan of the block's rows.
  const KeyBlockPlan plan = plan_key_blocks(rq.mask, rq.q_offset + t_first, rq.q_offset + t_last + 1, rq.n_k, BN);
  const BlockRange share = split_share(plan.visits(), kSplit ? p.split.splits : 1, split);
  const index_t b_begin = plan.visit_begin + share.begin, b_end = plan.visit_begin + share.end;

  load_tile<kVec, kThreads, D>(
      q_s, S,
      [&](index_t r) {
        const index_t pr = p0 + r;
        return rq.q + (pr / rq.group) * rq.q_token_stride + (kh * rq.group + pr % rq.group) * rq.q_head_stride;
      },
      rows, R, p.dim, tid);
  cp_async_commit();

  // This thread's two rows: what they see, where they are, their slope.
  KeyRange seen[2];
  index_t pos[2];
  float slope2[2];
  for (int i = 0; i < 2; ++i) {
    const int r = frag::c_row(lane, 2 * i);
    const index_t pr = p0 + r;
    pos[i] = rq.q_offset + pr / rq.group;
    seen[i] = r < rows ? visible_keys(rq.mask, pos[i], rq.n_k) : KeyRange{0, 0};
    slope2[i] = (kMods & kModAlibi) != 0 && r < rows ? p.score.alibi[kh * rq.group + pr % rq.group] * kLog2e : 0.f;
  }

  T* my_kv = kv_all + warp * Traits::kWarpElems;
  auto load_kv = [&](index_t b, int stage) {
    T* k_s = my_kv + stage * 2 * BN * S;
    const index_t k0 = b * BN, valid = rq.n_k - k0 < BN ? rq.n_k - k0 : BN;
    load_tile<kVec, 32, D>(k_s, S, [&](index_t r) { return rq.kv.key(k0 + r, kh); }, valid, BN, p.dim, lane);
    load_tile<kVec, 32, D>(k_s + BN * S, S, [&](index_t r) { return rq.kv.value(k0 + r, kh); }, valid, BN, p.dim,
                           lane);
  };

  float m[2] = {-HUGE_VALF, -HUGE_VALF}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  index_t b = b_begin + warp;
  if (b < b_end) load_kv(b, 0);
  cp_async_commit();
  // Q was loaded by every thread of the block.
  cp_async_wait_all();
  __syncthreads();
  for (int it = 0; b < b_end; b += W, ++it) {
    const int stage = it & 1;
    // This warp's tile b has landed, and all its lanes are done with the
    // stage the prefetch below overwrites.
    cp_async_wait_all();
    __syncwarp();
    if (b + W < b_end) load_kv(b + W, stage ^ 1);
    cp_async_commit();

    const T* k_s = my_kv + stage * 2 * BN * S;
    float s[BN / 8][4];
    score_tile<T, D, BN, S>(s, q_s, k_s, lane);
    const index_t key0 = b * BN;
    const bool full = plan.is_full(b);
    float d0[2] = {0.f, 0.f};  // row minus the tile's first key
    if constexpr ((kMods & kModAlibi) != 0)
      for (int i = 0; i < 2; ++i) d0[i] = float(pos[i] - key0);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const index_t key = key0 + j * 8 + frag::c_col(lane, e);
        const float dist = fabsf(d0[e >> 1] - float(j * 8 + frag::c_col(lane, e)));
        float x = modified_score<kMods>(s[j][e], p.score, slope2[e >> 1], dist);
        if (!full && !seen[e >> 1].contains(key)) x = -HUGE_VALF;
        s[j][e] = x;
      }
    online_softmax(s, m, l, o);
    pv_tile<T, D, BN, S>(o, s, k_s + BN * S, lane);
  }

  constexpr unsigned kAll = 0xffffffffu;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(kAll, l[i], 1);
    l[i] += __shfl_xor_sync(kAll, l[i], 2);
  }
  cp_async_wait_all();
  // Every warp is done with its K/V stages: that space now holds each warp's
  // state, o [R][D] then m [R] and l [R], fp32.
  __syncthreads();
  float* state = reinterpret_cast<float*>(kv_all);
  float* mine = state + warp * Traits::kStateFloats;
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = frag::c_row(lane, 2 * i);
      mine[r * D + n * 8 + frag::c_col(lane, 0)] = o[n][2 * i];
      mine[r * D + n * 8 + frag::c_col(lane, 0) + 1] = o[n][2 * i + 1];
    }
  if (frag::c_col(lane, 0) == 0)
    for (int i = 0; i < 2; ++i) {
      const int r = frag::c_row(lane, 2 * i);
      mine[R * D + r] = m[i];
      mine[R * D + R + r] = l[i];
    }
  __syncthreads();

  // Per row: the warps' weights (times 1 / denominator when the row is
  // finished here), in the space Q used.
  float* weight = reinterpret_cast<float*>(q_s);  // [R][W]
  if (tid < rows) {
    const int r = tid;
    const index_t pr = p0 + r, t = pr / rq.group, h = kh * rq.group + pr % rq.group;
    const float mx = merge_max(state + R * D + r, state + R * D + R + r, W, Traits::kStateFloats);
    float sum = 0.f;
    for (int w = 0; w < W; ++w) {
      const float* st = state + w * Traits::kStateFloats;
      weight[r * W + w] = merge_weight(st[R * D + r], st[R * D + R + r], mx);
      if (chunk_kept(st[R * D + R + r])) sum += weight[r * W + w] * st[R * D + R + r];
    }
    if constexpr (kSplit) {
      const index_t row = index_t(split) * p.split.rows + rq.row_begin + h * rq.n_q + t;
      p.split.m[row] = mx;
      p.split.l[row] = sum;
    } else {
      const float sink2 = p.score.sinks != nullptr ? p.score.sinks[h] * kLog2e : -HUGE_VALF;
      const FinishedRow fin = finish_row(mx, sum, sink2);
      for (int w = 0; w < W; ++w) weight[r * W + w] *= fin.inv;
      if (rq.lse != nullptr) rq.lse[h * rq.n_q + t] = fin.lse;
    }
  }
  __syncthreads();
  for (int i = tid; i < rows * p.dim; i += kThreads) {
    const int r = i / p.dim, d = i % p.dim;
    const float x = merge_value(weight + r * W, state + R * D + R + r, Traits::kStateFloats, state + r * D + d,
                                Traits::kStateFloats, W);
    const index_t pr = p0 + r, t = pr / rq.group, h = kh * rq.group + pr % rq.group;
    if constexpr (kSplit) p.split.o[(index_t(split) * p.split.rows + rq.row_begin + h * rq.n_q + t) * D + d] = x;
    else rq.out[t * rq.out_token_stride + h * rq.out_head_stride + d] = from_float<T>(x);
  }
}

}  // namespace ism::cuda::detail
