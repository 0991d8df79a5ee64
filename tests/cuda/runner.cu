// The runner's functions that do not depend on the element type.
#include <string>

#include "cuda/runner.hpp"
#include "ism/cuda/check.cuh"

namespace ism_cuda_test {

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
  if (major < 8) return "the GPU is older than sm_80 (the kernels need mma.sync bf16 and cp.async)";
  return {};
}

void check_status(int status, const char* call) {
  ism::cuda::detail::check(static_cast<cudaError_t>(status), call, __FILE__, __LINE__);
}

}  // namespace ism_cuda_test
