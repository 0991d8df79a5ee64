#pragma once
// ism::cuda: the CUDA forward kernel (only in nvcc-compiled translation units;
// enable with -DISM_ENABLE_CUDA=ON and link ism::cuda). ism/ism.hpp never
// includes this, so the rest of the library needs no CUDA.
//
//   cuda/attention.cuh     the entry point, argument checks, dispatch
//   cuda/mask_device.cuh   DeviceMask: a SegmentMask's bounds in device memory
//   cuda/block_plan.hpp    which key blocks a query block visits, splits, LSE merge
//   cuda/kernel_fwd.cuh    the fused tensor-core kernel
//   cuda/decode.cuh        merging the splits of a long cache
//   cuda/kernel_traits.cuh tile shapes per head dim, launch parameters
//   cuda/mma.cuh           ldmatrix, mma.sync, cp.async
//   cuda/element.cuh       __half / __nv_bfloat16 and their Eigen twins
//   cuda/check.cuh         ISM_CUDA_CHECK and ism::cuda::cuda_error
#if !defined(__CUDACC__)
#error "ism/cuda.hpp needs nvcc: compile this translation unit as CUDA (a .cu file, or LANGUAGE CUDA in CMake). Non-CUDA code includes ism/ism.hpp only."
#endif
#include "ism/cuda/attention.cuh"
#include "ism/cuda/block_plan.hpp"
#include "ism/cuda/mask_device.cuh"
