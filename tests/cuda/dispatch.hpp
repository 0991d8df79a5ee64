#pragma once
// From a test case's arguments to an ism::cuda call, for both backends of the
// tests: runner.cu (nvcc, device memory) and the CPU emulation (host memory
// seen as device memory). The emulated test includes cuda/emulator.hpp first.
//
// Each kind of case compiles the kernel set it needs (ism::cuda::Variants),
// which keeps the tests' build to a few hundred kernels instead of every
// variant for every mask policy. Kernels do not depend on the set, so sets
// that overlap share their kernels.
#include <cstdint>
#include <vector>

#include "cuda/mask_arg.hpp"
#include "ism/core/options.hpp"
#include "ism/core/views.hpp"
#include "ism/cuda.hpp"
#include "ism/kv/paged_view.hpp"
#include "ism/mask/simple_masks.hpp"

namespace ism_cuda_test {

using ism::index_t;
// Every head dim, no modifiers: a DeviceMask's bounds, contiguous K/V.
using DimsVariants = ism::cuda::Variants<ism::cuda::AllHeadDims, false>;
// Softcap and ALiBi (sinks need no variant of their own).
using ModsVariants = ism::cuda::Variants<ism::cuda::HeadDims<64, 128>, true>;
// Mask policies other than a DeviceMask's bounds (simple masks, windows).
using NativeVariants = ism::cuda::Variants<ism::cuda::HeadDims<64>, false>;
// Paged caches and batches.
using PagedVariants = ism::cuda::Variants<ism::cuda::HeadDims<64, 128>, false>;

inline ism::cuda::Path to_path(PathArg p) {
  return p == PathArg::Decode ? ism::cuda::Path::Decode
         : p == PathArg::Prefill ? ism::cuda::Path::Prefill
                                 : ism::cuda::Path::Auto;
}

// A case's data where the kernel can read it.
template <class T>
struct KernelArgs {
  ism::HeadsView<const T> q, k, v;
  ism::HeadsView<T> out;
  ism::AttentionOptions options;  // lse, sinks, alibi_slopes: kernel-readable
  ism::RowBoundsMask bounds;      // MaskKind::Segments: kernel-readable bounds
  // LaunchArg::page_size > 0: the pools and block table (PagedCopy's layout).
  const T* k_pages = nullptr;
  const T* v_pages = nullptr;
  const void* table = nullptr;
  index_t num_pages = 0;
};

template <class T>
void call_attention(const KernelArgs<T>& a, const MaskArg& mask, const LaunchArg& la, cudaStream_t stream,
                    ism::cuda::LaunchOptions lo = {}) {
  lo.kv_splits = la.kv_splits;
  lo.path = to_path(la.path);
  const bool mods = a.options.softcap > 0.f || a.options.alibi_slopes != nullptr;
  if (la.page_size > 0) {
    auto paged = [&](const auto* table) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(table)>>;
      const ism::PagedKV<T, I> kv(a.k_pages, a.v_pages, a.num_pages, la.page_size, a.k.heads, a.k.dim, table,
                                  a.k.tokens);
      ism::cuda::attention<T>(a.q, kv, a.out, a.bounds, a.options, stream, lo, PagedVariants{});
    };
    if (la.table64) paged(static_cast<const std::int64_t*>(a.table));
    else paged(static_cast<const std::int32_t*>(a.table));
    return;
  }
  if (mask.kind == MaskKind::Segments && mask.window == 0) {
    if (mods) ism::cuda::attention<T>(a.q, a.k, a.v, a.out, a.bounds, a.options, stream, lo, ModsVariants{});
    else ism::cuda::attention<T>(a.q, a.k, a.v, a.out, a.bounds, a.options, stream, lo, DimsVariants{});
    return;
  }
  auto native = [&](const auto& m) {
    using M = std::decay_t<decltype(m)>;
    if (mask.window > 0)
      ism::cuda::attention<T>(a.q, a.k, a.v, a.out, LocalWindow<M>{m, mask.window}, a.options, stream, lo,
                              NativeVariants{});
    else ism::cuda::attention<T>(a.q, a.k, a.v, a.out, m, a.options, stream, lo, NativeVariants{});
  };
  switch (mask.kind) {
    case MaskKind::Full: return native(ism::full_mask());
    case MaskKind::Causal: return native(ism::causal_mask());
    case MaskKind::Prefix: return native(ism::prefix_mask(mask.prefix));
    case MaskKind::Segments: return native(a.bounds);
  }
}

// One request of a batch where the kernel can read it.
template <class T>
struct BatchArgs {
  ism::HeadsView<const T> q, k, v;
  ism::HeadsView<T> out;
  ism::RowBoundsMask bounds;
  index_t q_offset = -1;
  float* lse = nullptr;
  const T* k_pages = nullptr;
  const T* v_pages = nullptr;
  const std::int32_t* table = nullptr;
  index_t num_pages = 0;
};

template <class T>
void call_batch(const std::vector<BatchArgs<T>>& items, const ism::AttentionOptions& opt, const LaunchArg& la,
                cudaStream_t stream, ism::cuda::LaunchOptions lo = {}) {
  lo.kv_splits = la.kv_splits;
  lo.path = to_path(la.path);
  if (la.page_size > 0) {
    std::vector<ism::cuda::PagedAttentionRequest<T, std::int32_t, ism::RowBoundsMask>> reqs;
    for (const BatchArgs<T>& b : items)
      reqs.push_back({b.q,
                      ism::PagedKV<T, std::int32_t>(b.k_pages, b.v_pages, b.num_pages, la.page_size, b.k.heads,
                                                    b.k.dim, b.table, b.k.tokens),
                      b.out, &b.bounds, b.q_offset, b.lse});
    ism::cuda::attention_batch(reqs, opt, stream, lo, PagedVariants{});
    return;
  }
  std::vector<ism::cuda::AttentionRequest<T, ism::RowBoundsMask>> reqs;
  for (const BatchArgs<T>& b : items) reqs.push_back({b.q, b.k, b.v, b.out, &b.bounds, b.q_offset, b.lse});
  ism::cuda::attention_batch(reqs, opt, stream, lo, PagedVariants{});
}

}  // namespace ism_cuda_test
