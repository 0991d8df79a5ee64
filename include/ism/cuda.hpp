#pragma once
// ism::cuda: the CUDA kernels (only in nvcc-compiled translation units;
// enable with -DISM_ENABLE_CUDA=ON and link ism::cuda). ism/ism.hpp never
// includes this, so the rest of the library needs no CUDA.
//
//   cuda/attention.cuh     the entry points (contiguous, paged, batched), their checks
//   cuda/launch.cuh        LaunchOptions, Workspace, Variants; runtime values -> template parameters
//   cuda/mask_device.cuh   DeviceMask: a SegmentMask's bounds in device memory, grown in place
//   cuda/params.cuh        what a launch passes to the kernels (requests, K/V sources)
//   cuda/kernel_fwd.cuh    the prefill kernel
//   cuda/decode.cuh        the decode kernel (a KV head's GQA group packed into one block)
//   cuda/merge.cuh         merging key splits (by ism/core/split_merge.hpp)
//   cuda/tile_io.cuh       tile loads, modified scores, online softmax, the two products
//   cuda/block_plan.hpp    which key blocks a row block visits, how keys split (host-testable)
//   cuda/kernel_traits.cuh tile shapes per head dim (64, 80, 96, 128, 256)
//   cuda/mma.cuh           ldmatrix, mma.sync, cp.async
//   cuda/fragment.hpp      where each lane's data sits in an mma fragment (host-testable)
//   cuda/element.cuh       __half / __nv_bfloat16 and their Eigen twins
//   cuda/check.cuh         ISM_CUDA_CHECK and ism::cuda::cuda_error
//
// An engine's decode loop, with nothing but launches and the new row's
// bounds on the per-step path (no allocation, synchronisation or query):
//
//   ism::cuda::DeviceMask mask(dialogue.mask(), stream);          // once
//   ism::cuda::LaunchOptions lo;
//   lo.device = ism::cuda::device_info();                          // once
//   cudaMalloc(&ws, ism::cuda::workspace_bytes(max_rows, head_dim)); // once
//   lo.workspace = {ws, ism::cuda::workspace_bytes(max_rows, head_dim)};
//   for each step:
//     dialogue grows;  mask.update(dialogue.mask(), stream);      // uploads the new rows only
//     for each layer:
//       ism::cuda::attention<T>(q, k, v, out, mask, opts, stream, lo);   // or paged / attention_batch
//
// Sliding windows: pass any window policy over a device policy, e.g.
// ism::sliding_window(mask.policy(), w); a policy of your own works if it is
// trivially copyable and its keys(q) is ISM_HOST_DEVICE.
#if !defined(__CUDACC__) && !defined(ISM_CUDA_HOST_EMULATION)
#error "ism/cuda.hpp needs nvcc: compile this translation unit as CUDA (a .cu file, or LANGUAGE CUDA in CMake). Non-CUDA code includes ism/ism.hpp only."
#endif
#include "ism/cuda/attention.cuh"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/mask_device.cuh"
