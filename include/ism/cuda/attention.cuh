#pragma once
// ism::cuda::attention: the docs/DESIGN.md section 2 contract on device buffers and a
// stream. q, k, v, out (and options.lse) are device pointers; the mask is a
// simple mask by value or a DeviceMask. Arguments are checked on the host
// before anything is launched (nothing is written when the call throws); the
// launch is asynchronous on `stream`.
#include <atomic>
#include <cstdint>

#include "ism/core/options.hpp"
#include "ism/core/validate.hpp"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/check.cuh"
#include "ism/cuda/decode.cuh"
#include "ism/cuda/element.cuh"
#include "ism/cuda/kernel_fwd.cuh"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/mask_device.cuh"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/simple_masks.hpp"

namespace ism::cuda {

struct LaunchOptions {
  // Thread blocks sharing one query block's keys (the decode path): 0 picks
  // from the shape and the GPU's SM count, 1 never splits.
  int kv_splits = 0;
};

namespace detail {

// Memory the kernel can dereference: device, managed, or host memory mapped
// at the same address. Anything else would fault inside the kernel, far from
// the call that passed it.
inline void check_device_pointer(const char* where, const char* name, const void* p) {
  if (p == nullptr) return;
  cudaPointerAttributes a{};
  check(cudaPointerGetAttributes(&a, p), "cudaPointerGetAttributes", __FILE__, __LINE__);
  const bool ok = a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ||
                  (a.type == cudaMemoryTypeHost && a.devicePointer == p);
  if (!ok) ism::detail::fail(where, name, " = ", p, " is not device memory (allocate it with cudaMalloc)");
}

template <class Mask>
void check_mask_pointers(const char*, const Mask&) {}
inline void check_mask_pointers(const char* where, const RowBoundsMask& m) {
  if (m.n == 0) return;
  if (m.lo == nullptr || m.hi == nullptr)
    ism::detail::fail(where, "mask has length ", m.n, " but null bounds");
  check_device_pointer(where, "mask.lo (upload a SegmentMask with ism::cuda::DeviceMask)", m.lo);
  check_device_pointer(where, "mask.hi (upload a SegmentMask with ism::cuda::DeviceMask)", m.hi);
}

// Frees the decode workspace on every path out of launch().
struct StreamBuffer {
  void* p = nullptr;
  cudaStream_t stream = nullptr;
  ~StreamBuffer() {
    if (p != nullptr) (void)cudaFreeAsync(p, stream);
  }
};

inline int current_device() {
  int device = 0;
  ISM_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// Asked once per device: decode calls are a few microseconds of GPU time,
// and host work before the launch shows up in them.
inline int sm_count(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices && cached[device].load(std::memory_order_relaxed) > 0)
    return cached[device].load(std::memory_order_relaxed);
  int sms = 0;
  ISM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) cached[device].store(sms, std::memory_order_relaxed);
  return sms;
}

// The opt-in to more than 48 KiB of dynamic shared memory, once per kernel
// and device (setting it again is harmless, so a race costs one extra call).
template <class Kernel>
void allow_shared_memory(Kernel* kernel, int device, size_t bytes) {
  static std::atomic<std::uint64_t> done{0};
  const std::uint64_t bit = device >= 0 && device < 64 ? std::uint64_t(1) << device : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return;
  ISM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  done.fetch_or(bit, std::memory_order_relaxed);
}

template <class Traits, class T, class Mask>
void launch(FwdParams<T> p, const Mask& mask, index_t q_heads, cudaStream_t stream, const LaunchOptions& lo) {
  const index_t q_blocks = (p.n_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const int device = current_device();
  const int splits = plan_splits<Traits>(p, q_heads, lo.kv_splits, lo.kv_splits == 0 ? sm_count(device) : 0);
  p.splits = splits;

  StreamBuffer workspace{nullptr, stream};
  if (splits > 1) {
    const size_t rows = size_t(splits) * size_t(q_heads) * size_t(p.n_q);
    ISM_CUDA_CHECK(cudaMallocAsync(&workspace.p, rows * (size_t(p.dim_pad) + 1) * sizeof(float), stream));
    p.part_out = static_cast<float*>(workspace.p);
    p.part_lse = p.part_out + rows * size_t(p.dim_pad);
  }

  constexpr size_t smem = Traits::kSmemElems * sizeof(T);
  auto* kernel = &attention_fwd_kernel<Traits, T, Mask>;
  allow_shared_memory(kernel, device, smem);
  const dim3 grid{unsigned(q_blocks), unsigned(q_heads), unsigned(splits)};
  kernel<<<grid, Traits::kThreads, smem, stream>>>(p, mask);
  check(cudaGetLastError(), "attention_fwd_kernel<<<...>>> launch", __FILE__, __LINE__);
  if (splits > 1) {
    const dim3 mgrid{unsigned(p.n_q), unsigned(q_heads)};
    merge_splits_kernel<T><<<mgrid, 128, 0, stream>>>(p.part_out, p.part_lse, p.out, p.out_token_stride,
                                                      p.out_head_stride, p.lse, p.n_q, p.dim, p.dim_pad, splits);
    check(cudaGetLastError(), "merge_splits_kernel<<<...>>> launch", __FILE__, __LINE__);
  }
}

template <class T, class Mask>
void run(const char* where, HeadsView<const T> q, HeadsView<const T> k, HeadsView<const T> v, HeadsView<T> out,
         const Mask& mask, const AttentionOptions& opt, cudaStream_t stream, const LaunchOptions& lo) {
  static_assert(device_element<T>::supported,
                "ism::cuda::attention runs on tensor cores: T must be __half, __nv_bfloat16, Eigen::half or "
                "Eigen::bfloat16");
  const AttentionShape s = check_attention(where, q, k, v, out, mask, opt);
  if (s.dim > kMaxGenericDim)
    ism::detail::fail(where, "q.dim = ", s.dim, " exceeds the largest head dim the CUDA kernel supports (",
                      kMaxGenericDim, ")");
  if (lo.kv_splits < 0) ism::detail::fail(where, "launch.kv_splits = ", lo.kv_splits, " is negative");
  if (lo.kv_splits > 65535) ism::detail::fail(where, "launch.kv_splits = ", lo.kv_splits, " exceeds 65535");
  if (s.q_heads > 65535) ism::detail::fail(where, "q.heads = ", s.q_heads, " exceeds 65535 (grid limit)");
  if (s.n_q == 0) return;
  check_device_pointer(where, "q.data", q.data);
  check_device_pointer(where, "k.data", k.data);
  check_device_pointer(where, "v.data", v.data);
  check_device_pointer(where, "out.data", out.data);
  check_device_pointer(where, "options.lse", opt.lse);
  check_mask_pointers(where, mask);

  const auto p = make_params(q, k, v, out, s, opt.lse);
  dispatch_dim(s.dim, [&](auto traits) { launch<decltype(traits)>(p, mask, s.q_heads, stream, lo); });
}

}  // namespace detail

// q.heads must be a multiple of k.heads (GQA / MQA). T: __half,
// __nv_bfloat16, Eigen::half or Eigen::bfloat16; head dims up to 256 (64 and
// 128 have their own tiles). options.lse, when set, is a device pointer to
// [q.heads][q.tokens] floats. options.threads is ignored (the grid is sized
// from the shape).
template <class T, class Mask>
void attention(HeadsView<const ism::detail::type_identity_t<T>> q,
               HeadsView<const ism::detail::type_identity_t<T>> k,
               HeadsView<const ism::detail::type_identity_t<T>> v, HeadsView<T> out, const Mask& mask,
               const AttentionOptions& options = {}, cudaStream_t stream = nullptr,
               const LaunchOptions& launch = {}) {
  static_assert(!std::is_same_v<Mask, SegmentMask>,
                "a SegmentMask lives in host memory: upload it once with ism::cuda::DeviceMask and pass that");
  detail::run("ism::cuda::attention", q, k, v, out, mask, options, stream, launch);
}

template <class T>
void attention(HeadsView<const ism::detail::type_identity_t<T>> q,
               HeadsView<const ism::detail::type_identity_t<T>> k,
               HeadsView<const ism::detail::type_identity_t<T>> v, HeadsView<T> out, const DeviceMask& mask,
               const AttentionOptions& options = {}, cudaStream_t stream = nullptr,
               const LaunchOptions& launch = {}) {
  detail::run("ism::cuda::attention", q, k, v, out, mask.policy(), options, stream, launch);
}

}  // namespace ism::cuda
