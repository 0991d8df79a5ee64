#pragma once
// Tile classification: is a block [q0,q1) x [k0,k1) of the score matrix Empty,
// Full or Partial? Because every row sees one interval whose ends never
// decrease, the corner rows decide:
//   - the union of the rows' intervals lies in [lo(q0), hi(q1-1));
//   - the intersection is [lo(q1-1), hi(q0)).
// Empty and Full are exact for every mask here (Empty is conservative only
// across padding rows, which see nothing: such a tile may be called Partial).
// Kernels skip Empty tiles, run Full tiles with no mask code, and apply row
// bounds to Partial tiles only.
#include <algorithm>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/mask/segment.hpp"

namespace ism {

enum class TileKind : std::uint8_t { Empty, Partial, Full };

inline const char* to_string(TileKind t) {
  return t == TileKind::Empty ? "Empty" : t == TileKind::Full ? "Full" : "Partial";
}

// Keys visible to absolute query row q when the cache holds keys [0, n_k).
// The result always lies inside [0, n_k], even when empty: a row whose keys
// all lie past the cache is reported as [n_k, n_k), so the union of rows'
// ranges (tile visits, key chunks) never reaches past the cache.
template <class Mask>
ISM_HOST_DEVICE KeyRange visible_keys(const Mask& mask, index_t q, index_t n_k) {
  KeyRange r = intersect(mask.keys(q), KeyRange{0, n_k});
  if (r.begin > n_k) r.begin = r.end = n_k;
  return r;
}

// Rows and keys in absolute positions; q0 < q1, k0 < k1 <= n_k.
template <class Mask>
ISM_HOST_DEVICE TileKind classify_tile(const Mask& mask, index_t q0, index_t q1, index_t k0,
                                       index_t k1, index_t n_k) {
  const KeyRange first = visible_keys(mask, q0, n_k);
  const KeyRange last = visible_keys(mask, q1 - 1, n_k);
  const index_t union_begin = first.begin, union_end = last.end;
  if (k1 <= union_begin || k0 >= union_end || union_end <= union_begin) return TileKind::Empty;
  if (last.begin <= k0 && k1 <= first.end) return TileKind::Full;
  return TileKind::Partial;
}

// For a block of rows [q0, q1): the keys any row sees ([begin, end) of `any`)
// and the keys every row sees (`all`, possibly empty). Key tiles inside `all`
// are Full; the rest of `any` is Partial; outside `any` nothing is visited.
struct RowBlockKeys {
  KeyRange any;
  KeyRange all;
};

template <class Mask>
ISM_HOST_DEVICE RowBlockKeys row_block_keys(const Mask& mask, index_t q0, index_t q1, index_t n_k) {
  const KeyRange first = visible_keys(mask, q0, n_k);
  const KeyRange last = visible_keys(mask, q1 - 1, n_k);
  RowBlockKeys r;
  r.any = {first.begin, last.end};
  if (r.any.end < r.any.begin) r.any.end = r.any.begin;
  r.all = {last.begin, first.end};
  if (r.all.end < r.all.begin) r.all.end = r.all.begin;
  return r;
}

namespace detail {
// The query rows [q_offset, q_offset + n_q) and keys [0, n_k) of one call must
// lie inside the mask's layout (masks without a layout have length unbounded).
template <class Mask>
void check_window(const char* where, const Mask& mask, index_t n_q, index_t n_k, index_t q_offset) {
  if (n_q < 0) fail(where, "n_q = ", n_q, " is negative");
  if (n_k < 0) fail(where, "n_k = ", n_k, " is negative");
  if (q_offset < 0) fail(where, "q_offset = ", q_offset, " is negative");
  index_t q_end = 0;
  if (add_overflows(q_offset, n_q, &q_end)) fail(where, "q_offset + n_q overflows: ", q_offset, " + ", n_q);
  if (mask.length() != unbounded) {
    if (q_end > mask.length())
      fail(where, "query rows [", q_offset, ", ", q_end, ") (q_offset = ", q_offset, ", n_q = ", n_q,
           ") exceed the layout length ", mask.length());
    if (n_k > mask.length()) fail(where, "n_k = ", n_k, " exceeds the layout length ", mask.length());
  }
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
inline index_t ceil_div(index_t a, index_t b) { return a / b + (a % b != 0); }
}  // namespace detail

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
