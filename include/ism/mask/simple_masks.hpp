#pragma once
// Masks that need no layout: full (no mask), causal and prefix-LM. They are pure
// arithmetic, so the fused kernels inline them to a compare or two.
#include "ism/core/errors.hpp"
#include "ism/mask/segment.hpp"

namespace ism {

// Every key is visible (encoder attention; the "no mask" baseline).
struct FullMask {
  ISM_HOST_DEVICE KeyRange keys(index_t /*q*/) const { return {0, unbounded}; }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const { return q >= 0 && k >= 0; }
  ISM_HOST_DEVICE index_t length() const { return unbounded; }
};

// Query i sees keys 0..i.
struct CausalMask {
  ISM_HOST_DEVICE KeyRange keys(index_t q) const { return {0, q + 1}; }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const { return k >= 0 && k <= q; }
  ISM_HOST_DEVICE index_t length() const { return unbounded; }
};

// Bidirectional over [0, prefix), causal after it.
struct PrefixMask {
  index_t prefix = 0;
  ISM_HOST_DEVICE KeyRange keys(index_t q) const {
    return {0, q < prefix ? prefix : q + 1};
  }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const {
    return q >= 0 && k >= 0 && k < keys(q).end;
  }
  ISM_HOST_DEVICE index_t length() const { return unbounded; }
};

inline FullMask full_mask() { return {}; }
inline CausalMask causal_mask() { return {}; }
inline PrefixMask prefix_mask(index_t prefix_len) {
  if (prefix_len < 0) detail::fail("ism::prefix_mask", "prefix_len = ", prefix_len, " is negative");
  return PrefixMask{prefix_len};
}

}  // namespace ism
