#pragma once
// Storage types of the CUDA kernel. The kernel runs on CUDA's own __half and
// __nv_bfloat16; Eigen::half and Eigen::bfloat16 (what the CPU side and the
// reference use) hold the same 16 bits, so their buffers are passed through by
// reinterpretation, never copied.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <Eigen/Core>
#include <cstring>
#include <type_traits>

#include "ism/cuda/check.cuh"

namespace ism::cuda {

template <class T>
struct device_element {
  static constexpr bool supported = false;
};
template <>
struct device_element<__half> {
  static constexpr bool supported = true;
  using type = __half;
};
template <>
struct device_element<__nv_bfloat16> {
  static constexpr bool supported = true;
  using type = __nv_bfloat16;
};
template <>
struct device_element<Eigen::half> {
  static constexpr bool supported = true;
  using type = __half;
};
template <>
struct device_element<Eigen::bfloat16> {
  static constexpr bool supported = true;
  using type = __nv_bfloat16;
};

template <class T>
using device_element_t = typename device_element<T>::type;

static_assert(sizeof(Eigen::half) == sizeof(__half) && alignof(Eigen::half) == alignof(__half) &&
                  std::is_trivially_copyable_v<Eigen::half>,
              "Eigen::half must be layout-identical to __half");
static_assert(sizeof(Eigen::bfloat16) == sizeof(__nv_bfloat16) &&
                  alignof(Eigen::bfloat16) == alignof(__nv_bfloat16) &&
                  std::is_trivially_copyable_v<Eigen::bfloat16>,
              "Eigen::bfloat16 must be layout-identical to __nv_bfloat16");

template <class T>
__device__ inline T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else return __float2bfloat16_rn(x);
}

// Two floats rounded into one 32-bit register; `lo` lands in the low half,
// which is the element with the smaller index in an mma fragment.
template <class T>
__device__ inline unsigned pack2(float lo, float hi) {
  unsigned r;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    static_assert(sizeof(h) == sizeof(r));
    memcpy(&r, &h, sizeof(r));
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    static_assert(sizeof(h) == sizeof(r));
    memcpy(&r, &h, sizeof(r));
  }
  return r;
}

}  // namespace ism::cuda
