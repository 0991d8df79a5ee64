// The CUDA runtime calls the library makes, emulated on the host and counted
// (emulator.hpp). Linked instead of libcudart into the emulated kernel test:
// these definitions are the functions cuda_runtime_api.h declares.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "cuda/emulator.hpp"

namespace ism_emu {

RuntimeCounts& counts() {
  static RuntimeCounts c;
  return c;
}

namespace {
std::mutex& memory_mutex() {
  static std::mutex m;
  return m;
}
std::map<const char*, size_t>& allocations() {
  static std::map<const char*, size_t> a;
  return a;
}
void* allocate(size_t bytes) {
  const size_t n = (bytes + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, n == 0 ? 256 : n);
  if (p == nullptr) return nullptr;
  // Fresh device memory holds garbage, not zeros: a kernel that reads what
  // it never wrote should not pass by luck.
  std::memset(p, 0x7f, n == 0 ? 256 : n);
  std::lock_guard<std::mutex> lock(memory_mutex());
  allocations()[static_cast<const char*>(p)] = bytes;
  return p;
}
cudaError_t release(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(memory_mutex());
    if (allocations().erase(static_cast<const char*>(p)) == 0) return cudaErrorInvalidValue;
  }
  std::free(p);
  return cudaSuccess;
}
}  // namespace

bool is_device_memory(const void* p) {
  std::lock_guard<std::mutex> lock(memory_mutex());
  auto it = allocations().upper_bound(static_cast<const char*>(p));
  if (it == allocations().begin()) return false;
  --it;
  return static_cast<const char*>(p) < it->first + (it->second == 0 ? 1 : it->second);
}

}  // namespace ism_emu

using ism_emu::counts;

cudaError_t cudaGetDevice(int* device) {
  ++counts().device_queries;
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* count) {
  ++counts().device_queries;
  *count = 0;
  return cudaErrorNoDevice;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  ++counts().device_queries;
  *value = attr == cudaDevAttrMultiProcessorCount ? 132 : 0;  // an H100 / H200
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  ++counts().allocations;
  *p = ism_emu::allocate(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  ++counts().allocations;
  *p = ism_emu::allocate(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  ++counts().frees;
  ++counts().syncs;  // cudaFree waits for the device
  return ism_emu::release(p);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  ++counts().frees;
  return ism_emu::release(p);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind, cudaStream_t) {
  ++counts().copies;
  counts().bytes_copied += long(n);
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, enum cudaMemcpyKind) {
  ++counts().copies;
  ++counts().syncs;
  counts().bytes_copied += long(n);
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  ++counts().copies;
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  ++counts().syncs;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  ++counts().syncs;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) {
  ++counts().func_attributes;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  ++counts().error_polls;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes* a, const void* p) {
  ++counts().pointer_queries;
  *a = cudaPointerAttributes{};
  if (ism_emu::is_device_memory(p)) {
    a->type = cudaMemoryTypeDevice;
    a->devicePointer = const_cast<void*>(p);
  } else {
    a->type = cudaMemoryTypeUnregistered;
  }
  return cudaSuccess;
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    default: return "cudaError(emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "an error of the emulated CUDA runtime";
}
