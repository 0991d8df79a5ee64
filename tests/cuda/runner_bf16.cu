// runner_impl.cuh for Eigen::bfloat16 (see runner_half.cu).
#include "cuda/runner_impl.cuh"

namespace ism_cuda_test {
ISM_INSTANTIATE_RUNNER(Eigen::bfloat16)
}  // namespace ism_cuda_test
