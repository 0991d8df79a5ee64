// The CUDA side of the GPU tests: uploads, the call, downloads. See runner.hpp.
#include "runner.hpp"

#include <vector>

#include "ism/cuda.hpp"

namespace ism_cuda_test {

namespace {

template <class T>
size_t span_elems(const ism::HeadsView<T>& v) {
  if (v.tokens == 0) return 0;
  return size_t((v.tokens - 1) * v.token_stride + (v.heads - 1) * v.head_stride + v.dim);
}

// Device copy of a host view's span; frees itself.
template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t elems) : n(elems) {
    if (n) ISM_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T)));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  void upload(const T* host) {
    if (n) ISM_CUDA_CHECK(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice));
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

template <class T, class Run>
void with_mask(const MaskArg& mask, Run&& run) {
  switch (mask.kind) {
    case MaskKind::Full: return run(ism::full_mask());
    case MaskKind::Causal: return run(ism::causal_mask());
    case MaskKind::Prefix: return run(ism::prefix_mask(mask.prefix));
    case MaskKind::Segments: {
      const ism::cuda::DeviceMask device_mask(*mask.segments);
      return run(device_mask);
    }
  }
}

}  // namespace

std::string gpu_unavailable_reason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
           "): no usable CUDA device or driver on this machine";
  }
  if (count == 0) return "cudaGetDeviceCount reports 0 devices: no GPU on this machine";
  int device = 0, major = 0;
  ISM_CUDA_CHECK(cudaGetDevice(&device));
  ISM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) return "the GPU is older than sm_80 (the kernel needs mma.sync bf16 and cp.async)";
  return {};
}

template <class T>
void run_on_gpu(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options, int kv_splits) {
  DeviceBuffer<T> dq(span_elems(q)), dk(span_elems(k)), dv(span_elems(v)), dout(span_elems(out));
  dq.upload(q.data);
  dk.upload(k.data);
  dv.upload(v.data);
  dout.upload(out.data);
  const size_t lse_n = options.lse ? size_t(q.heads * q.tokens) : 0;
  DeviceBuffer<float> dlse(lse_n);
  if (lse_n) ISM_CUDA_CHECK(cudaMemset(dlse.ptr, 0, lse_n * sizeof(float)));
  ism::AttentionOptions o = options;
  o.lse = options.lse ? dlse.ptr : nullptr;
  Stream stream;
  ism::cuda::LaunchOptions launch;
  launch.kv_splits = kv_splits;
  with_mask<T>(mask, [&](const auto& m) {
    ism::cuda::attention<T>(on_device(q, static_cast<const T*>(dq.ptr)), on_device(k, static_cast<const T*>(dk.ptr)),
                            on_device(v, static_cast<const T*>(dv.ptr)), on_device(out, dout.ptr), m, o, stream.s,
                            launch);
    // The DeviceMask must outlive the kernel: wait inside its scope.
    ISM_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  });
  dout.download(out.data);
  if (lse_n) dlse.download(options.lse);
}

template <class T>
void call_directly(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                   ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options) {
  if (mask.kind == MaskKind::Segments) {
    // Host bounds on purpose: the call must refuse them, not fault on them.
    ism::cuda::attention<T>(q, k, v, out, mask.segments->bounds(), options);
    return;
  }
  with_mask<T>(mask, [&](const auto& m) { ism::cuda::attention<T>(q, k, v, out, m, options); });
}

void check_status(int status, const char* call) {
  ism::cuda::detail::check(static_cast<cudaError_t>(status), call, __FILE__, __LINE__);
}

#define ISM_INSTANTIATE(T)                                                                                  \
  template void run_on_gpu<T>(ism::HeadsView<const T>, ism::HeadsView<const T>, ism::HeadsView<const T>,  \
                              ism::HeadsView<T>, const MaskArg&, const ism::AttentionOptions&, int);        \
  template void call_directly<T>(ism::HeadsView<const T>, ism::HeadsView<const T>, ism::HeadsView<const T>, \
                                 ism::HeadsView<T>, const MaskArg&, const ism::AttentionOptions&);
ISM_INSTANTIATE(Eigen::half)
ISM_INSTANTIATE(Eigen::bfloat16)
#undef ISM_INSTANTIATE

}  // namespace ism_cuda_test
