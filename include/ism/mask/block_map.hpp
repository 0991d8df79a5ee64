#pragma once
// The whole problem cut into tiles: which tiles a kernel visits (Partial,
// Full) and skips (Empty), how many query-key pairs the mask lets through.
// Benchmarks report useful GFLOP/s from visible_pairs; tests check the
// kernel's visits against it.
#include <algorithm>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/core/query_window.hpp"
#include "ism/mask/tile_kind.hpp"

namespace ism {

// The whole problem cut into tiles: what a kernel will visit and skip.
struct BlockMapStats {
  index_t tiles = 0;
  index_t empty = 0;
  index_t partial = 0;
  index_t full = 0;
  index_t visible_pairs = 0;  // (query, key) pairs the mask lets through
  index_t total_pairs = 0;    // n_q * n_k
  double skipped_fraction() const { return tiles ? double(empty) / double(tiles) : 0.0; }
  double density() const { return total_pairs ? double(visible_pairs) / double(total_pairs) : 0.0; }
};

class BlockMap {
 public:
  template <class Mask>
  BlockMap(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset, index_t tile_q, index_t tile_k)
      : n_q_(n_q), n_k_(n_k), q_offset_(q_offset), tile_q_(tile_q), tile_k_(tile_k) {
    const char* where = "ism::BlockMap";
    detail::check_window(where, mask, n_q, n_k, q_offset);
    if (tile_q <= 0) detail::fail(where, "tile_q = ", tile_q, " must be positive");
    if (tile_k <= 0) detail::fail(where, "tile_k = ", tile_k, " must be positive");
    rows_ = detail::ceil_div(n_q, tile_q);
    cols_ = detail::ceil_div(n_k, tile_k);
    index_t tiles = 0;
    if (detail::mul_overflows(rows_, cols_, &tiles) || detail::mul_overflows(n_q, n_k, &stats_.total_pairs))
      detail::fail(where, "n_q * n_k = ", n_q, " * ", n_k, " overflows");
    kinds_.resize(static_cast<size_t>(tiles));
    for (index_t r = 0; r < rows_; ++r) {
      // r * tile_q < n_q, so only the tile's end needs clamping before it can overflow.
      const index_t q0 = q_offset + r * tile_q, q1 = q_offset + r * tile_q + std::min(n_q - r * tile_q, tile_q);
      for (index_t c = 0; c < cols_; ++c) {
        const index_t k0 = c * tile_k, k1 = k0 + std::min(n_k - k0, tile_k);
        const TileKind t = classify_tile(mask, q0, q1, k0, k1, n_k);
        kinds_[static_cast<size_t>(r * cols_ + c)] = t;
        ++stats_.tiles;
        (t == TileKind::Empty ? stats_.empty : t == TileKind::Full ? stats_.full : stats_.partial)++;
      }
    }
    for (index_t q = q_offset; q < q_offset + n_q; ++q) stats_.visible_pairs += visible_keys(mask, q, n_k).size();
  }

  index_t n_q() const { return n_q_; }
  index_t n_k() const { return n_k_; }
  index_t q_offset() const { return q_offset_; }
  index_t tile_rows() const { return rows_; }
  index_t tile_cols() const { return cols_; }
  index_t tile_q() const { return tile_q_; }
  index_t tile_k() const { return tile_k_; }
  // Tile (r, c) covers query rows q_offset + [r*tile_q, ...) and keys [c*tile_k, ...).
  TileKind kind(index_t r, index_t c) const { return kinds_[static_cast<size_t>(r * cols_ + c)]; }
  const BlockMapStats& stats() const { return stats_; }

 private:
  index_t n_q_, n_k_, q_offset_, tile_q_, tile_k_;
  index_t rows_ = 0, cols_ = 0;
  std::vector<TileKind> kinds_;
  BlockMapStats stats_;
};

}  // namespace ism
