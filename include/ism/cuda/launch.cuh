#pragma once
// From checked requests to kernel launches: the options of a launch, the
// caller's workspace, the split choice, and the one place where runtime values
// (head dim, vector loads, modifiers, split) become template parameters of the
// kernels, in the manner of flash-attention's static_switch.h. Nothing here
// allocates, synchronises or asks the runtime about pointers when the caller
// passes a Workspace and a DeviceInfo (the per-step path of an engine); the
// counting test in tests/cuda/emulated_kernel_test.cpp holds it to that.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "ism/core/errors.hpp"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/check.cuh"
#include "ism/cuda/decode.cuh"
#include "ism/cuda/kernel_fwd.cuh"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/merge.cuh"
#include "ism/cuda/params.cuh"

namespace ism::cuda {

// Which kernel runs: the prefill kernel (query blocks of one head), the
// decode kernel (a KV head's GQA group packed), or the choice by shape.
enum class Path : std::uint8_t { Auto, Prefill, Decode };

// The device a call runs on and its SM count. Filled in (device_info()) once
// by a caller that wants no runtime query per call; left empty, each call asks
// cudaGetDevice and takes the SM count from a per-device cache.
struct DeviceInfo {
  int device = -1;
  int sm_count = 0;
};

// Device memory the caller owns, for the partial results of key splits. Size
// it once with workspace_bytes() for the largest call; with one, no call ever
// allocates. Calls on one stream may share it (the stream orders them); calls
// on different streams need one each.
struct Workspace {
  void* data = nullptr;  // 16-byte aligned device memory (cudaMalloc gives 256)
  size_t bytes = 0;
};

// The kernels a translation unit compiles for a call, as a template argument
// of the entry points (a type, not a macro, so two translation units that
// choose differently do not break the one-definition rule). Every variant is
// compiled by default; narrowing the set shortens builds, and a call that needs
// a variant left out throws ism::invalid_argument naming it, before any work.
//   Dims        head dims (kernel_dim of the call's dim)
//   kModifiers  softcap and ALiBi (off: only calls without them)
//   kUnaligned  the element-wise load path (off: every view must allow
//               16-byte vector access)
//   kSplits     key splits and their merge (off: never split)
template <class Dims = AllHeadDims, bool kModifiers = true, bool kUnaligned = true, bool kSplits = true>
struct Variants {
  using dims = Dims;
  static constexpr bool modifiers = kModifiers, unaligned = kUnaligned, splits = kSplits;
};
using AllVariants = Variants<>;

struct LaunchOptions {
  // Thread blocks sharing one row block's keys: 0 picks from the shape and the
  // SM count, 1 never splits, n > 1 forces n (capped at the key blocks).
  int kv_splits = 0;
  Path path = Path::Auto;
  Workspace workspace{};  // empty: a split allocates stream-ordered (cudaMallocAsync)
  DeviceInfo device{};    // empty: asked per call
  // Ask the runtime (cudaPointerGetAttributes) whether every buffer is device
  // memory, and refuse host memory with ism::invalid_argument. Off by default:
  // it costs a runtime call per buffer per call.
  bool check_pointers = false;
};

inline constexpr int kMaxSplits = detail::kMaxSplits;

// Bytes of workspace a call needs for `rows` query rows (the sum of
// q.heads * q.tokens over its requests) of head dim `dim` with up to
// `max_splits` key splits.
inline size_t workspace_bytes(index_t rows, index_t dim, int max_splits = kMaxSplits) {
  const int d = kernel_dim(dim) > 0 ? kernel_dim(dim) : kMaxHeadDim;
  return size_t(max_splits > 1 ? max_splits : 0) * size_t(rows > 0 ? rows : 0) * size_t(d + 2) * sizeof(float);
}

namespace detail {

inline int sm_count_of(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};
  if (device >= 0 && device < kMaxDevices) {
    const int c = cached[device].load(std::memory_order_relaxed);
    if (c > 0) return c;
  }
  int sms = 0;
  ISM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) cached[device].store(sms, std::memory_order_relaxed);
  return sms;
}

inline DeviceInfo resolve_device(const DeviceInfo& given) {
  if (given.device >= 0 && given.sm_count > 0) return given;
  DeviceInfo d = given;
  if (d.device < 0) ISM_CUDA_CHECK(cudaGetDevice(&d.device));
  if (d.sm_count <= 0) d.sm_count = sm_count_of(d.device);
  return d;
}

// The opt-in to more than 48 KiB of dynamic shared memory, once per kernel
// and device (a race costs one harmless extra call). Keyed by the kernel
// itself: kernels of different tile shapes share one function type.
template <auto Kernel>
void allow_shared_memory(int device, size_t bytes) {
  static std::atomic<std::uint64_t> done{0};
  const std::uint64_t bit = device >= 0 && device < 64 ? std::uint64_t(1) << device : 0;
  if (bit != 0 && (done.load(std::memory_order_relaxed) & bit) != 0) return;
  ISM_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(Kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(bytes)));
  done.fetch_or(bit, std::memory_order_relaxed);
}

template <auto Kernel, class P>
void launch(dim3 grid, int threads, size_t smem, cudaStream_t stream, const P& params, int device,
            const char* name) {
  if (smem > 48 * 1024) allow_shared_memory<Kernel>(device, smem);
#if defined(ISM_CUDA_HOST_EMULATION)
  ::ism_emu::launch(Kernel, grid, threads, smem, stream, params);
#else
  Kernel<<<grid, threads, smem, stream>>>(params);
#endif
  check(cudaGetLastError(), name, __FILE__, __LINE__);
}

// Frees a stream-ordered allocation on every path out of a launch.
struct StreamAllocation {
  void* p = nullptr;
  cudaStream_t stream = nullptr;
  ~StreamAllocation() {
    if (p != nullptr) (void)cudaFreeAsync(p, stream);
  }
};

template <class F>
void bool_switch(bool c, F&& f) {
  if (c) f(std::true_type{});
  else f(std::false_type{});
}

// Refuses, before any work, a call that needs a kernel the Variants left out.
template <class V>
void check_variants(const char* where, index_t dim, bool vec, int mods, int kv_splits) {
  const int d = kernel_dim(dim);
  if (!V::dims::has(d))
    ism::detail::fail(where, "q.dim = ", dim, " runs on the head-dim-", d,
                      " kernel, which this call's ism::cuda::Variants leave out");
  if (mods != 0 && !V::modifiers)
    ism::detail::fail(where, "options.softcap / options.alibi_slopes are set, but this call's ism::cuda::Variants "
                             "leave the modifier kernels out");
  if (!vec && !V::unaligned)
    ism::detail::fail(where, "a view is not 16-byte aligned with strides and dim multiples of 8, and this call's "
                             "ism::cuda::Variants leave the element-wise load path out");
  if (kv_splits > 1 && !V::splits)
    ism::detail::fail(where, "launch.kv_splits = ", kv_splits, ", but this call's ism::cuda::Variants leave splits out");
}

// Lays out one launch group (block and row offsets of its requests), picks
// its split count, and launches the kernel variant (and the merge). The
// requests' checks are done; so are check_variants and the workspace size of
// a forced split.
template <class V, class Traits, bool kDecode, class T, class KV, class Mask, int kMax>
void run_path(LaunchParams<T, KV, Mask, kMax>& p, bool vec, int mods, const LaunchOptions& lo,
              const DeviceInfo& dev, cudaStream_t stream) {
  constexpr int BN = Traits::kBlockN, D = Traits::kDim;
  index_t blocks = 0, rows = 0, key_blocks = 1;
  for (int r = 0; r < p.count; ++r) {
    Request<T, KV, Mask>& rq = p.req[r];
    rq.block_begin = blocks;
    rq.row_begin = rows;
    if constexpr (kDecode)
      blocks += ism::detail::ceil_div(rq.n_q * rq.group, Traits::kRows) * (rq.q_heads / rq.group);
    else
      blocks += ism::detail::ceil_div(rq.n_q, Traits::kBlockM) * rq.q_heads;
    rows += rq.q_heads * rq.n_q;
    key_blocks = std::max(key_blocks, ism::detail::ceil_div(rq.n_k, BN));
  }
  if (blocks == 0) return;
  if (blocks > index_t(0x7fffffff))
    ism::detail::fail("ism::cuda::attention", "the call needs ", blocks, " thread blocks, more than a grid holds");

  int splits = 1;
  if (lo.kv_splits > 0) splits = int(std::min<index_t>(lo.kv_splits, key_blocks));
  else if (V::splits)
    splits = choose_kv_splits(blocks, key_blocks, dev.sm_count, kMaxSplits, kDecode ? 2 * Traits::kWarps : 4);
  const size_t split_bytes = size_t(rows) * size_t(D + 2) * sizeof(float);
  StreamAllocation scratch{nullptr, stream};
  if (splits > 1) {
    void* base = lo.workspace.data;
    if (base != nullptr) {
      // An automatic split shrinks to what the workspace holds (a forced one
      // was checked at the entry).
      splits = int(std::min<size_t>(size_t(splits), lo.workspace.bytes / split_bytes));
    } else {
      ISM_CUDA_CHECK(cudaMallocAsync(&scratch.p, size_t(splits) * split_bytes, stream));
      base = scratch.p;
    }
    float* f = static_cast<float*>(base);
    const index_t s = std::max(splits, 1);
    p.split = {splits, rows, f, f + s * rows * D, f + s * rows * (D + 1)};
  }
  if (splits < 2) p.split = {1, rows, nullptr, nullptr, nullptr};

  const dim3 grid{unsigned(blocks), 1u, unsigned(splits > 1 ? splits : 1)};
  constexpr size_t smem = Traits::kSmemElems * sizeof(T);
  auto go = [&](auto vec_c, auto split_c, auto mods_c) {
    constexpr bool kVec = decltype(vec_c)::value, kSplit = decltype(split_c)::value;
    constexpr int kMods = decltype(mods_c)::value;
    if constexpr ((kVec || V::unaligned) && (!kSplit || V::splits) && (kMods == 0 || V::modifiers)) {
      if constexpr (kDecode)
        launch<&attention_decode_kernel<Traits, T, KV, Mask, kMax, kVec, kMods, kSplit>>(
            grid, Traits::kThreads, smem, stream, p, dev.device, "attention_decode_kernel<<<...>>> launch");
      else
        launch<&attention_fwd_kernel<Traits, T, KV, Mask, kMax, kVec, kMods, kSplit>>(
            grid, Traits::kThreads, smem, stream, p, dev.device, "attention_fwd_kernel<<<...>>> launch");
    }
  };
  bool_switch(vec, [&](auto vec_c) {
    bool_switch(splits > 1, [&](auto split_c) {
      switch (mods) {
        case 0: return go(vec_c, split_c, std::integral_constant<int, 0>{});
        case kModSoftcap: return go(vec_c, split_c, std::integral_constant<int, kModSoftcap>{});
        case kModAlibi: return go(vec_c, split_c, std::integral_constant<int, kModAlibi>{});
        default: return go(vec_c, split_c, std::integral_constant<int, kModSoftcap | kModAlibi>{});
      }
    });
  });

  if (splits > 1) {
    if constexpr (V::splits) {
      MergeParams<kMax> mp{};
      for (int r = 0; r < p.count; ++r) {
        const Request<T, KV, Mask>& rq = p.req[r];
        mp.req[r] = {rq.out, rq.out_token_stride, rq.out_head_stride, rq.lse, rq.n_q, rq.row_begin};
      }
      mp.count = p.count;
      mp.dim = p.dim;
      mp.stride = D;
      mp.sinks = p.score.sinks;
      mp.split = p.split;
      launch<&merge_splits_kernel<T, kMax>>(dim3{unsigned(rows)}, 128, (kMaxSplits + 1) * sizeof(float), stream, mp,
                                            dev.device, "merge_splits_kernel<<<...>>> launch");
    }
  }
}

// Runtime head dim -> compile-time tile shapes, then the path.
template <class V, class T, class KV, class Mask, int kMax>
void run_group(LaunchParams<T, KV, Mask, kMax>& p, bool decode, bool vec, int mods, const LaunchOptions& lo,
               const DeviceInfo& dev, cudaStream_t stream) {
  auto with_dim = [&](auto dim_c) {
    constexpr int kD = decltype(dim_c)::value;
    if constexpr (V::dims::has(kD)) {
      if (decode) run_path<V, DecodeTraitsFor<kD>, true>(p, vec, mods, lo, dev, stream);
      else run_path<V, FwdTraitsFor<kD>, false>(p, vec, mods, lo, dev, stream);
    }
  };
  switch (kernel_dim(p.dim)) {
    case 64: return with_dim(std::integral_constant<int, 64>{});
    case 80: return with_dim(std::integral_constant<int, 80>{});
    case 96: return with_dim(std::integral_constant<int, 96>{});
    case 128: return with_dim(std::integral_constant<int, 128>{});
    default: return with_dim(std::integral_constant<int, 256>{});
  }
}

}  // namespace detail

// The current device and its SM count (asked once per device), for
// LaunchOptions::device.
inline DeviceInfo device_info() { return detail::resolve_device({}); }

}  // namespace ism::cuda
