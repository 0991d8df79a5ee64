#pragma once
// The tile plan of the CUDA kernel, in plain C++ so the host can test it: which
// key blocks a block of query rows visits, which of them are Full (run with no
// mask code), and how a long cache is split across thread blocks.
//
// Unlike the .cuh headers beside it, this file needs no CUDA: every function is
// ISM_HOST_DEVICE, so the kernel and the host tests run the very same code.
#include "ism/core/config.hpp"
#include "ism/mask/segment.hpp"
#include "ism/mask/tile_kind.hpp"

namespace ism::cuda {

// Key blocks [visit_begin, visit_end) hold every key any row of the query block
// sees; blocks outside are never loaded. Blocks [full_begin, full_end) are seen
// whole by every row (full_begin == full_end when none is).
struct KeyBlockPlan {
  index_t visit_begin = 0, visit_end = 0;
  index_t full_begin = 0, full_end = 0;
  ISM_HOST_DEVICE index_t visits() const { return visit_end - visit_begin; }
  ISM_HOST_DEVICE bool is_full(index_t b) const { return full_begin <= b && b < full_end; }
};

// Query rows are absolute positions [q0, q1), q0 < q1; keys are [0, n_k) in
// blocks of block_n. Visits are exact except where a row of the block sees no
// key at all (padding): like classify_tile, the plan may then visit key blocks
// that end up fully masked, which costs time, never correctness. A block is Full only when it holds block_n real keys: the
// ragged last block has zero-filled columns past n_k that must be masked.
template <class Mask>
ISM_HOST_DEVICE KeyBlockPlan plan_key_blocks(const Mask& mask, index_t q0, index_t q1, index_t n_k,
                                             index_t block_n) {
  const RowBlockKeys rk = row_block_keys(mask, q0, q1, n_k);
  KeyBlockPlan p;
  // A corner row whose interval lies past the cache comes back empty but
  // positioned past n_k; clip, or blocks of keys that do not exist get visited.
  const index_t any_end = rk.any.end < n_k ? rk.any.end : n_k;
  if (any_end <= rk.any.begin) return p;
  p.visit_begin = rk.any.begin / block_n;
  p.visit_end = (any_end + block_n - 1) / block_n;
  if (!rk.all.empty()) {
    p.full_begin = (rk.all.begin + block_n - 1) / block_n;
    p.full_end = rk.all.end / block_n;
  }
  if (p.full_end <= p.full_begin) p.full_begin = p.full_end = p.visit_begin;
  return p;
}

// Split s of `splits` takes a contiguous, balanced share of n blocks: the shares
// are disjoint, cover [0, n) and differ in size by at most one block.
struct BlockRange {
  index_t begin, end;
};
ISM_HOST_DEVICE BlockRange split_share(index_t n, int splits, int s) {
  const index_t base = n / splits, extra = n % splits;
  const index_t begin = s * base + (s < extra ? s : extra);
  return {begin, begin + base + (s < extra ? 1 : 0)};
}

// How many thread blocks share one query block's keys (the decode path). A
// launch with at least one wave of blocks needs no split; below that, splitting
// the keys fills the GPU, as long as every split keeps `min_blocks_per_split`
// key blocks (each split costs a partial write and a share of the merge).
inline int choose_kv_splits(index_t launch_blocks, index_t key_blocks, int sm_count, int max_splits = 64,
                            index_t min_blocks_per_split = 4) {
  if (launch_blocks <= 0 || key_blocks <= 0 || sm_count <= 0) return 1;
  if (launch_blocks >= sm_count) return 1;
  index_t want = (2 * index_t(sm_count) + launch_blocks - 1) / launch_blocks;
  const index_t cap = key_blocks / min_blocks_per_split;
  if (want > cap) want = cap;
  if (want > max_splits) want = max_splits;
  return want < 1 ? 1 : int(want);
}

// The splits' partial results merge by the rule of ism/core/split_merge.hpp,
// which the CPU key chunks follow too.

}  // namespace ism::cuda
