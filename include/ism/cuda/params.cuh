#pragma once
// What a kernel launch receives, by value in its parameter space: up to
// kMaxRequests sequences (one for ism::cuda::attention, a chunk of a batch for
// attention_batch), each with its own buffers, mask and offsets, and the
// options shared by all of them. Passing them by value costs no copy, no
// allocation and no synchronisation on the host: the launch carries them.
#include <cstdint>
#include <type_traits>

#include "ism/core/config.hpp"
#include "ism/cuda/check.cuh"
#include "ism/cuda/element.cuh"

namespace ism::cuda::detail {

// K and V as two strided views: row (t, h) at base + t * token_stride +
// h * head_stride.
template <class T>
struct ContiguousSource {
  const T* k;
  const T* v;
  index_t k_token_stride, k_head_stride;
  index_t v_token_stride, v_head_stride;
  __host__ __device__ const T* key(index_t t, index_t h) const { return k + t * k_token_stride + h * k_head_stride; }
  __host__ __device__ const T* value(index_t t, index_t h) const {
    return v + t * v_token_stride + h * v_head_stride;
  }
};

// K and V through a block table (kv/paged_view.hpp's layout): pages of
// [page_size][heads][dim]; token t lives in page table[t / page_size] at slot
// t % page_size. Pages, table and pools are device memory.
template <class T, class I>
struct PagedSource {
  const T* k;
  const T* v;
  const I* table;
  index_t page_size, heads, dim;
  __host__ __device__ index_t offset(index_t t, index_t h) const {
    const index_t page = index_t(table[t / page_size]);
    return ((page * page_size + t % page_size) * heads + h) * dim;
  }
  __host__ __device__ const T* key(index_t t, index_t h) const { return k + offset(t, h); }
  __host__ __device__ const T* value(index_t t, index_t h) const { return v + offset(t, h); }
};

// One sequence of a launch.
template <class T, class KV, class Mask>
struct Request {
  const T* q;
  index_t q_token_stride, q_head_stride;
  T* out;
  index_t out_token_stride, out_head_stride;
  float* lse;  // [q_heads][n_q] or null
  KV kv;
  Mask mask;
  index_t n_q, n_k, q_offset;
  index_t q_heads, group;  // group: query heads per KV head
  index_t block_begin;     // its first block along grid x
  index_t row_begin;       // its first row (h * n_q + t) in the split partials
};

// Score modifiers (AttentionOptions), resolved for the kernel: scores are in
// log2 units. Which of them are on is a template parameter of the kernels
// (kMods); these are their values.
enum : int { kModSoftcap = 1, kModAlibi = 2 };
struct ScoreParams {
  float scale_log2;     // scale * log2 e (softcap off)
  float softcap_in;     // scale / softcap (softcap on: tanh's argument per q.k)
  float softcap_log2;   // softcap * log2 e (softcap on)
  const float* alibi;   // [q_heads] slopes, natural units, device memory
  const float* sinks;   // [q_heads] logits, natural units, device memory
};

// Where split partials go: chunk states of ism/core/split_merge.hpp, rows
// h * n_q + t of request r at row_begin + ..., `rows` rows per split.
struct SplitParams {
  int splits;
  index_t rows;
  float* o;  // [split][rows][kDim]
  float* m;  // [split][rows]
  float* l;  // [split][rows]
};

template <class T, class KV, class Mask, int kMaxRequests>
struct LaunchParams {
  Request<T, KV, Mask> req[kMaxRequests];
  int count;
  int dim;  // the real head dim (<= the kernel's kDim; columns past it are zero)
  ScoreParams score;
  SplitParams split;
};

// The request that grid block `b` belongs to (requests are few: a scan).
template <class P>
__host__ __device__ inline int request_of_block(const P& p, index_t b) {
  int r = 0;
  while (r + 1 < p.count && b >= p.req[r + 1].block_begin) ++r;
  return r;
}

// The merge kernel's view of a launch: where each request's rows go.
struct MergeTarget {
  void* out;
  index_t out_token_stride, out_head_stride;
  float* lse;
  index_t n_q, row_begin;
};
template <int kMaxRequests>
struct MergeParams {
  MergeTarget req[kMaxRequests];
  int count;
  int dim, stride;  // real dim; row stride of the partial outputs
  const float* sinks;
  SplitParams split;
};

}  // namespace ism::cuda::detail
