// The tile plan the CUDA kernel runs on, checked on the host against the mask
// rule itself: which key blocks a query block visits, which run unmasked, how
// a cache splits across thread blocks, and how splits merge by LSE.
#include "ism/cuda/block_plan.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/testing.hpp"

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

// The merge the decode path runs, against one softmax over all keys: split a
// row's scores at random points, reduce each part to (normalised output, LSE)
// as a thread block does, merge, compare.
TEST(CudaBlockPlan, LseMergeEqualsOneSoftmax) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int iter = 0; iter < 500; ++iter) {
    const index_t n = rng.uniform(1, 200);
    const int splits = int(rng.uniform(1, 12));
    std::vector<double> score(static_cast<size_t>(n)), value(static_cast<size_t>(n));
    for (index_t j = 0; j < n; ++j) {
      score[size_t(j)] = rng.real(-30, 30);
      value[size_t(j)] = rng.real(-1, 1);
    }
    double m = -1e300, sum = 0, acc = 0;
    for (double s : score) m = std::max(m, s);
    for (index_t j = 0; j < n; ++j) {
      sum += std::exp(score[size_t(j)] - m);
      acc += std::exp(score[size_t(j)] - m) * value[size_t(j)];
    }
    const double want_lse = m + std::log(sum), want_out = acc / sum;

    std::vector<float> lse(static_cast<size_t>(splits)), out(static_cast<size_t>(splits));
    for (int s = 0; s < splits; ++s) {
      const auto r = ism::cuda::split_share(n, splits, s);
      if (r.begin == r.end) {  // a split that sees no key
        lse[size_t(s)] = neg_inf;
        out[size_t(s)] = 0.f;
        continue;
      }
      double ms = -1e300, ss = 0, as = 0;
      for (index_t j = r.begin; j < r.end; ++j) ms = std::max(ms, score[size_t(j)]);
      for (index_t j = r.begin; j < r.end; ++j) {
        ss += std::exp(score[size_t(j)] - ms);
        as += std::exp(score[size_t(j)] - ms) * value[size_t(j)];
      }
      lse[size_t(s)] = float(ms + std::log(ss));
      out[size_t(s)] = float(as / ss);
    }
    const float all = ism::cuda::merged_lse(lse.data(), splits, 1);
    double got = 0, weights = 0;
    for (int s = 0; s < splits; ++s) {
      const float w = ism::cuda::split_weight(lse[size_t(s)], all);
      weights += w;
      got += double(w) * out[size_t(s)];
    }
    ASSERT_NEAR(all, want_lse, 1e-5 * (1 + std::abs(want_lse))) << "n " << n << " splits " << splits;
    ASSERT_NEAR(weights, 1.0, 1e-5);
    ASSERT_NEAR(got, want_out, 1e-5);
  }
}

TEST(CudaBlockPlan, LseMergeOfRowsThatSeeNothing) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float lse[3] = {neg_inf, neg_inf, neg_inf};
  const float all = ism::cuda::merged_lse(lse, 3, 1);
  EXPECT_EQ(all, neg_inf);
  EXPECT_EQ(ism::cuda::split_weight(neg_inf, all), 0.f);
  const float one[3] = {neg_inf, 2.5f, neg_inf};
  EXPECT_FLOAT_EQ(ism::cuda::merged_lse(one, 3, 1), 2.5f);
  EXPECT_FLOAT_EQ(ism::cuda::split_weight(2.5f, 2.5f), 1.f);
  EXPECT_EQ(ism::cuda::split_weight(neg_inf, 2.5f), 0.f);
}

}  // namespace
