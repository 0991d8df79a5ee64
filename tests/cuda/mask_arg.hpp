#pragma once
// What a test case asks of the kernel, in plain C++ that both the GPU runner
// (runner.cu, which uploads everything) and the CPU emulation (which reads
// host memory where it is) turn into an ism::cuda call: the mask, and how to
// launch (splits, path, a paged cache).
#include "ism/core/config.hpp"
#include "ism/mask/segment.hpp"
#include "ism/mask/segment_mask.hpp"

namespace ism_cuda_test {

enum class MaskKind { Full, Causal, Prefix, Segments };
struct MaskArg {
  MaskKind kind = MaskKind::Causal;
  ism::index_t prefix = 0;                     // MaskKind::Prefix
  const ism::SegmentMask* segments = nullptr;  // MaskKind::Segments
  ism::index_t window = 0;                     // > 0: a LocalWindow over the mask
};

// A sliding window over any mask policy, written here so these tests do not
// depend on the library's own (ism::sliding_window): key j is visible to row i
// iff the inner mask allows it and |i - j| < window. Still one interval per
// row with non-decreasing ends; trivially copyable when the inner policy is,
// so the kernel takes it by value like any policy.
template <class Inner>
struct LocalWindow {
  Inner inner;
  ism::index_t window = 1;
  ISM_HOST_DEVICE ism::KeyRange keys(ism::index_t q) const {
    return ism::intersect(inner.keys(q), ism::KeyRange{q - window + 1, q + window});
  }
  ISM_HOST_DEVICE bool allowed(ism::index_t q, ism::index_t k) const { return keys(q).contains(k); }
  ISM_HOST_DEVICE ism::index_t length() const { return inner.length(); }
};

enum class PathArg { Auto, Prefill, Decode };
struct LaunchArg {
  int kv_splits = 0;             // LaunchOptions::kv_splits
  PathArg path = PathArg::Auto;  // LaunchOptions::path
  ism::index_t page_size = 0;    // > 0: K/V through a paged cache with shuffled pages
  bool table64 = false;          // int64 block table (else int32)
};

}  // namespace ism_cuda_test
