// runner_impl.cuh for Eigen::half (one element type per translation unit, so
// that the kernels of the two types compile in parallel).
#include "cuda/runner_impl.cuh"

namespace ism_cuda_test {
ISM_INSTANTIATE_RUNNER(Eigen::half)
}  // namespace ism_cuda_test
