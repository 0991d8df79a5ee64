#pragma once
// SlidingWindowMask: any mask policy restricted to a band around the diagonal,
//
//   key j is visible to row i  iff  the inner mask allows it and |i - j| < window
//
// (Mistral's and Gemma's local layers, llama.cpp's LLAMA_SWA_TYPE_STANDARD
// for a causal inner mask; Gemma 3's bidirectional image spans inside a window
// are an ISM layout inside one). window = 1 leaves each row its own key;
// window = ism::unbounded changes nothing.
//
// Why the result is still a mask of this library, one key interval per row
// with both ends non-decreasing in the row (docs/DESIGN.md section 1):
//   the inner policy gives row i the interval [lo(i), hi(i)), lo and hi
//   non-decreasing; the band gives it [i - window + 1, i + window), whose
//   ends increase with i. The row sees their intersection [b(i), e(i)) with
//     b(i) = max(lo(i), i - window + 1)   a max of non-decreasing functions,
//     e(i) = min(hi(i), i + window)       a min of non-decreasing functions,
//   both non-decreasing. A row whose intersection is empty is reported as
//   [b(i), b(i)): its end becomes max(b(i), e(i)), again a max of
//   non-decreasing functions, so the ends stay monotone across empty rows too.
// Hence tiles are still Empty, Full or Partial from their corner rows
// (mask/tile_kind.hpp), and the CPU kernel, which reads each row's bounds once
// (mask/query_bounds.hpp) and visits only the key tiles between its query
// tile's first row's begin and last row's end, never touches a tile outside
// the band: a window of w over N rows costs O(N w), not O(N^2).
//
// The window never makes a row see more than its inner mask, so everything
// that holds for the inner mask's cache reuse still holds, and a window adds
// one thing: keys that fell out of every remaining row's band can leave the
// cache (first_needed_key, mask/kv_reuse.hpp).
#include "ism/core/config.hpp"
#include "ism/core/errors.hpp"
#include "ism/mask/segment.hpp"

namespace ism {

// A small value type: the inner policy by value and the window. It is
// trivially copyable whenever the inner policy is (CausalMask, PrefixMask,
// RowBoundsMask, QueryBounds), so a kernel, the CUDA one included, takes it by
// value. Over a SegmentMask it holds a copy of the layout; to window a
// SegmentMask that outlives the window without copying it, window its view:
// sliding_window(mask.bounds(), w).
template <class Mask>
struct SlidingWindowMask {
  Mask inner;
  index_t window = unbounded;  // >= 1 (sliding_window() checks)

  ISM_HOST_DEVICE KeyRange keys(index_t q) const {
    // Positions are non-negative; below 0 nothing is visible (and q - window
    // could overflow there).
    if (q < 0) return {0, 0};
    const index_t band_begin = q - (window - 1);                             // q >= 0, window >= 1
    const index_t band_end = window > unbounded - q ? unbounded : q + window;  // saturating
    return intersect(inner.keys(q), KeyRange{band_begin, band_end});
  }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const {
    if (q < 0 || k < 0) return false;
    return (q >= k ? q - k : k - q) < window && inner.allowed(q, k);
  }
  ISM_HOST_DEVICE index_t length() const { return inner.length(); }
};

namespace detail {
inline index_t check_sliding_window(const char* where, index_t window) {
  if (window < 1)
    fail(where, "window = ", window, " must be at least 1 (key j is visible to row i only if |i - j| < window)");
  return window;
}
}  // namespace detail

// `mask` restricted to |i - j| < window; window < 1 is invalid input.
template <class Mask>
SlidingWindowMask<Mask> sliding_window(const Mask& mask, index_t window) {
  detail::check_sliding_window("ism::sliding_window", window);
  return {mask, window};
}

// A window of a window is the narrower one (no nested type).
template <class Mask>
SlidingWindowMask<Mask> sliding_window(const SlidingWindowMask<Mask>& mask, index_t window) {
  detail::check_sliding_window("ism::sliding_window", window);
  return {mask.inner, window < mask.window ? window : mask.window};
}

}  // namespace ism
