#pragma once
// Helpers shared by the reliability tests: the kernel's entry point, address
// space reserved without memory, exception expectations, and a comparison with
// the fp64 reference that understands non-finite values.
#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>

#include "common/testing.hpp"
#include "ism/attention/attention.hpp"

namespace ism_rel {

using ism::index_t;

// Anonymous memory reserved but not committed: pages cost nothing until they
// are touched, so a view can have element offsets beyond 2^31 while the test
// touches (and pays for) only the rows it uses.
class VirtualBuffer {
 public:
  explicit VirtualBuffer(std::size_t bytes) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    ptr_ = p == MAP_FAILED ? nullptr : p;
  }
  ~VirtualBuffer() {
    if (ptr_) ::munmap(ptr_, bytes_);
  }
  VirtualBuffer(const VirtualBuffer&) = delete;
  VirtualBuffer& operator=(const VirtualBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  bool ok() const { return ptr_ != nullptr; }

 private:
  std::size_t bytes_;
  void* ptr_ = nullptr;
};

using ism_test::expect_invalid;

// Tolerance of one output element against the fp64 reference: rounding of the
// output type plus fp32 accumulation, relative to the values' magnitude.
template <class T>
double tolerance(double ref, double v_scale) {
  double eps = 2e-6;
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) eps = 1.0 / 256;
  if constexpr (std::is_same_v<T, Eigen::half>) eps = 1.0 / 2048;
  return eps * std::abs(ref) + 2e-5 * v_scale;
}

// got and want agree: same NaN / +Inf / -Inf pattern, finite values within tol.
inline bool same_class(double got, double want, double tol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(got - want) <= tol;
}

}  // namespace ism_rel
