#pragma once
// Every CUDA runtime call goes through ISM_CUDA_CHECK, which turns a failed
// status into ism::cuda::cuda_error naming the call, the file and the line.
// ISM_CUDA_HOST_EMULATION: the test suite's CPU emulator (tests/cuda/emulator.hpp)
// compiles the kernel with a host compiler; nothing else should define it.
#if !defined(__CUDACC__) && !defined(ISM_CUDA_HOST_EMULATION)
#error "ism/cuda/*.cuh needs nvcc: compile this translation unit as CUDA (a .cu file, or LANGUAGE CUDA in CMake). Non-CUDA code includes ism/ism.hpp only."
#endif

#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace ism::cuda {

class cuda_error : public std::runtime_error {
 public:
  cuda_error(cudaError_t code, const std::string& what) : std::runtime_error(what), code_(code) {}
  cudaError_t code() const noexcept { return code_; }

 private:
  cudaError_t code_;
};

namespace detail {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  // A failed call can leave a sticky error in the runtime's last-error slot;
  // clearing it keeps the next, unrelated check from reporting this failure.
  (void)cudaGetLastError();
  std::ostringstream os;
  os << call << " failed: " << cudaGetErrorName(status) << " (" << cudaGetErrorString(status) << ") at "
     << file << ":" << line;
  throw cuda_error(status, os.str());
}

}  // namespace detail
}  // namespace ism::cuda

#define ISM_CUDA_CHECK(call) ::ism::cuda::detail::check((call), #call, __FILE__, __LINE__)
