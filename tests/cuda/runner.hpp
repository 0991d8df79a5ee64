#pragma once
// The seam between the GPU tests (plain C++) and the CUDA kernel (runner.cu,
// nvcc): host tensors in, host results out, every device step checked.
#include <string>

#include "cuda/mask_arg.hpp"
#include "ism/core/options.hpp"
#include "ism/core/views.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/simple_masks.hpp"

namespace ism_cuda_test {

// Empty when a CUDA device is usable; otherwise the reason, for GTEST_SKIP.
std::string gpu_unavailable_reason();

// Copies each host view's whole buffer span to the device (same strides),
// runs ism::cuda::attention on a fresh stream, and copies out's span and the
// LSE (options.lse, a host pointer here, [q.heads][q.tokens]) back. Elements
// of out's span outside the view go up and come back, so a test sees any
// stray write. kv_splits: LaunchOptions::kv_splits.
template <class T>
void run_on_gpu(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options, int kv_splits);

// Calls ism::cuda::attention on these pointers as given (host pointers, for
// the argument checks that must throw before anything reaches the device).
template <class T>
void call_directly(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                   ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options);

// Runs a status through the library's check (ISM_CUDA_CHECK's function).
void check_status(int status, const char* call);

}  // namespace ism_cuda_test
