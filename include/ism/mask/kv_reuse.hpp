#pragma once
// KV-cache reuse under any mask policy: where a computation may stop
// (is_safe_split) and which cached keys no remaining row can see
// (first_needed_key). Both follow from the shape of the rule alone, one key
// interval per row with both ends non-decreasing, so they hold for a
// SegmentMask, the simple masks, their sliding windows and any policy of that
// shape (docs/DESIGN.md section 1).
#include <algorithm>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/mask/sliding_window.hpp"

namespace ism {

namespace detail {
template <class Mask>
void check_split_position(const char* where, const Mask& mask, index_t p) {
  if (p < 0) fail(where, "p = ", p, " is negative");
  if (mask.length() != unbounded && p > mask.length())
    fail(where, "p = ", p, " is outside [0, ", mask.length(), "] (the layout length is ", mask.length(), ")");
}
}  // namespace detail

// True iff no row before p sees a key at or after p: rows [0, p), and their
// K/V in every layer, can be computed before tokens [p, ...) exist, so a
// prefill chunk or a cache may end at p. Row ends never decrease, so the last
// row before p decides. For a SegmentMask this is SegmentMask::is_safe_split;
// a window adds safe splits only at window 1 (a row then sees itself alone):
// any wider band reaches past p from row p - 1 whenever the inner mask does.
template <class Mask>
bool is_safe_split(const Mask& mask, index_t p) {
  detail::check_split_position("ism::is_safe_split", mask, p);
  return p == 0 || mask.keys(p - 1).end <= p;
}

// The safe splits in [0, n], ascending.
template <class Mask>
std::vector<index_t> safe_splits(const Mask& mask, index_t n) {
  detail::check_split_position("ism::safe_splits", mask, n);
  std::vector<index_t> out;
  for (index_t p = 0; p <= n; ++p)
    if (is_safe_split(mask, p)) out.push_back(p);
  return out;
}

// Once rows [0, p) are computed, the keys [0, first_needed_key(mask, p)) are
// seen by no row left to compute (row p and every later one, including rows
// that a growing layout appends): an engine may drop them from its cache
// (PagedKVCache::drop_front frees their whole pages). The result is at most p.
//
// Row begins never decrease, so row p's begin bounds every later row's; at
// p = length() (the rows to come are not in the layout yet) the last row's
// begin bounds them, because appending keeps begins non-decreasing. For a
// sliding window the band adds its own bound, p - window + 1 (overload below).
// Without a window this is the start of the current document: nothing inside
// a document is ever dropped, which is why only windowed layers free pages.
//
// It speaks of the rows that are left: an engine that may take tokens back
// (truncate to n < p, e.g. a rejected speculative token) needs the keys of
// first_needed_key(mask, n) and must keep those.
template <class Mask>
index_t first_needed_key(const Mask& mask, index_t p) {
  detail::check_split_position("ism::first_needed_key", mask, p);
  if (p == 0) return 0;
  // (For a mask without a layout p = length() = unbounded is past every row.)
  const index_t row = p == mask.length() ? p - 1 : p;
  return std::min(p, std::max<index_t>(0, mask.keys(row).begin));
}

template <class Mask>
index_t first_needed_key(const SlidingWindowMask<Mask>& mask, index_t p) {
  detail::check_split_position("ism::first_needed_key", mask, p);
  // Every row at or after p has its band begin at or after p - window + 1.
  const index_t band = p - (mask.window - 1);
  return std::min(p, std::max(first_needed_key(mask.inner, p), band));
}

}  // namespace ism
