#pragma once
// The decode path: when a launch has too few (query block, head) pairs to fill
// the GPU (a few new tokens against a long cache), the forward kernel splits
// each block's keys across gridDim.z thread blocks that write fp32 partial
// outputs with their LSE; this kernel merges them (block_plan.hpp has the
// arithmetic and the host tests that check it).
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/element.cuh"

namespace ism::cuda::detail {

// One thread block per (query row, query head); threads stride over dim.
template <class T>
__global__ void merge_splits_kernel(const float* part_out, const float* part_lse, T* out, index_t out_token_stride,
                                    index_t out_head_stride, float* lse, index_t n_q, int dim, int dim_pad,
                                    int splits) {
  const index_t t = blockIdx.x, h = blockIdx.y;
  const index_t row = h * n_q + t, split_stride = index_t(gridDim.y) * n_q;
  const float all = merged_lse(part_lse + row, splits, split_stride);
  T* dst = out + t * out_token_stride + h * out_head_stride;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float w = split_weight(part_lse[s * split_stride + row], all);
      // A split that saw no key has weight 0; skip it rather than trust 0 * x.
      if (w != 0.f) acc += w * part_out[(s * split_stride + row) * dim_pad + d];
    }
    dst[d] = from_float<T>(acc);
  }
  if (lse != nullptr && threadIdx.x == 0) lse[row] = all;
}

}  // namespace ism::cuda::detail
