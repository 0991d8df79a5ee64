// The tile plan the CUDA kernel runs on, checked on the host against the mask
// rule itself: which key blocks a query block visits, which run unmasked, and
// how a cache splits across thread blocks (split_merge_test.cpp: the merge).
#include "ism/cuda/block_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/testing.hpp"
#include "cuda/mask_arg.hpp"

namespace {

using ism::index_t;
using ism::cuda::KeyBlockPlan;
using ism::cuda::plan_key_blocks;

// For every query block and key block: a block not visited holds no visible
// (row, key) pair; a visited block holds at least one (Empty tiles are exact,
// tiles.hpp); a Full block is block_n keys every row sees; a complete block
// that every row sees whole is Full.
template <class Mask, class Allowed>
void check_plan(const Mask& mask, const Allowed& allowed, index_t n_q, index_t n_k, index_t q_offset,
                index_t block_m, index_t block_n) {
  for (index_t t0 = 0; t0 < n_q; t0 += block_m) {
    const index_t q0 = q_offset + t0, q1 = q_offset + std::min(n_q, t0 + block_m);
    const KeyBlockPlan p = plan_key_blocks(mask, q0, q1, n_k, block_n);
    SCOPED_TRACE(::testing::Message() << "rows [" << q0 << ", " << q1 << "), n_k " << n_k << ", block_n "
                                      << block_n << ": visit [" << p.visit_begin << ", " << p.visit_end
                                      << "), full [" << p.full_begin << ", " << p.full_end << ")");
    ASSERT_LE(p.visit_begin, p.visit_end);
    ASSERT_LE(p.full_begin, p.full_end);
    if (p.full_begin < p.full_end) {
      ASSERT_LE(p.visit_begin, p.full_begin);
      ASSERT_LE(p.full_end, p.visit_end);
    }
    for (index_t b = 0; b * block_n < n_k; ++b) {
      const index_t k0 = b * block_n, k1 = std::min(n_k, k0 + block_n);
      index_t seen = 0;
      for (index_t q = q0; q < q1; ++q)
        for (index_t k = k0; k < k1; ++k) seen += allowed(q, k) ? 1 : 0;
      const bool visited = p.visit_begin <= b && b < p.visit_end;
      const bool whole = seen == (q1 - q0) * block_n;  // implies k1 - k0 == block_n
      if (!visited) {
        EXPECT_EQ(seen, 0) << "key block " << b << " skipped but holds visible pairs";
      } else if (seen == 0) {
        // Visits are exact unless some row of the block sees nothing at all.
        bool blind_row = false;
        for (index_t q = q0; q < q1; ++q) blind_row = blind_row || ism::visible_keys(mask, q, n_k).empty();
        EXPECT_TRUE(blind_row) << "key block " << b << " visited but holds no visible pair";
      }
      EXPECT_EQ(p.is_full(b), whole) << "key block " << b << " (" << seen << " visible of "
                                     << (q1 - q0) * (k1 - k0) << ")";
    }
  }
}

TEST(CudaBlockPlan, SegmentLayoutsMatchTheRule) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 3, 6, 50);
    const ism_test::BruteForceRule rule(layout);
    const ism::SegmentMask mask = layout.mask();
    const index_t n = mask.length();
    const index_t n_k = rng.uniform(0, n);
    const index_t q_offset = rng.uniform(0, n - 1);
    const index_t n_q = rng.uniform(1, n - q_offset);
    const index_t block_m = index_t(1) << rng.uniform(0, 6), block_n = index_t(1) << rng.uniform(0, 6);
    SCOPED_TRACE(layout.describe());
    auto allowed = [&](index_t q, index_t k) { return k < n_k && rule.allowed(q, k); };
    check_plan(mask.bounds(), allowed, n_q, n_k, q_offset, block_m, block_n);
    if (HasFatalFailure() || HasNonfatalFailure()) return;
  }
}

TEST(CudaBlockPlan, SimpleMasksMatchTheRule) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  for (int iter = 0; iter < 200; ++iter) {
    const index_t n_k = rng.uniform(0, 300), n_q = rng.uniform(1, 200), q_offset = rng.uniform(0, 300);
    const index_t block_m = rng.uniform(1, 70), block_n = index_t(16) << rng.uniform(0, 2);
    const ism::PrefixMask prefix{rng.uniform(0, 400)};
    check_plan(ism::causal_mask(), [&](index_t q, index_t k) { return k < n_k && k <= q; }, n_q, n_k, q_offset,
               block_m, block_n);
    check_plan(prefix, [&](index_t q, index_t k) { return k < n_k && prefix.allowed(q, k); }, n_q, n_k,
               q_offset, block_m, block_n);
    check_plan(ism::full_mask(), [&](index_t, index_t k) { return k < n_k; }, n_q, n_k, q_offset, block_m,
               block_n);
    if (HasFatalFailure() || HasNonfatalFailure()) return;
  }
}

// Sliding windows (the tests' LocalWindow policy) over causal and ISM masks:
// the plan visits exactly the key blocks inside the window (issue 14: work
// outside a window is never done), and blocks wholly inside it run unmasked.
TEST(CudaBlockPlan, WindowedMasksVisitOnlyTheWindow) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  for (int iter = 0; iter < 200; ++iter) {
    const auto layout = ism_test::random_layout(rng, 2, 6, 60, false);
    const ism::SegmentMask mask = layout.mask();
    const index_t n = mask.length(), w = rng.uniform(1, n + 5);
    const index_t n_q = rng.uniform(1, n), q_offset = rng.uniform(0, n - n_q), n_k = rng.uniform(0, n);
    const index_t block_m = index_t(16) << rng.uniform(0, 3), block_n = index_t(16) << rng.uniform(0, 2);
    SCOPED_TRACE(::testing::Message() << layout.describe() << " window " << w);
    const ism_cuda_test::LocalWindow<ism::RowBoundsMask> windowed{mask.bounds(), w};
    check_plan(windowed, [&](index_t q, index_t k) { return k < n_k && windowed.allowed(q, k); }, n_q, n_k, q_offset,
               block_m, block_n);
    const ism_cuda_test::LocalWindow<ism::CausalMask> causal{ism::causal_mask(), w};
    check_plan(causal, [&](index_t q, index_t k) { return k < n_k && causal.allowed(q, k); }, n_q, n_k, q_offset,
               block_m, block_n);
    if (HasFatalFailure() || HasNonfatalFailure()) return;
  }
}

// The ragged last key block is never Full: its zero-filled columns past n_k
// would otherwise enter the softmax as score 0.
TEST(CudaBlockPlan, RaggedLastBlockIsMasked) {
  const auto p = plan_key_blocks(ism::full_mask(), 0, 64, 100, 64);
  EXPECT_EQ(p.visit_begin, 0);
  EXPECT_EQ(p.visit_end, 2);
  EXPECT_TRUE(p.is_full(0));
  EXPECT_FALSE(p.is_full(1));
}

TEST(CudaBlockPlan, NothingVisibleVisitsNothing) {
  // Rows of the second document see only its keys, none of which is cached yet.
  const ism::SegmentMask mask =
      ism::packed_mask({{{10, ism::Attend::Causal}}, {{30, ism::Attend::Bidirectional}}});
  const auto p = plan_key_blocks(mask.bounds(), 12, 40, 10, 4);
  EXPECT_EQ(p.visits(), 0);
  const auto none = plan_key_blocks(ism::causal_mask(), 0, 16, 0, 16);
  EXPECT_EQ(none.visits(), 0);
}

TEST(CudaBlockPlan, SplitSharesPartitionTheBlocks) {
  for (index_t n = 0; n <= 70; ++n)
    for (int splits = 1; splits <= 20; ++splits) {
      index_t next = 0, smallest = n, largest = 0;
      for (int s = 0; s < splits; ++s) {
        const auto r = ism::cuda::split_share(n, splits, s);
        ASSERT_EQ(r.begin, next) << "n " << n << " splits " << splits << " s " << s;
        ASSERT_LE(r.begin, r.end);
        smallest = std::min(smallest, r.end - r.begin);
        largest = std::max(largest, r.end - r.begin);
        next = r.end;
      }
      EXPECT_EQ(next, n) << "n " << n << " splits " << splits;
      EXPECT_LE(largest - smallest, 1) << "n " << n << " splits " << splits;
    }
}

TEST(CudaBlockPlan, SplitChoiceFillsTheGpuWithinBounds) {
  using ism::cuda::choose_kv_splits;
  EXPECT_EQ(choose_kv_splits(132, 1000, 132), 1);   // a full wave: no split
  EXPECT_EQ(choose_kv_splits(8, 3, 132), 1);        // too few key blocks to share
  EXPECT_EQ(choose_kv_splits(8, 1000, 132), 33);    // 2 waves of 132 SMs from 8 blocks
  EXPECT_EQ(choose_kv_splits(1, 100000, 132), 64);  // capped
  for (index_t blocks = 1; blocks < 300; blocks += 7)
    for (index_t keys = 1; keys < 5000; keys = keys * 3 + 1) {
      const int s = choose_kv_splits(blocks, keys, 132);
      EXPECT_GE(s, 1);
      EXPECT_LE(s, 64);
      if (s > 1) {
        EXPECT_GE(keys / s, 4) << "each split keeps at least 4 key blocks";
        EXPECT_LT(blocks, 132);
      }
    }
}

}  // namespace
