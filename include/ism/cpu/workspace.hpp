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

// Layout for a padded head dim dp (dim rounded up to the vector width):
//   qt [dp][tile_q]   the query tile, transposed and pre-scaled
//   kp [tile_k][dp]   the key tile, fp32
//   vp [tile_k][dp]   the value tile, fp32
//   st [tile_k][tile_q] scores, then probabilities (transposed: rows in lanes)
//   o  [tile_q][dp]   the unnormalised output accumulator
//   m, l, alpha, lo, hi [tile_q]: running max, running sum, rescale factor,
//                       and the tile-relative key bounds of each row
struct Workspace {
  index_t dp = 0;
  float *qt = nullptr, *kp = nullptr, *vp = nullptr, *st = nullptr, *o = nullptr;
  float *m = nullptr, *l = nullptr, *alpha = nullptr, *lo = nullptr, *hi = nullptr;

  void reserve(index_t padded_dim) {
    if (padded_dim <= capacity_dp_) {
      dp = padded_dim;
      carve();
      return;
    }
    capacity_dp_ = padded_dim;
    dp = padded_dim;
    const index_t n = (2 * tile_q + 2 * tile_k) * padded_dim + tile_k * tile_q + 5 * tile_q;
    buffer_ = aligned_floats(n);
    carve();
  }

 private:
  void carve() {
    float* p = buffer_.get();
    qt = p; p += dp * tile_q;
    kp = p; p += tile_k * dp;
    vp = p; p += tile_k * dp;
    o = p;  p += tile_q * dp;
    st = p; p += tile_k * tile_q;
    m = p;  p += tile_q;
    l = p;  p += tile_q;
    alpha = p; p += tile_q;
    lo = p; p += tile_q;
    hi = p;
  }
  index_t capacity_dp_ = 0;
  AlignedBuffer buffer_;
};

inline Workspace& thread_workspace(index_t padded_dim) {
  static thread_local Workspace ws;
  ws.reserve(padded_dim);
  return ws;
}

}  // namespace ism::cpu
