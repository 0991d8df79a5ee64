// ism::cuda::attention and attention_batch against the fp64 reference on
// random shapes, layouts and data: every mask kind and sliding windows, fp16
// and bf16, head dims 64, 80, 96, 128, 256 and odd ones, GQA ratios,
// q_offset, LSE, strided views, both kernels (prefill, GQA-packed decode),
// key splits, NaN in visible keys, softcap, ALiBi and sinks, paged caches
// with int32 and int64 tables, and batches. Without a GPU every test that
// needs one skips and says why (the same cases run on the CPU emulator in
// cuda_emulated_kernel_test).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/testing.hpp"
#include "cuda/attention_cases.hpp"
#include "cuda/runner.hpp"

namespace {

using ism::index_t;
using ism_cuda_test::MaskArg;
using ism_cuda_test::MaskKind;
using ism_test::Rng;
using ism_test::Tensor;

#define ISM_REQUIRE_GPU()                                                         \
  do {                                                                            \
    const std::string why = ism_cuda_test::gpu_unavailable_reason();              \
    if (!why.empty()) GTEST_SKIP() << "no GPU test run: " << why;                 \
  } while (0)

template <class T>
class CudaAttention : public ::testing::Test {};
using StorageTypes = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(CudaAttention, StorageTypes);

template <class T>
void gpu(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v, ism::HeadsView<T> out,
         const MaskArg& mask, const ism::AttentionOptions& options, const ism_cuda_test::LaunchArg& la) {
  ism_cuda_test::run_on_gpu<T>(q, k, v, out, mask, options, la);
}
template <class T>
void gpu_batch(const std::vector<ism_cuda_test::BatchView<T>>& items, const ism::AttentionOptions& options,
               const ism_cuda_test::LaunchArg& la) {
  ism_cuda_test::run_batch_on_gpu<T>(items, options, la);
}

const ism_cuda_test::Budget kBudget{};

#define ISM_GPU_CASE(name, call)  \
  TYPED_TEST(CudaAttention, name) { \
    ISM_REQUIRE_GPU();              \
    ISM_SEEDED_TEST_BODY(seed);     \
    Rng rng(seed);                  \
    call;                           \
  }

ISM_GPU_CASE(EveryMaskDimAndGqaRatioMatchesReference,
             ism_cuda_test::every_mask_dim_and_gqa_ratio<TypeParam>(gpu<TypeParam>, rng, kBudget))
ISM_GPU_CASE(IsmDialogueMatchesReference, ism_cuda_test::ism_dialogue<TypeParam>(gpu<TypeParam>, rng, kBudget))
ISM_GPU_CASE(DecodeSplitsMatchReference, ism_cuda_test::decode_splits<TypeParam>(gpu<TypeParam>, rng, kBudget))
ISM_GPU_CASE(RowsThatSeeNothingGiveZeroAndMinusInfinity,
             ism_cuda_test::rows_that_see_nothing<TypeParam>(gpu<TypeParam>, rng))
ISM_GPU_CASE(EmptyKeyBlocksAreNeverRead,
             ism_cuda_test::empty_key_blocks_are_never_read<TypeParam>(gpu<TypeParam>, rng, {64, 128, 40}))
ISM_GPU_CASE(OddStridesMatchReference, ism_cuda_test::odd_strides<TypeParam>(gpu<TypeParam>, rng, 300))
ISM_GPU_CASE(NanInAVisibleKeyGivesNanWithOneOrManySplits,
             ism_cuda_test::nan_in_visible_key<TypeParam>(gpu<TypeParam>, rng, 2048))
ISM_GPU_CASE(SoftcapAlibiAndSinksMatchReference, ism_cuda_test::modifiers<TypeParam>(gpu<TypeParam>, rng, 400))
ISM_GPU_CASE(SlidingWindowPoliciesMatchReference,
             ism_cuda_test::sliding_windows<TypeParam>(gpu<TypeParam>, rng, 300))
ISM_GPU_CASE(PagedCacheMatchesReference, ism_cuda_test::paged_cache<TypeParam>(gpu<TypeParam>, rng, 600))
ISM_GPU_CASE(BatchOfRequestsMatchesReference, {
  ism_cuda_test::batch_of_requests<TypeParam>(gpu_batch<TypeParam>, rng, 300, 40, ism_cuda_test::LaunchArg{});
  ism_cuda_test::LaunchArg paged;
  paged.page_size = 16;
  ism_cuda_test::batch_of_requests<TypeParam>(gpu_batch<TypeParam>, rng, 300, 21, paged);
})
ISM_GPU_CASE(IsmEarlierRoundsDoNotDependOnLaterOnes, for (index_t dim : {64, 128, 40}) {
  ism_cuda_test::ism_kv_reuse<TypeParam>(gpu<TypeParam>, rng, dim);
})

// --- argument checks: no GPU needed, nothing reaches the device -----------

TEST(CudaAttentionArguments, BadShapesThrowBeforeAnyDeviceWork) {
  Tensor<Eigen::half> q(4, 2, 64), k(4, 1, 64), v(4, 1, 32), out(4, 2, 64);
  const MaskArg causal{MaskKind::Causal};
  EXPECT_THROW(ism_cuda_test::call_directly<Eigen::half>(q.cview(), k.cview(), v.cview(), out.view, causal, {}),
               ism::invalid_argument);
  Tensor<Eigen::half> q3(4, 3, 64), k2(4, 2, 64), v2(4, 2, 64), out3(4, 3, 64);
  try {
    ism_cuda_test::call_directly<Eigen::half>(q3.cview(), k2.cview(), v2.cview(), out3.view, causal, {});
    ADD_FAILURE() << "q.heads = 3 with k.heads = 2 did not throw";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q.heads = 3"), std::string::npos) << e.what();
  }
  Tensor<Eigen::bfloat16> qb(4, 1, 300), kb(4, 1, 300), vb(4, 1, 300), ob(4, 1, 300);
  const ism::SegmentMask long_mask = ism::ism_mask({0, 2, 4});
  try {
    ism_cuda_test::call_directly<Eigen::bfloat16>(qb.cview(), kb.cview(), vb.cview(), ob.view,
                                                  MaskArg{MaskKind::Segments, 0, &long_mask}, {});
    ADD_FAILURE() << "dim 300 did not throw";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q.dim = 300"), std::string::npos) << e.what();
  }
  ism::AttentionOptions capped;
  capped.softcap = -1.f;
  Tensor<Eigen::half> q64(4, 1, 64), k64(4, 1, 64), v64(4, 1, 64), o64(4, 1, 64);
  EXPECT_THROW(ism_cuda_test::call_directly<Eigen::half>(q64.cview(), k64.cview(), v64.cview(), o64.view,
                                                         MaskArg{MaskKind::Segments, 0, &long_mask}, capped),
               ism::invalid_argument);
  const ism::SegmentMask short_mask = ism::ism_mask({0, 2, 3});
  EXPECT_THROW(ism_cuda_test::call_directly<Eigen::half>(q.cview(), k2.cview(), v2.cview(), out.view,
                                                         MaskArg{MaskKind::Segments, 0, &short_mask}, {}),
               ism::invalid_argument);
}

TEST(CudaAttentionArguments, HostPointersAreRefused) {
  ISM_REQUIRE_GPU();
  Tensor<Eigen::half> q(4, 1, 64), k(4, 1, 64), v(4, 1, 64), out(4, 1, 64);
  try {
    ism_cuda_test::call_directly<Eigen::half>(q.cview(), k.cview(), v.cview(), out.view, MaskArg{MaskKind::Causal},
                                              {});
    ADD_FAILURE() << "host buffers were accepted";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not device memory"), std::string::npos) << e.what();
  }
}

TEST(CudaErrors, FailedCallsThrowNamingTheCall) {
  try {
    ism_cuda_test::check_status(1 /* cudaErrorInvalidValue */, "cudaMemcpy(dst, src, n, kind)");
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaMemcpy(dst, src, n, kind)"), std::string::npos) << what;
    EXPECT_NE(what.find("runner.cu:"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(ism_cuda_test::check_status(0, "cudaFree(p)"));
}

}  // namespace
