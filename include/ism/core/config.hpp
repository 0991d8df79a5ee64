#pragma once
// Index type and the host/device marker shared by every header.
#include <cstdint>
#include <limits>

// Helpers that the CUDA kernel also calls are marked ISM_HOST_DEVICE. Without
// nvcc the macro is plain `inline`, so no CUDA header is ever needed.
#if defined(__CUDACC__)
#define ISM_HOST_DEVICE __host__ __device__ inline
#else
#define ISM_HOST_DEVICE inline
#endif

namespace ism {

// Signed 64-bit everywhere on the data path: token counts times strides exceed
// 2^31 for long caches, and signed arithmetic keeps "end - begin" honest.
using index_t = std::int64_t;

// Length of a mask that has no layout (causal, prefix-LM, full): any position.
inline constexpr index_t unbounded = std::numeric_limits<index_t>::max();

namespace detail {
// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
ISM_HOST_DEVICE constexpr index_t ceil_div(index_t a, index_t b) { return a / b + (a % b != 0); }
}  // namespace detail

}  // namespace ism
