#pragma once
// The CUDA side of the GPU tests: uploads, the call, downloads (runner.hpp).
// runner_half.cu and runner_bf16.cu instantiate it, one element type each.
#include <memory>
#include <optional>
#include <vector>

#include "cuda/dispatch.hpp"
#include "cuda/runner.hpp"
#include "ism/cuda.hpp"

namespace ism_cuda_test {

template <class T>
size_t span_elems(const ism::HeadsView<T>& v) {
  if (v.tokens == 0) return 0;
  return size_t((v.tokens - 1) * v.token_stride + (v.heads - 1) * v.head_stride + v.dim);
}

// Device memory that frees itself.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t elems) : n(elems) {
    if (n) ISM_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
  }
  DeviceBuffer(const T* host, size_t elems) : DeviceBuffer(elems) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  void upload(const T* host) {
    if (n && host) ISM_CUDA_CHECK(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* host) const {
    if (n) ISM_CUDA_CHECK(cudaMemcpy(host, ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
};

template <class V, class T>
V on_device(const V& host_view, T* device) {
  V d = host_view;
  d.data = device;
  return d;
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { ISM_CUDA_CHECK(cudaStreamCreate(&s)); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

// Everything one request needs on the device.
template <class T>
struct DeviceRequest {
  DeviceBuffer<T> q, k, v, out;
  DeviceBuffer<float> lse;
  std::optional<ism::cuda::DeviceMask> mask;
  std::optional<PagedCopy<T>> paged;
  std::optional<DeviceBuffer<T>> k_pages, v_pages;
  std::optional<DeviceBuffer<std::int32_t>> table32;
  std::optional<DeviceBuffer<std::int64_t>> table64;
  DeviceRequest(ism::HeadsView<const T> hq, ism::HeadsView<const T> hk, ism::HeadsView<const T> hv,
                ism::HeadsView<T> hout, const float* host_lse, const ism::SegmentMask* segments, const LaunchArg& la,
                cudaStream_t stream)
      : q(hq.data, span_elems(hq)), k(hk.data, span_elems(hk)), v(hv.data, span_elems(hv)),
        out(hout.data, span_elems(hout)), lse(host_lse ? size_t(hq.heads * hq.tokens) : 0) {
    if (lse.n) ISM_CUDA_CHECK(cudaMemset(lse.ptr, 0, lse.n * sizeof(float)));
    if (segments) mask.emplace(*segments, stream);
    if (la.page_size > 0) {
      paged.emplace(hk, hv, la.page_size, std::uint64_t(hk.tokens * 1000 + la.page_size));
      k_pages.emplace(paged->k.data(), paged->k.size());
      v_pages.emplace(paged->v.data(), paged->v.size());
      table32.emplace(paged->table32.data(), paged->table32.size());
      table64.emplace(paged->table64.data(), paged->table64.size());
    }
  }
};

template <class T>
void run_on_gpu(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options, const LaunchArg& la) {
  Stream stream;
  DeviceRequest<T> d(q, k, v, out, options.lse, mask.segments, la, stream.s);
  const DeviceBuffer<float> sinks(options.sinks, options.sinks ? size_t(q.heads) : 0);
  const DeviceBuffer<float> slopes(options.alibi_slopes, options.alibi_slopes ? size_t(q.heads) : 0);
  ism::AttentionOptions o = options;
  o.lse = options.lse ? d.lse.ptr : nullptr;
  o.sinks = options.sinks ? sinks.ptr : nullptr;
  o.alibi_slopes = options.alibi_slopes ? slopes.ptr : nullptr;
  KernelArgs<T> a{on_device(q, static_cast<const T*>(d.q.ptr)), on_device(k, static_cast<const T*>(d.k.ptr)),
                  on_device(v, static_cast<const T*>(d.v.ptr)), on_device(out, d.out.ptr), o,
                  d.mask ? d.mask->policy() : ism::RowBoundsMask{}};
  if (d.paged) {
    a.k_pages = d.k_pages->ptr;
    a.v_pages = d.v_pages->ptr;
    a.table = la.table64 ? static_cast<const void*>(d.table64->ptr) : d.table32->ptr;
    a.num_pages = d.paged->num_pages;
  }
  // A workspace of the caller's, as an engine would pass.
  const DeviceBuffer<char> ws(ism::cuda::workspace_bytes(q.heads * q.tokens, q.dim));
  ism::cuda::LaunchOptions lo;
  lo.workspace = {ws.ptr, ws.n};
  lo.check_pointers = true;
  call_attention(a, mask, la, stream.s, lo);
  // Buffers and the DeviceMask must outlive the kernels.
  ISM_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  d.out.download(out.data);
  if (d.lse.n) d.lse.download(options.lse);
}

template <class T>
void run_batch_on_gpu(const std::vector<BatchView<T>>& items, const ism::AttentionOptions& options, const LaunchArg& la) {
  Stream stream;
  std::vector<std::unique_ptr<DeviceRequest<T>>> dev;
  std::vector<BatchArgs<T>> args;
  for (const BatchView<T>& it : items) {
    dev.push_back(std::make_unique<DeviceRequest<T>>(it.q, it.k, it.v, it.out, it.lse, it.mask, la, stream.s));
    DeviceRequest<T>& d = *dev.back();
    BatchArgs<T> b{on_device(it.q, static_cast<const T*>(d.q.ptr)),
                   on_device(it.k, static_cast<const T*>(d.k.ptr)),
                   on_device(it.v, static_cast<const T*>(d.v.ptr)),
                   on_device(it.out, d.out.ptr),
                   d.mask->policy(),
                   it.q_offset,
                   d.lse.ptr};
    if (d.paged) {
      b.k_pages = d.k_pages->ptr;
      b.v_pages = d.v_pages->ptr;
      b.table = d.table32->ptr;
      b.num_pages = d.paged->num_pages;
    }
    args.push_back(b);
  }
  call_batch(args, options, la, stream.s);
  ISM_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  for (size_t i = 0; i < items.size(); ++i) {
    dev[i]->out.download(items[i].out.data);
    dev[i]->lse.download(items[i].lse);
  }
}

template <class T>
void call_directly(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                   ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options) {
  ism::cuda::LaunchOptions lo;
  lo.check_pointers = true;
  // Host bounds on purpose for a SegmentMask: the call must refuse them.
  KernelArgs<T> a{q, k, v, out, options, mask.segments ? mask.segments->bounds() : ism::RowBoundsMask{}};
  call_attention(a, mask, LaunchArg{}, nullptr, lo);
}

#define ISM_INSTANTIATE_RUNNER(T)                                                                               \
  template void run_on_gpu<T>(ism::HeadsView<const T>, ism::HeadsView<const T>, ism::HeadsView<const T>,       \
                              ism::HeadsView<T>, const MaskArg&, const ism::AttentionOptions&, const LaunchArg&); \
  template void run_batch_on_gpu<T>(const std::vector<BatchView<T>>&, const ism::AttentionOptions&, const LaunchArg&); \
  template void call_directly<T>(ism::HeadsView<const T>, ism::HeadsView<const T>, ism::HeadsView<const T>,      \
                                 ism::HeadsView<T>, const MaskArg&, const ism::AttentionOptions&);

}  // namespace ism_cuda_test
