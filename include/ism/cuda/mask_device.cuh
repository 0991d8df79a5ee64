#pragma once
// Masks on the device. The simple masks (Full, Causal, Prefix) are arithmetic
// and go to the kernel by value. A SegmentMask's O(N) row bounds must live in
// device memory: DeviceMask keeps a copy there and hands the kernel a
// RowBoundsMask (two device pointers and a length) by value.
//
// A dialogue grows at its end, and no row sees a later segment, so growing it
// changes the bounds of the rows of its last segment at most (a Bidirectional
// last segment widens; a Causal one does not change at all). update() finds
// the first segment that differs from the layout of the last update and
// uploads the rows from there on only: a decode step copies one row, 16 bytes.
// The device buffer grows geometrically. Everything is stream-ordered on the
// stream given to update(): no synchronisation, and an allocation only when
// the buffer grows (amortised O(1) per token).
#include <algorithm>
#include <utility>
#include <vector>

#include "ism/cuda/check.cuh"
#include "ism/mask/segment_mask.hpp"

namespace ism::cuda {

class DeviceMask {
 public:
  DeviceMask() = default;
  explicit DeviceMask(const SegmentMask& mask, cudaStream_t stream = nullptr) { update(mask, stream); }
  DeviceMask(const DeviceMask&) = delete;
  DeviceMask& operator=(const DeviceMask&) = delete;
  DeviceMask(DeviceMask&& o) noexcept { take(o); }
  DeviceMask& operator=(DeviceMask&& o) noexcept {
    if (this != &o) {
      release();
      take(o);
    }
    return *this;
  }
  ~DeviceMask() { release(); }

  // Makes the device copy equal to `mask`, uploading the rows whose bounds
  // may differ from the last update's layout (O(segments) to find them). Any
  // SegmentMask is accepted (grown, truncated or unrelated: the comparison of
  // segments finds what changed). The copies read the mask's memory before
  // this returns (CUDA stages copies from pageable memory), so the mask may
  // change right after. Kernels that read this mask should run on `stream`,
  // or be ordered after it: the rows change in place.
  void update(const SegmentMask& mask, cudaStream_t stream = nullptr) {
    const index_t n = mask.length();
    const index_t first = std::min(first_changed(mask.spans()), n);
    const RowBoundsMask host = mask.bounds();
    const size_t row = sizeof(index_t);
    if (n > cap_) {
      const index_t cap = std::max({n, 2 * cap_, index_t(256)});
      index_t* grown = nullptr;
      ISM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&grown), size_t(2 * cap) * row, stream));
      const index_t keep = std::min(first, n_);
      if (keep > 0) {
        const cudaError_t a = cudaMemcpyAsync(grown, buf_, size_t(keep) * row, cudaMemcpyDeviceToDevice, stream);
        const cudaError_t b =
            a == cudaSuccess ? cudaMemcpyAsync(grown + cap, buf_ + cap_, size_t(keep) * row, cudaMemcpyDeviceToDevice, stream)
                             : a;
        if (b != cudaSuccess) {
          (void)cudaFreeAsync(grown, stream);
          detail::check(b, "cudaMemcpyAsync(device mask growth)", __FILE__, __LINE__);
        }
      }
      if (buf_ != nullptr) (void)cudaFreeAsync(buf_, stream);
      buf_ = grown;
      cap_ = cap;
    }
    stream_ = stream;
    if (first < n) {
      ISM_CUDA_CHECK(cudaMemcpyAsync(buf_ + first, host.lo + first, size_t(n - first) * row, cudaMemcpyHostToDevice,
                                     stream));
      ISM_CUDA_CHECK(cudaMemcpyAsync(buf_ + cap_ + first, host.hi + first, size_t(n - first) * row,
                                     cudaMemcpyHostToDevice, stream));
    }
    last_upload_ = n - first;
    n_ = n;
    spans_.assign(mask.spans().begin(), mask.spans().end());
  }

  // The policy the kernel runs on; valid while this object lives and until
  // its next update().
  RowBoundsMask policy() const { return {buf_, buf_ + cap_, n_}; }
  index_t length() const { return n_; }
  index_t capacity() const { return cap_; }
  // Rows the last update() copied to the device.
  index_t rows_uploaded() const { return last_upload_; }

 private:
  // The first row whose bounds may differ between the last layout and
  // `now`. Rows of a segment are fixed by that segment and those before it
  // (their document's start), so all rows before the first differing segment
  // are unchanged; in that segment too when it is Causal or padding with the
  // same start, mode and document (it only grew or shrank at its end).
  index_t first_changed(const std::vector<SegmentMask::Span>& now) const {
    const size_t common = std::min(spans_.size(), now.size());
    for (size_t i = 0; i < common; ++i) {
      const SegmentMask::Span& a = spans_[i];
      const SegmentMask::Span& b = now[i];
      if (a.begin == b.begin && a.end == b.end && a.attend == b.attend && a.doc == b.doc) continue;
      const bool grows_in_place = a.begin == b.begin && a.attend == b.attend && a.doc == b.doc &&
                                  (a.attend == Attend::Causal || a.doc < 0);
      return grows_in_place ? std::min(a.end, b.end) : a.begin;
    }
    return n_;
  }
  void take(DeviceMask& o) noexcept {
    buf_ = std::exchange(o.buf_, nullptr);
    cap_ = std::exchange(o.cap_, 0);
    n_ = std::exchange(o.n_, 0);
    last_upload_ = std::exchange(o.last_upload_, 0);
    stream_ = o.stream_;
    spans_ = std::move(o.spans_);
    o.spans_.clear();
  }
  // A destructor cannot throw; a failing free means the context is already
  // lost, and the next checked call reports that.
  void release() noexcept {
    if (buf_ != nullptr) (void)cudaFreeAsync(buf_, stream_);
    buf_ = nullptr;
    cap_ = n_ = last_upload_ = 0;
    spans_.clear();
  }

  index_t* buf_ = nullptr;  // lo[0..cap) then hi[0..cap)
  index_t cap_ = 0, n_ = 0, last_upload_ = 0;
  cudaStream_t stream_ = nullptr;
  std::vector<SegmentMask::Span> spans_;  // the layout of the last update
};

}  // namespace ism::cuda
