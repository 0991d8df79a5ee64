// The CUDA kernel's own source run on the CPU emulator (emulator.hpp) against
// the fp64 reference, through the same cases as the GPU tests on a smaller
// budget: this is what CI runs of the kernel where it has no GPU. It checks
// the kernel's logic (tile plan use, masking, softmax, fragments, splits,
// epilogue), not timing, async-copy hazards or the hardware's rounding.
#include "cuda/emulator.hpp"  // first: it defines the emulation hooks

#include <gtest/gtest.h>

#include "common/testing.hpp"
#include "cuda/attention_cases.hpp"

namespace {

using ism::index_t;
using ism_cuda_test::MaskArg;
using ism_cuda_test::MaskKind;
using ism_test::Rng;

template <class T>
void emulated(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v, ism::HeadsView<T> out,
              const MaskArg& mask, const ism::AttentionOptions& options, int kv_splits) {
  switch (mask.kind) {
    case MaskKind::Full: return ism_emu::attention(q, k, v, out, ism::full_mask(), options, kv_splits);
    case MaskKind::Causal: return ism_emu::attention(q, k, v, out, ism::causal_mask(), options, kv_splits);
    case MaskKind::Prefix:
      return ism_emu::attention(q, k, v, out, ism::prefix_mask(mask.prefix), options, kv_splits);
    case MaskKind::Segments: return ism_emu::attention(q, k, v, out, mask.segments->bounds(), options, kv_splits);
  }
}

template <class T>
class EmulatedCudaKernel : public ::testing::Test {};
using StorageTypes = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(EmulatedCudaKernel, StorageTypes);

// A thread per CUDA thread is slow: short layouts, each dim path once.
ism_cuda_test::Budget small_budget() {
  ism_cuda_test::Budget b;
  b.reps = 1;
  b.max_n = 150;
  b.dims = {64, 128, 40, 3};
  b.max_kv_heads = 1;
  b.decode_min_nk = 150;
  b.decode_max_nk = 300;
  b.decode_splits = {0, 3, 16};
  return b;
}

#define ISM_EMULATED_CASE(name, call) \
  TYPED_TEST(EmulatedCudaKernel, name) { \
    ISM_SEEDED_TEST_BODY(seed);          \
    Rng rng(seed);                       \
    call;                                \
  }

ISM_EMULATED_CASE(EveryMaskAndDimMatchesReference,
                  ism_cuda_test::every_mask_dim_and_gqa_ratio<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(IsmDialogueMatchesReference,
                  ism_cuda_test::ism_dialogue<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(DecodeSplitsMatchReference,
                  ism_cuda_test::decode_splits<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(RowsThatSeeNothingGiveZeroAndMinusInfinity,
                  ism_cuda_test::rows_that_see_nothing<TypeParam>(emulated<TypeParam>, rng))
ISM_EMULATED_CASE(EmptyKeyBlocksAreNeverRead,
                  ism_cuda_test::empty_key_blocks_are_never_read<TypeParam>(emulated<TypeParam>, rng, {64}))
ISM_EMULATED_CASE(OddStridesMatchReference, ism_cuda_test::odd_strides<TypeParam>(emulated<TypeParam>, rng, 130))
ISM_EMULATED_CASE(IsmEarlierRoundsDoNotDependOnLaterOnes,
                  ism_cuda_test::ism_kv_reuse<TypeParam>(emulated<TypeParam>, rng, 64))

}  // namespace
