#pragma once
// Per-thread scratch of the fused kernel: O(tile) floats, never O(N^2).
// One Workspace per thread (thread_local), grown on demand and reused across
// calls, so steady-state attention allocates nothing.
#include <cstddef>
#include <memory>
#include <new>

#include "ism/core/config.hpp"

namespace ism::cpu {

// Query rows and keys per tile. Both are multiples of every vector width and
// register block used by the SIMD paths. Tests build BlockMaps with these.
inline constexpr index_t tile_q = 64;
inline constexpr index_t tile_k = 64;

struct AlignedFree {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedBuffer = std::unique_ptr<float[], AlignedFree>;

inline AlignedBuffer aligned_floats(index_t n) {
  return AlignedBuffer(static_cast<float*>(::operator new[](static_cast<std::size_t>(n) * sizeof(float),
                                                             std::align_val_t(64))));
}

// Query tiles that share one packed key tile (each key tile is read from the
// cache once per group instead of once per query tile).
inline constexpr index_t max_q_tiles = 4;

// The buffers one (query tile, key tile) step works on, for a padded head dim
// dp (dim rounded up to the vector width):
//   qt [dp][tile_q]     the query tile, transposed and pre-scaled
//   o  [tile_q][dp]     its unnormalised output accumulator
//   m, l, alpha, lo, hi [tile_q]: running max, running sum, rescale factor,
//                       and the tile-relative key bounds of each row
//   kp, vp [tile_k][dp] the key and value tile in fp32 (shared by the group)
//   st [tile_k][tile_q] scores, then probabilities (transposed: rows in lanes)
struct TileBuffers {
  index_t dp = 0;
  float *qt = nullptr, *o = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr, *lo = nullptr, *hi = nullptr;
  float *kp = nullptr, *vp = nullptr, *st = nullptr;
};

// Owns the buffers of max_q_tiles query tiles and one key tile.
class Workspace {
 public:
  void reserve(index_t padded_dim) {
    dp_ = padded_dim;
    if (padded_dim <= capacity_dp_) return;
    capacity_dp_ = padded_dim;
    buffer_ = aligned_floats(max_q_tiles * per_q_tile(padded_dim) + 2 * tile_k * padded_dim + tile_k * tile_q);
  }
  // Buffers of query tile s (0 <= s < max_q_tiles) and the shared key tile.
  TileBuffers tile(index_t s) const {
    TileBuffers b;
    b.dp = dp_;
    float* p = buffer_.get() + s * per_q_tile(dp_);
    b.qt = p; p += dp_ * tile_q;
    b.o = p;  p += tile_q * dp_;
    b.m = p;  p += tile_q;
    b.l = p;  p += tile_q;
    b.alpha = p; p += tile_q;
    b.lo = p; p += tile_q;
    b.hi = p;
    float* shared = buffer_.get() + max_q_tiles * per_q_tile(dp_);
    b.kp = shared;
    b.vp = shared + tile_k * dp_;
    b.st = shared + 2 * tile_k * dp_;
    return b;
  }

 private:
  // A multiple of 16 floats, so every buffer starts 64-byte aligned.
  static index_t per_q_tile(index_t dp) { return 2 * dp * tile_q + 5 * tile_q; }
  index_t dp_ = 0, capacity_dp_ = 0;
  AlignedBuffer buffer_;
};

inline Workspace& thread_workspace(index_t padded_dim) {
  static thread_local Workspace ws;
  ws.reserve(padded_dim);
  return ws;
}

}  // namespace ism::cpu
