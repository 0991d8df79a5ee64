#pragma once
// QueryBounds: the visible keys of one call's query rows, read once from any
// mask policy. Row t of the call (absolute position q_offset + t) sees
// [lo[t], hi[t]), already clipped to the cache [0, n_k] as visible_keys does.
//
// It is itself a mask policy, defined only on the call's rows, and it keeps
// the rule's shape (one interval per row, both ends non-decreasing). Kernels
// run on it instead of on the caller's policy: they are compiled once per
// element type rather than once per mask type, and one batch can mix causal,
// ISM, prefix and sliding-window requests. Filling it costs one keys() call
// per query row, O(n_q), nothing next to the attention of those rows.
#include "ism/core/config.hpp"
#include "ism/core/isa.hpp"
#include "ism/mask/tile_kind.hpp"

namespace ism {

struct QueryBounds {
  const index_t* lo = nullptr;
  const index_t* hi = nullptr;
  index_t q_offset = 0;  // absolute position of row 0
  index_t n_q = 0;

  // Defined for the call's rows [q_offset, q_offset + n_q) only.
  ISM_HOST_DEVICE KeyRange keys(index_t q) const { return {lo[q - q_offset], hi[q - q_offset]}; }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const { return keys(q).contains(k); }
  ISM_HOST_DEVICE index_t length() const { return unbounded; }
};

inline namespace ISM_SIMD_NAMESPACE {

// lo[t], hi[t] for t in [0, n_q): the keys of row q_offset + t within [0, n_k].
// The window must have been checked (core/query_window.hpp). In the
// per-instruction-set namespace (core/isa.hpp): compiled with AVX-512 flags
// its loop may use AVX-512VL instructions (vpmaxsq on xmm registers), which
// an AVX2 translation unit must never be handed.
template <class Mask>
void fill_query_bounds(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset, index_t* lo, index_t* hi) {
  for (index_t t = 0; t < n_q; ++t) {
    const KeyRange r = visible_keys(mask, q_offset + t, n_k);
    lo[t] = r.begin;
    hi[t] = r.end;
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE

}  // namespace ism
