#pragma once
// Merging the key splits of a launch: each split left, per row, a chunk state
// (m, l, unnormalised o; core/split_merge.hpp); one thread block per row
// merges them by that rule, finishes the row (sinks join here, once) and
// writes the output and the LSE.
#include "ism/core/split_merge.hpp"
#include "ism/cuda/element.cuh"
#include "ism/cuda/params.cuh"
#include "ism/cuda/tile_io.cuh"

namespace ism::cuda::detail {

// Most splits of one launch (the merge keeps one weight per split in shared
// memory).
inline constexpr int kMaxSplits = 64;

template <class T, int kMaxRequests>
__global__ void merge_splits_kernel(const MergeParams<kMaxRequests> p) {
  // Dynamic shared memory, not a __shared__ array: the CPU emulator gives
  // every emulated thread of a block the same dynamic buffer.
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* weight = reinterpret_cast<float*>(smem_raw);  // [kMaxSplits], then 1 / denominator
  const index_t row = blockIdx.x;
  int r = 0;
  while (r + 1 < p.count && row >= p.req[r + 1].row_begin) ++r;
  const MergeTarget tg = p.req[r];
  const index_t local = row - tg.row_begin, h = local / tg.n_q, t = local % tg.n_q;
  const SplitParams& sp = p.split;
  if (threadIdx.x == 0) {
    const float sink2 = p.sinks != nullptr ? p.sinks[h] * kLog2e : -HUGE_VALF;
    const FinishedRow fin = merge_chunks_row(sp.m + row, sp.l + row, sp.splits, sp.rows, sink2, weight);
    weight[kMaxSplits] = fin.inv;
    if (tg.lse != nullptr) tg.lse[h * tg.n_q + t] = fin.lse;
  }
  __syncthreads();
  const float inv = weight[kMaxSplits];
  T* dst = static_cast<T*>(tg.out) + t * tg.out_token_stride + h * tg.out_head_stride;
  for (int d = threadIdx.x; d < p.dim; d += blockDim.x) {
    const float x = merge_value(weight, sp.l + row, sp.rows, sp.o + row * p.stride + d, sp.rows * p.stride, sp.splits);
    dst[d] = from_float<T>(x * inv);
  }
}

}  // namespace ism::cuda::detail
