#pragma once
// Per-thread scratch of the fused kernel: O(tile) floats, never O(N^2).
// One Workspace per thread (thread_local), grown on demand and reused across
// calls, so steady-state attention allocates nothing.
#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>

#include "ism/core/config.hpp"
#include "ism/core/isa.hpp"

namespace ism::cpu {

// Query rows and keys per tile. Both are multiples of every vector width and
// register block used by the SIMD paths. Tests build BlockMaps with these.
inline constexpr index_t tile_q = 64;
inline constexpr index_t tile_k = 64;

inline namespace ISM_SIMD_NAMESPACE {

struct AlignedFree {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedBuffer = std::unique_ptr<float[], AlignedFree>;

inline AlignedBuffer aligned_floats(index_t n) {
  return AlignedBuffer(static_cast<float*>(::operator new[](static_cast<std::size_t>(n) * sizeof(float),
                                                             std::align_val_t(64))));
}

// Most query tiles that share one packed key tile. The planner (run.hpp) picks
// how many a task really uses, from the cache footprint and the parallelism it
// needs; each key tile is packed from the cache once per task, so bigger groups
// read the (strided, poorly prefetched) K/V rows fewer times.
inline constexpr index_t max_q_tiles = 16;

// The buffers one (query tile, key tile) step works on, for a padded head dim
// dp (dim rounded up to the vector width):
//   qt                  the query tile, pre-scaled and packed in panels of
//                       S::s_vecs row vectors (cpu/tile_ops.hpp): panel p
//                       holds [dp][its rows], rows in the vector lanes
//   o  [tile_q][dp]     its unnormalised output accumulator
//   m, l, alpha, lo, hi [tile_q]: running max, running sum, rescale factor,
//                       and the tile-relative key bounds of each row
//   slope, rel [tile_q] ALiBi: each row's slope (log2 units) and its position
//                       relative to the key tile's first key
//   kp, vp [tile_k][dp] the key and value tile in fp32 (shared by the group)
//   st [tile_k][tile_q] scores, then probabilities (transposed: rows in lanes)
struct TileBuffers {
  index_t dp = 0;
  float *qt = nullptr, *o = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr, *lo = nullptr, *hi = nullptr;
  float *slope = nullptr, *rel = nullptr;
  float *kp = nullptr, *vp = nullptr, *st = nullptr;
  // Score modifiers (ScoreMods, in the units the scores are in): the softcap
  // pass runs when softcap2 != 0, the ALiBi pass when alibi is set.
  float softcap2 = 0.f;
  bool alibi = false;
  // Cache rows the tile loop will touch soon (K/V rows of the next key tile,
  // Q rows of the next query tile, this tile's output rows): the step
  // prefetches them a few at a time between its multiply blocks, so their
  // memory latency overlaps arithmetic. Rows [0, n_prefetch_read) are read,
  // the rest written; each is prefetch_bytes long.
  const char* const* prefetch = nullptr;
  index_t n_prefetch = 0, n_prefetch_read = 0, prefetch_bytes = 0;
};

// Bytes of the per-query-tile buffers at padded dim dp: what a group of query
// tiles keeps hot in cache while key tiles stream past it.
inline constexpr index_t q_tile_bytes(index_t dp) { return (2 * dp * tile_q + 7 * tile_q) * index_t(sizeof(float)); }

// Owns the buffers of up to max_q_tiles query tiles and of one key tile per KV
// head in use (a decode task runs several KV heads at once), the absolute key
// bounds of every row, and the list of rows to prefetch.
class Workspace {
 public:
  void reserve(index_t padded_dim, index_t q_tiles, index_t kv_slots) {
    dp_ = padded_dim;
    slots_ = kv_slots;
    if (padded_dim <= capacity_dp_ && q_tiles <= capacity_tiles_ && kv_slots <= capacity_slots_) return;
    capacity_dp_ = std::max(capacity_dp_, padded_dim);
    capacity_tiles_ = std::max(capacity_tiles_, q_tiles);
    capacity_slots_ = std::max(capacity_slots_, kv_slots);
    buffer_ = aligned_floats(shared_floats(capacity_dp_, capacity_slots_) + capacity_tiles_ * per_q_tile(capacity_dp_));
    bounds_.reset(new index_t[static_cast<std::size_t>(2 * capacity_tiles_ * tile_q)]);
    rows_.reset(new const char*[static_cast<std::size_t>(prefetch_capacity(capacity_slots_))]);
  }
  // Buffers of query tile s (0 <= s < the reserved q_tiles) reading the key
  // tile of KV slot `slot` (0 <= slot < the reserved kv_slots).
  TileBuffers tile(index_t s, index_t slot) const {
    TileBuffers b;
    b.dp = dp_;
    float* p = buffer_.get();
    b.st = p;
    p += tile_k * tile_q + slot * 2 * tile_k * dp_;
    b.kp = p;
    b.vp = p + tile_k * dp_;
    p = buffer_.get() + shared_floats(dp_, slots_) + s * per_q_tile(dp_);
    b.qt = p; p += dp_ * tile_q;
    b.o = p;  p += tile_q * dp_;
    b.m = p;  p += tile_q;
    b.l = p;  p += tile_q;
    b.alpha = p; p += tile_q;
    b.lo = p; p += tile_q;
    b.hi = p;  p += tile_q;
    b.slope = p; p += tile_q;
    b.rel = p;
    return b;
  }
  // Absolute visible-key bounds [lo, hi) of row r of the group.
  index_t* row_lo() const { return bounds_.get(); }
  index_t* row_hi() const { return bounds_.get() + capacity_tiles_ * tile_q; }
  // Room for the next key tile's K/V rows of every slot, then for one step's
  // prefetch list (those rows, one query tile's Q rows and its output rows).
  const char** next_rows() const { return rows_.get(); }
  const char** step_rows() const { return rows_.get() + 2 * tile_k * capacity_slots_; }

 private:
  // Multiples of 16 floats, so every buffer starts 64-byte aligned.
  static index_t per_q_tile(index_t dp) { return q_tile_bytes(dp) / index_t(sizeof(float)); }
  static index_t shared_floats(index_t dp, index_t slots) { return tile_k * tile_q + slots * 2 * tile_k * dp; }
  static index_t prefetch_capacity(index_t slots) { return 2 * (2 * tile_k * slots) + 2 * tile_q; }
  index_t dp_ = 0, slots_ = 0, capacity_dp_ = 0, capacity_tiles_ = 0, capacity_slots_ = 0;
  AlignedBuffer buffer_;
  std::unique_ptr<index_t[]> bounds_;
  std::unique_ptr<const char*[]> rows_;
};

inline Workspace& thread_workspace(index_t padded_dim, index_t q_tiles, index_t kv_slots) {
  static thread_local Workspace ws;
  ws.reserve(padded_dim, q_tiles, kv_slots);
  return ws;
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
