#pragma once
// The seam between the GPU tests (plain C++) and ism::cuda (runner*.cu,
// nvcc): host tensors in, host results out, every device step checked.
#include <string>
#include <vector>

#include "cuda/case_data.hpp"
#include "cuda/mask_arg.hpp"
#include "ism/core/options.hpp"
#include "ism/core/views.hpp"

namespace ism_cuda_test {

// Empty when a CUDA device is usable; otherwise the reason, for GTEST_SKIP.
std::string gpu_unavailable_reason();

// Copies each host view's whole buffer span to the device (same strides),
// options' lse, sinks and slopes, the mask (a DeviceMask for a SegmentMask)
// and, for LaunchArg::page_size > 0, a paged copy of K/V; runs
// ism::cuda::attention on a fresh stream with a workspace of its own; copies
// out's span and the LSE back. Elements of out's span outside the view go up
// and come back, so a test sees any stray write.
template <class T>
void run_on_gpu(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options, const LaunchArg& la);

// The same for a batch: every request uploaded, one attention_batch call.
template <class T>
void run_batch_on_gpu(const std::vector<BatchView<T>>& items, const ism::AttentionOptions& options, const LaunchArg& la);

// Calls ism::cuda::attention on these pointers as given (host pointers), with
// LaunchOptions::check_pointers: for the argument checks that must throw
// before anything reaches the device.
template <class T>
void call_directly(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                   ism::HeadsView<T> out, const MaskArg& mask, const ism::AttentionOptions& options);

// Runs a status through the library's check (ISM_CUDA_CHECK's function).
void check_status(int status, const char* call);

}  // namespace ism_cuda_test
