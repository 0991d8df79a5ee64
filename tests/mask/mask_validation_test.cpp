// One test per bad input of docs/DESIGN.md section 2: the exception derives from
// std::invalid_argument, its message names the argument and the value, and
// nothing is written to the outputs.
#include "common/testing.hpp"

namespace {

using ism::Attend;
using ism::index_t;

using ism_test::expect_invalid;

TEST(Validation, BoundariesUnsorted) {
  expect_invalid([] { ism::ism_mask({0, 5, 3, 9}); }, {"boundaries[2]", "3"});
  expect_invalid([] { ism::ism_mask({0, 5, 5}); }, {"boundaries[2]", "5"});
}
TEST(Validation, BoundariesOutOfRange) {
  expect_invalid([] { ism::ism_mask({2, 5}); }, {"boundaries[0]", "2"});
  expect_invalid([] { ism::ism_mask({-1, 5}); }, {"boundaries[0]", "-1"});
  expect_invalid([] { ism::ism_mask({0}); }, {"boundaries"});
}
TEST(Validation, SegmentLengthsMustBePositive) {
  expect_invalid([] { ism::segment_mask({{3, Attend::Causal}, {0, Attend::Causal}}); }, {"segments[1].length", "0"});
  expect_invalid([] { ism::segment_mask({{-4, Attend::Causal}}); }, {"segments[0].length", "-4"});
  expect_invalid([] { ism::packed_mask({{{2, Attend::Causal}}, {{-1, Attend::Causal}}}); },
                 {"documents[1][0].length", "-1"});
  expect_invalid([] { ism::packed_mask({{{2, Attend::Causal}}}, -3); }, {"padding", "-3"});
  expect_invalid([] { ism::prefix_mask(-2); }, {"prefix_len", "-2"});
  ism::SegmentMask m;
  expect_invalid([&] { m.extend_last(1); }, {"no segment"});
  m.append({2, Attend::Causal});
  expect_invalid([&] { m.extend_last(0); }, {"n", "0"});
  expect_invalid([&] { m.append({-1, Attend::Causal}); }, {"segment.length", "-1"});
  expect_invalid([&] { (void)m.is_safe_split(3); }, {"p = 3"});
}

// A small valid attention problem whose pieces each test breaks one at a time.
struct Problem {
  index_t n = 6, heads = 4, kv_heads = 2, dim = 8;
  ism_test::Tensor<float> q{n, heads, dim}, k{n, kv_heads, dim}, v{n, kv_heads, dim}, out{n, heads, dim};
  std::vector<float> lse = std::vector<float>(size_t(heads * n), 7.f);
  ism::SegmentMask mask = ism::ism_mask({0, 2, 4, 6});
  Problem() {
    ism_test::Rng rng(1);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    for (auto& x : out.buf) x = 42.f;
  }
  template <class F>
  void expect_rejected(F&& call, std::initializer_list<const char*> needles) {
    expect_invalid(call, needles);
    for (float x : out.buf) ASSERT_EQ(x, 42.f) << "out was written by a call that threw";
    for (float x : lse) ASSERT_EQ(x, 7.f) << "lse was written by a call that threw";
  }
  ism::AttentionOptions opts() { ism::AttentionOptions o; o.lse = lse.data(); return o; }
};

// Each bad call is tried on every entry point that takes views: the fp64
// reference and the fused kernel.
#define ISM_EXPECT_REJECTED(P, Q, K, V, OUT, MASK, OPTS, ...)                                             \
  do {                                                                                                   \
    P.expect_rejected([&] { ism::reference_attention<float>(Q, K, V, OUT, MASK, OPTS); }, __VA_ARGS__);  \
    P.expect_rejected([&] { ism::attention<float>(Q, K, V, OUT, MASK, OPTS); }, __VA_ARGS__);            \
  } while (0)

TEST(Validation, HeadCountsThatDoNotDivide) {
  Problem p;
  auto k = p.k.cview(), v = p.v.cview();
  k.heads = v.heads = 3;
  ISM_EXPECT_REJECTED(p, p.q.cview(), k, v, p.out.view, p.mask, p.opts(), {"q.heads = 4", "k.heads = 3"});
  auto v2 = p.v.cview();
  v2.heads = 1;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), v2, p.out.view, p.mask, p.opts(), {"v.heads = 1"});
  auto o = p.out.view;
  o.heads = 2;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), o, p.mask, p.opts(), {"out.heads = 2"});
  auto q0 = p.q.cview();
  q0.heads = 0;
  ISM_EXPECT_REJECTED(p, q0, p.k.cview(), p.v.cview(), p.out.view, p.mask, p.opts(), {"q.heads = 0"});
}

TEST(Validation, DimsThatDiffer) {
  Problem p;
  auto k = p.k.cview();
  k.dim = 7;
  ISM_EXPECT_REJECTED(p, p.q.cview(), k, p.v.cview(), p.out.view, p.mask, p.opts(), {"k.dim = 7", "q.dim = 8"});
  auto v = p.v.cview();
  v.dim = 4;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), v, p.out.view, p.mask, p.opts(), {"v.dim = 4"});
  auto o = p.out.view;
  o.dim = 9;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), o, p.mask, p.opts(), {"out.dim = 9"});
}

TEST(Validation, TokenCountsThatDiffer) {
  Problem p;
  auto v = p.v.cview();
  v.tokens = 5;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), v, p.out.view, p.mask, p.opts(), {"v.tokens = 5"});
  auto o = p.out.view;
  o.tokens = 5;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), o, p.mask, p.opts(), {"out.tokens = 5"});
}

TEST(Validation, QueryWindowOutsideTheLayout) {
  Problem p;
  auto o = p.opts();
  o.q_offset = 1;  // rows [1, 7) of a 6-token layout
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, p.mask, o, {"q_offset = 1", "6"});
  o.q_offset = -5;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, p.mask, o, {"q_offset = -5"});
  // Default offset: more queries than cached keys.
  auto k = p.k.cview(), v = p.v.cview();
  k.tokens = v.tokens = 4;
  ISM_EXPECT_REJECTED(p, p.q.cview(), k, v, p.out.view, p.mask, p.opts(), {"q.tokens = 6", "k.tokens = 4"});
  // Keys beyond the layout.
  ism::SegmentMask small = ism::ism_mask({0, 2, 4});
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, small, p.opts(), {"4"});
  expect_invalid([&] { ism::dense_mask<bool>(p.mask, 3, 2, 4); }, {"q_offset = 4", "n_q = 3"});
}

TEST(Validation, NullDataWithNonZeroSizes) {
  Problem p;
  auto q = p.q.cview();
  q.data = nullptr;
  ISM_EXPECT_REJECTED(p, q, p.k.cview(), p.v.cview(), p.out.view, p.mask, p.opts(), {"q.data is null", "q.tokens = 6"});
  auto o = p.out.view;
  o.data = nullptr;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), o, p.mask, p.opts(), {"out.data is null"});
}

TEST(Validation, NegativeSizesAndStrides) {
  Problem p;
  auto q = p.q.cview();
  q.token_stride = -1;
  ISM_EXPECT_REJECTED(p, q, p.k.cview(), p.v.cview(), p.out.view, p.mask, p.opts(), {"q.token_stride = -1"});
  auto k = p.k.cview();
  k.tokens = -2;
  ISM_EXPECT_REJECTED(p, p.q.cview(), k, p.v.cview(), p.out.view, p.mask, p.opts(), {"k.tokens = -2"});
}

TEST(Validation, SizesWhoseProductOverflows) {
  Problem p;
  auto k = p.k.cview();
  k.token_stride = index_t(1) << 62;
  ISM_EXPECT_REJECTED(p, p.q.cview(), k, p.v.cview(), p.out.view, p.mask, p.opts(), {"k spans more than 2^63"});
}

TEST(Validation, OutputOverlappingAnInput) {
  Problem p;
  auto alias = p.out.view;
  ism::HeadsView<const float> q_alias{alias.data, alias.tokens, alias.heads, alias.dim, alias.token_stride,
                                      alias.head_stride};
  expect_invalid([&] { ism::reference_attention<float>(q_alias, p.k.cview(), p.v.cview(), alias, p.mask); },
                 {"out overlaps q"});
  expect_invalid([&] { ism::attention<float>(q_alias, p.k.cview(), p.v.cview(), alias, p.mask); },
                 {"out overlaps q"});
}

TEST(Validation, BadOptions) {
  Problem p;
  auto o = p.opts();
  o.threads = -1;
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, p.mask, o, {"threads = -1"});
  o = p.opts();
  o.scale = std::numeric_limits<float>::infinity();
  ISM_EXPECT_REJECTED(p, p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, p.mask, o, {"scale = inf"});
}

TEST(Validation, ValidProblemIsAccepted) {
  Problem p;
  EXPECT_NO_THROW(ism::reference_attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, p.mask, p.opts()));
  EXPECT_NE(p.out.buf[0], 42.f);
  Problem p2;
  EXPECT_NO_THROW(ism::attention<float>(p2.q.cview(), p2.k.cview(), p2.v.cview(), p2.out.view, p2.mask, p2.opts()));
  EXPECT_NE(p2.out.buf[0], 42.f);
}

}  // namespace
