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
#include <cstdint>

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

}  // namespace ism
