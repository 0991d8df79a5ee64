#pragma once
// How the backward pass is cut into tasks, from shapes and the rows' key
// bounds only (never from the thread count, so results are bit-identical for
// any number of threads and any way of running the tasks).
//
// A task is a chunk of one KV head's query tiles (every query head of the
// group, tile by tile, heads of one tile next to each other). It owns the dQ of
// its rows outright, and adds into its own fp32 dK/dV accumulator slot: no two
// tasks write the same memory, so there are no atomics. dK and dV of a KV head
// are then the chunks' slots summed in chunk order (a reduction pass over key
// tiles). One chunk per KV head when there are enough KV heads; otherwise the
// tiles are cut into chunks of about equal work (visible key tiles), so that
// few KV heads (MQA, batch of one) still give parallel work.
#include <algorithm>
#include <vector>

#include "ism/core/config.hpp"
#include "ism/core/isa_vector.hpp"
#include "ism/core/shape.hpp"
#include "ism/cpu/workspace.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism::cpu {
// Per instruction set, like the rest of the backend (core/isa.hpp): the plan's
// code is compiled in every translation unit that runs a backward pass.
inline namespace ISM_SIMD_NAMESPACE {

// Tasks the plan aims for (KV heads x chunks): enough for the pool to balance
// a few threads, fixed so the plan never depends on the thread count.
inline constexpr index_t backward_min_tasks = 8;
// Cap on the chunks' accumulator slots (chunks x KV heads x keys x dim x 2
// floats), so chunking never costs more memory than this on top of one slot
// per KV head.
inline constexpr index_t backward_slot_bytes = index_t(256) << 20;

struct BackwardChunk {
  index_t kv;                    // KV head
  index_t chunk;                 // index among the KV head's chunks (its slot)
  index_t begin, end;            // positions in the KV head's tile list
  index_t key_begin, key_end;    // key tiles its rows see (its slot's touched rows)
  index_t cost;                  // (query tile, key tile) steps
};

class BackwardPlan {
 public:
  BackwardPlan(const AttentionShape& s, const QueryBounds& bounds) : shape_(s) {
    using ism::detail::ceil_div;
    q_tiles_ = ceil_div(s.n_q, tile_q);
    // Key tiles each query tile visits: from the first key any of its rows
    // sees to the last (rows that see nothing add nothing), the tiles the
    // block map does not call Empty.
    tile_keys_.resize(static_cast<size_t>(2 * q_tiles_));
    for (index_t t = 0; t < q_tiles_; ++t) {
      const index_t r0 = t * tile_q, r1 = std::min(s.n_q, r0 + tile_q);
      index_t lo = s.n_k, hi = 0;
      for (index_t r = r0; r < r1; ++r) {
        const KeyRange k = bounds.keys(s.q_offset + r);
        if (k.end > k.begin) {
          lo = std::min(lo, k.begin);
          hi = std::max(hi, k.end);
        }
      }
      const index_t c0 = hi > lo ? lo / tile_k : 0, c1 = hi > lo ? ceil_div(hi, tile_k) : 0;
      tile_keys_[size_t(2 * t)] = c0;
      tile_keys_[size_t(2 * t + 1)] = c1;
    }
    const index_t list = q_tiles_ * s.group;
    index_t per_head = std::max<index_t>(1, ceil_div(backward_min_tasks, std::max<index_t>(1, s.kv_heads)));
    per_head = std::min(per_head, std::max<index_t>(1, list));
    const index_t slot_bytes = std::max<index_t>(1, s.kv_heads * key_rows() * s.dim * 2 * index_t(sizeof(float)));
    per_head = std::max<index_t>(1, std::min(per_head, backward_slot_bytes / slot_bytes));
    chunks_per_head_ = per_head;

    // Cut each KV head's list at equal shares of the work (the same cut for
    // every KV head: the mask is shared).
    isa_vector<index_t> prefix(static_cast<size_t>(list + 1), 0);
    for (index_t p = 0; p < list; ++p) prefix[size_t(p + 1)] = prefix[size_t(p)] + tile_cost(p / s.group);
    const index_t total = prefix[size_t(list)];
    isa_vector<index_t> cut{0};
    for (index_t c = 1; c < per_head; ++c) {
      const index_t want = total * c / per_head;
      index_t p = static_cast<index_t>(std::lower_bound(prefix.begin(), prefix.end(), want) - prefix.begin());
      p = std::clamp(p, cut.back(), list);
      cut.push_back(p);
    }
    cut.push_back(list);
    for (index_t g = 0; g < s.kv_heads; ++g)
      for (index_t c = 0; c < per_head; ++c) {
        BackwardChunk ch{g, c, cut[size_t(c)], cut[size_t(c + 1)], 0, 0, 0};
        index_t k0 = key_tiles(), k1 = 0;
        for (index_t p = ch.begin; p < ch.end; ++p) {
          const index_t t = p / s.group;
          if (tile_cost(t) == 0) continue;
          k0 = std::min(k0, first_key_tile(t));
          k1 = std::max(k1, end_key_tile(t));
        }
        ch.key_begin = k1 > k0 ? k0 : 0;
        ch.key_end = k1 > k0 ? k1 : 0;
        ch.cost = prefix[size_t(ch.end)] - prefix[size_t(ch.begin)] + 1;  // +1: packing, even for empty rows
        chunks_.push_back(ch);
      }
    // Hand out the largest tasks first.
    order_.resize(chunks_.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<index_t>(i);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](index_t a, index_t b) { return chunks_[size_t(a)].cost > chunks_[size_t(b)].cost; });
  }

  const AttentionShape& shape() const { return shape_; }
  index_t query_tiles() const { return q_tiles_; }
  index_t key_tiles() const { return ism::detail::ceil_div(shape_.n_k, tile_k); }
  // Key rows of the packed K/V and of each accumulator slot: n_k rounded up to
  // whole key tiles, the padding rows zero.
  index_t key_rows() const { return key_tiles() * tile_k; }
  index_t chunks_per_head() const { return chunks_per_head_; }
  const isa_vector<BackwardChunk>& chunks() const { return chunks_; }
  // Task i of the run is chunks()[order()[i]].
  const isa_vector<index_t>& order() const { return order_; }
  index_t first_key_tile(index_t t) const { return tile_keys_[size_t(2 * t)]; }
  index_t end_key_tile(index_t t) const { return tile_keys_[size_t(2 * t + 1)]; }
  index_t tile_cost(index_t t) const { return end_key_tile(t) - first_key_tile(t); }

 private:
  AttentionShape shape_;
  index_t q_tiles_ = 0, chunks_per_head_ = 1;
  isa_vector<index_t> tile_keys_;
  isa_vector<BackwardChunk> chunks_;
  isa_vector<index_t> order_;
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
