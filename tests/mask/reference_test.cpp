// The fp64 reference against values worked out by hand and against the
// properties any softmax attention must have.
#include "common/testing.hpp"

namespace {

using ism::Attend;
using ism::index_t;
using ism_test::Rng;
using ism_test::Tensor;

TEST(Reference, HandComputedTwoKeys) {
  // One head, dim 1: q = 1, keys 0 and ln 3 (scale 1), values 10 and 20.
  // Weights 1 : 3 -> out = (10 + 60) / 4 = 17.5, lse = ln(1 + 3) = ln 4.
  Tensor<double> q(2, 1, 1), k(2, 1, 1), v(2, 1, 1), out(2, 1, 1);
  q.view(0, 0, 0) = 1;
  q.view(1, 0, 0) = 1;
  k.view(0, 0, 0) = 0;
  k.view(1, 0, 0) = std::log(3.0);
  v.view(0, 0, 0) = 10;
  v.view(1, 0, 0) = 20;
  ism::AttentionOptions o;
  o.scale = 1;
  double lse[2];
  ism::reference_attention_into<double, double, double>(q.cview(), k.cview(), v.cview(), out.view,
                                                        ism::causal_mask(), o, lse);
  EXPECT_DOUBLE_EQ(out.view(0, 0, 0), 10.0);  // row 0 sees key 0 only
  EXPECT_NEAR(out.view(1, 0, 0), 17.5, 1e-6);
  EXPECT_NEAR(lse[0], 0.0, 1e-12);
  EXPECT_NEAR(lse[1], std::log(4.0), 1e-6);
}

TEST(Reference, RowsAreConvexCombinationsAndOnesStayOnes) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 20; ++iter) {
    const auto layout = ism_test::random_layout(rng, 2, 5, 10);
    const auto m = layout.mask();
    const index_t n = m.length(), h = 2, d = 5;
    Tensor<float> q(n, h, d), k(n, h, d), v(n, h, d);
    Tensor<double> out(n, h, d);
    q.fill_random(rng, -3, 3);
    k.fill_random(rng, -3, 3);
    for (auto& x : v.buf) x = 1.f;  // softmax weights sum to one
    std::vector<double> lse(size_t(h * n));
    ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), out.view, m, {},
                                                         lse.data());
    for (index_t t = 0; t < n; ++t)
      for (index_t hh = 0; hh < h; ++hh) {
        const bool sees = !m.keys(t).empty();
        for (index_t dd = 0; dd < d; ++dd) ASSERT_NEAR(out.view(t, hh, dd), sees ? 1.0 : 0.0, 1e-12);
        const double l = lse[size_t(hh * n + t)];
        if (sees) ASSERT_TRUE(std::isfinite(l));
        else ASSERT_TRUE(std::isinf(l) && l < 0) << "row " << t;
      }
  }
}

TEST(Reference, GqaSharesKvHeads) {
  // 4 query heads over 2 KV heads: heads 0,1 use KV head 0; heads 2,3 use KV head 1.
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t n = 9, d = 4;
  Tensor<float> q(n, 4, d), k(n, 2, d), v(n, 2, d), out(n, 4, d);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  ism::reference_attention<float>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask());
  for (index_t h = 0; h < 4; ++h) {
    // The same head alone, with its KV head as a one-head problem.
    auto qh = q.cview(), kh = k.cview(), vh = v.cview();
    qh.data += h * qh.head_stride;
    qh.heads = 1;
    kh.data += (h / 2) * kh.head_stride;
    kh.heads = 1;
    vh.data += (h / 2) * vh.head_stride;
    vh.heads = 1;
    Tensor<float> o1(n, 1, d);
    ism::reference_attention<float>(qh, kh, vh, o1.view, ism::causal_mask());
    for (index_t t = 0; t < n; ++t)
      for (index_t dd = 0; dd < d; ++dd) ASSERT_EQ(o1.view(t, 0, dd), out.view(t, h, dd));
  }
}

TEST(Reference, QueryOffsetEvaluatesTheMaskOnAbsolutePositions) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const auto m = ism::ism_mask({0, 4, 7, 12, 15});
  const index_t n = 15, h = 1, d = 3;
  Tensor<float> q(n, h, d), k(n, h, d), v(n, h, d), full(n, h, d);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  ism::reference_attention<float>(q.cview(), k.cview(), v.cview(), full.view, m);
  // The tail rows [7, 15) as new queries against the whole cache (default offset).
  auto tail = q.cview();
  tail.data += 7 * tail.token_stride;
  tail.tokens = 8;
  Tensor<float> out(8, h, d);
  ism::reference_attention<float>(tail, k.cview(), v.cview(), out.view, m);
  for (index_t t = 0; t < 8; ++t)
    for (index_t dd = 0; dd < d; ++dd) ASSERT_EQ(out.view(t, 0, dd), full.view(7 + t, 0, dd));
}

TEST(Reference, LargeScoresStayFinite) {
  Tensor<float> q(3, 1, 2), k(3, 1, 2), v(3, 1, 2), out(3, 1, 2);
  for (auto& x : q.buf) x = 100.f;
  k.view(0, 0, 0) = 100.f;
  k.view(1, 0, 0) = -100.f;
  k.view(2, 0, 0) = 50.f;
  for (auto& x : v.buf) x = 2.f;
  ism::AttentionOptions o;
  o.scale = 1;  // scores up to +-1e4
  ism::reference_attention<float>(q.cview(), k.cview(), v.cview(), out.view, ism::full_mask(), o);
  for (float x : out.buf) EXPECT_FLOAT_EQ(x, 2.f);
}

}  // namespace
