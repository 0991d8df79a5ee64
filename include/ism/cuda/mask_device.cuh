#pragma once
// Masks on the device. The simple masks (Full, Causal, Prefix) are arithmetic
// and go to the kernel by value. A SegmentMask's O(N) row bounds must live in
// device memory: DeviceMask uploads them once and hands the kernel a
// RowBoundsMask (two device pointers and a length) by value.
#include <utility>

#include "ism/cuda/check.cuh"
#include "ism/mask/segment_mask.hpp"

namespace ism::cuda {

class DeviceMask {
 public:
  DeviceMask() = default;
  // Synchronous upload (the layout is small: 16 bytes per position).
  explicit DeviceMask(const SegmentMask& mask) : n_(mask.length()) {
    if (n_ == 0) return;
    const size_t bytes = size_t(n_) * sizeof(index_t);
    ISM_CUDA_CHECK(cudaMalloc(&bounds_, 2 * bytes));
    const RowBoundsMask host = mask.bounds();
    try {
      ISM_CUDA_CHECK(cudaMemcpy(bounds_, host.lo, bytes, cudaMemcpyHostToDevice));
      ISM_CUDA_CHECK(cudaMemcpy(bounds_ + n_, host.hi, bytes, cudaMemcpyHostToDevice));
    } catch (...) {
      cudaFree(bounds_);
      throw;
    }
  }
  DeviceMask(const DeviceMask&) = delete;
  DeviceMask& operator=(const DeviceMask&) = delete;
  DeviceMask(DeviceMask&& o) noexcept
      : bounds_(std::exchange(o.bounds_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceMask& operator=(DeviceMask&& o) noexcept {
    if (this != &o) {
      release();
      bounds_ = std::exchange(o.bounds_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceMask() { release(); }

  // The policy the kernel runs on; valid while this object lives.
  RowBoundsMask policy() const { return {bounds_, bounds_ + n_, n_}; }
  index_t length() const { return n_; }

 private:
  // A destructor cannot throw; a failing cudaFree means the context is
  // already lost, and the next checked call reports that.
  void release() noexcept {
    if (bounds_ != nullptr) (void)cudaFree(bounds_);
    bounds_ = nullptr;
    n_ = 0;
  }
  index_t* bounds_ = nullptr;  // lo[0..n) then hi[0..n)
  index_t n_ = 0;
};

}  // namespace ism::cuda
