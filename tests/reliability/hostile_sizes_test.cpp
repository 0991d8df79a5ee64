// Hostile sizes at the kernel's entry point, ism::attention: element offsets
// beyond 2^31 (with real data), sizes whose products overflow 64 bits, null
// data, outputs that overlap inputs or themselves. Every rejection is an
// ism::invalid_argument naming the argument, and leaves the outputs untouched.
#include <limits>
#include <vector>

#include "ism/kv/paged_cache.hpp"
#include "ism/mask/export.hpp"
#include "reliability/reliability.hpp"

namespace {

using ism::index_t;
using ism_rel::expect_invalid;
using ism_test::Rng;
using ism_test::Tensor;

constexpr index_t kBig = (index_t(1) << 30) + 64;  // (kBig * 2) elements > 2^31

// Kernel and reference agree on views whose largest element offsets exceed
// 2^31: K/V rows kBig elements apart (3 tokens), and query / output heads kBig
// elements apart (3 heads, GQA onto one KV head). Only the rows used are ever
// touched, so the test commits a few pages of the reserved address space.
template <class T>
void big_offsets(std::uint64_t seed) {
  const index_t dim = 16, n_k = 3, n_q = 2, heads = 3;
  const std::size_t span = std::size_t(2 * kBig + 2 * dim) * sizeof(T);
  ism_rel::VirtualBuffer kv_mem(span), q_mem(span), out_mem(span);
  if (!kv_mem.ok() || !q_mem.ok() || !out_mem.ok()) GTEST_SKIP() << "cannot reserve 3 x " << span << " bytes of address space";
  Rng rng(seed);
  // K and V interleaved in one buffer: token t's key at t*kBig, value right after.
  const ism::HeadsView<const T> k{kv_mem.as<T>(), n_k, 1, dim, kBig, 0};
  const ism::HeadsView<const T> v{kv_mem.as<T>() + dim, n_k, 1, dim, kBig, 0};
  const ism::HeadsView<T> q_mut{q_mem.as<T>(), n_q, heads, dim, dim, kBig};
  const ism::HeadsView<T> out{out_mem.as<T>(), n_q, heads, dim, dim, kBig};
  for (index_t t = 0; t < n_k; ++t)
    for (index_t d = 0; d < 2 * dim; ++d) kv_mem.as<T>()[t * kBig + d] = T(float(rng.real(-1, 1)));
  for (index_t t = 0; t < n_q; ++t)
    for (index_t h = 0; h < heads; ++h)
      for (index_t d = 0; d < dim; ++d) q_mut(t, h, d) = T(float(rng.real(-1, 1)));
  const ism::HeadsView<const T> q = ism::as_const(q_mut);

  const ism::SegmentMask mask = ism::ism_mask({0, 1, 3});  // query rows 1, 2
  std::vector<float> lse(size_t(heads * n_q));
  ism::AttentionOptions opt;
  opt.lse = lse.data();
  ism::attention<T>(q, k, v, out, mask, opt);

  Tensor<double> ref(n_q, heads, dim);
  std::vector<double> ref_lse(size_t(heads * n_q));
  ism::reference_attention_into<T, double, double>(q, k, v, ref.view, mask, {}, ref_lse.data());
  for (index_t t = 0; t < n_q; ++t)
    for (index_t h = 0; h < heads; ++h) {
      for (index_t d = 0; d < dim; ++d)
        ASSERT_NEAR(double(float(out(t, h, d))), ref.view(t, h, d), ism_rel::tolerance<T>(ref.view(t, h, d), 1))
            << "t " << t << " h " << h << " d " << d;
      ASSERT_NEAR(lse[size_t(h * n_q + t)], ref_lse[size_t(h * n_q + t)], 1e-4);
    }
}

TEST(HostileSizes, ElementOffsetsBeyond2To31Fp32) {
  ISM_SEEDED_TEST_BODY(seed);
  big_offsets<float>(seed);
}
TEST(HostileSizes, ElementOffsetsBeyond2To31Bf16) {
  ISM_SEEDED_TEST_BODY(seed);
  big_offsets<Eigen::bfloat16>(seed);
}

// A small valid problem; each test breaks one piece. out and lse hold sentinels
// that a rejected call must leave alone.
struct Problem {
  index_t n = 5, heads = 2, dim = 4;
  Tensor<float> q{n, heads, dim}, k{n, heads, dim}, v{n, heads, dim}, out{n, heads, dim};
  std::vector<float> lse = std::vector<float>(size_t(heads * n), 7.f);
  ism::SegmentMask mask = ism::ism_mask({0, 2, 5});
  Problem() {
    Rng rng(3);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    for (auto& x : out.buf) x = 42.f;
  }
  ism::AttentionOptions opts() {
    ism::AttentionOptions o;
    o.lse = lse.data();
    return o;
  }
  void expect_untouched() {
    for (float x : out.buf) ASSERT_EQ(x, 42.f) << "out was written by a call that threw";
    for (float x : lse) ASSERT_EQ(x, 7.f) << "lse was written by a call that threw";
  }
  template <class Mask = ism::SegmentMask>
  void expect_rejected(ism::HeadsView<const float> q_, ism::HeadsView<const float> k_,
                       ism::HeadsView<const float> v_, ism::HeadsView<float> out_, const ism::AttentionOptions& o,
                       std::initializer_list<const char*> needles, const Mask* m = nullptr) {
    if (m) expect_invalid([&] { ism::attention<float>(q_, k_, v_, out_, *m, o); }, needles);
    else expect_invalid([&] { ism::attention<float>(q_, k_, v_, out_, mask, o); }, needles);
    expect_untouched();
  }
};

TEST(HostileSizes, ProductsOverflowing64BitsAreRejected) {
  Problem p;
  auto q = p.q.cview();
  q.heads = 8;
  q.head_stride = index_t(1) << 61;  // 7 * 2^61 elements
  p.expect_rejected(q, p.k.cview(), p.v.cview(), p.out.view, p.opts(), {"q spans more than 2^63", "head_stride"});
  auto k = p.k.cview();
  k.tokens = index_t(1) << 40;
  k.token_stride = index_t(1) << 30;
  p.expect_rejected(p.q.cview(), k, p.v.cview(), p.out.view, p.opts(), {"k spans more than 2^63"});
  auto o = p.out.view;
  o.dim = std::numeric_limits<index_t>::max() / 2;  // times sizeof(float) overflows
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), o, p.opts(), {"out spans more than 2^63"});
  // A query window whose end overflows (masks without a layout accept any row).
  auto opt = p.opts();
  opt.q_offset = std::numeric_limits<index_t>::max() - 2;
  const auto causal = ism::causal_mask();
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, opt, {"q_offset + n_q overflows"}, &causal);
}

// Rows far beyond the cache (legal for masks without a layout): every row sees
// all cached keys, and no position arithmetic may overflow.
TEST(HostileSizes, QueryRowsFarBeyondTheCache) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  Tensor<float> q(3, 2, 8), k(5, 1, 8), v(5, 1, 8), out(3, 2, 8);
  Tensor<double> ref(3, 2, 8);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  ism::AttentionOptions opt;
  opt.q_offset = std::numeric_limits<index_t>::max() - 3;
  const auto causal = ism::causal_mask();
  ism::attention<float>(q.cview(), k.cview(), v.cview(), out.view, causal, opt);
  ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), ref.view, ism::full_mask(),
                                                       {}, nullptr);
  for (index_t t = 0; t < 3; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 8; ++d) ASSERT_NEAR(out.view(t, h, d), ref.view(t, h, d), 1e-5);
}

TEST(HostileSizes, NullData) {
  Problem p;
  for (const char* which : {"q", "k", "v"}) {
    auto q = p.q.cview(), k = p.k.cview(), v = p.v.cview();
    (which[0] == 'q' ? q : which[0] == 'k' ? k : v).data = nullptr;
    const std::string needle = std::string(which) + ".data is null";
    p.expect_rejected(q, k, v, p.out.view, p.opts(), {needle.c_str()});
  }
  auto o = p.out.view;
  o.data = nullptr;
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), o, p.opts(), {"out.data is null"});
}

// Null is fine where there is nothing to read: an empty cache (every row sees
// no key: output 0, LSE -infinity) and an empty query block (nothing written).
TEST(HostileSizes, NullDataWithZeroTokensIsValid) {
  Problem p;
  ism::HeadsView<const float> none{nullptr, 0, p.heads, p.dim, 0, 0};
  auto opt = p.opts();
  opt.q_offset = 0;
  const auto causal = ism::causal_mask();
  ism::attention<float>(p.q.cview(), none, none, p.out.view, causal, opt);
  for (float x : p.out.buf) EXPECT_EQ(x, 0.f);
  for (float x : p.lse) EXPECT_TRUE(std::isinf(x) && x < 0) << x;

  Problem e;
  ism::HeadsView<const float> no_q{nullptr, 0, e.heads, e.dim, 0, 0};
  ism::HeadsView<float> no_out{nullptr, 0, e.heads, e.dim, 0, 0};
  ism::attention<float>(no_q, e.k.cview(), e.v.cview(), no_out, e.mask, e.opts());
  e.expect_untouched();
}

TEST(HostileSizes, OutputOverlappingInputsIsRejected) {
  Problem p;
  // In place: out is q.
  const ism::HeadsView<const float> out_as_q = ism::as_const(p.out.view);
  p.expect_rejected(out_as_q, p.k.cview(), p.v.cview(), p.out.view, p.opts(), {"out overlaps q"});
  // Out's last row is v's first: one shared float is enough.
  Tensor<float> shared(2 * p.n, p.heads, p.dim);
  for (auto& x : shared.buf) x = 42.f;
  ism::HeadsView<float> o{shared.buf.data(), p.n, p.heads, p.dim, p.heads * p.dim, p.dim};
  ism::HeadsView<const float> v{shared.buf.data() + (p.n * p.heads - 1) * p.dim, p.n, p.heads, p.dim,
                                p.heads * p.dim, p.dim};
  expect_invalid([&] { ism::attention<float>(p.q.cview(), p.k.cview(), v, o, p.mask, p.opts()); },
                 {"out overlaps v"});
  for (index_t i = 0; i < p.n * p.heads * p.dim; ++i) ASSERT_EQ(shared.buf[size_t(i)], 42.f);
  // Out and q interleaved in one buffer ([t][q or out][h][d]): no element is
  // shared, but their byte ranges overlap, and the check is on byte ranges.
  Tensor<float> fused(p.n, 2 * p.heads, p.dim);
  ism::HeadsView<const float> fq{fused.buf.data(), p.n, p.heads, p.dim, 2 * p.heads * p.dim, p.dim};
  ism::HeadsView<float> fo{fused.buf.data() + p.heads * p.dim, p.n, p.heads, p.dim, 2 * p.heads * p.dim, p.dim};
  expect_invalid([&] { ism::attention<float>(fq, p.k.cview(), p.v.cview(), fo, p.mask, {}); }, {"out overlaps q"});
}

TEST(HostileSizes, LseOverlappingIsRejected) {
  Problem p;
  auto opt = p.opts();
  opt.lse = p.out.buf.data() + 3;
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, opt, {"options.lse overlaps out"});
  std::vector<float> q_copy = p.q.buf;
  opt.lse = p.q.buf.data();
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, opt, {"options.lse overlaps an input"});
  EXPECT_EQ(q_copy, p.q.buf);
}

// Out rows that share memory (a zero or too-small stride) would be written by
// several threads at once; they are rejected before anything is written.
TEST(HostileSizes, OutputRowsOverlappingEachOtherAreRejected) {
  Problem p;
  auto o = p.out.view;
  o.token_stride = 0;
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), o, p.opts(), {"out rows overlap", "token_stride = 0"});
  o = p.out.view;
  o.head_stride = p.dim - 1;
  p.expect_rejected(p.q.cview(), p.k.cview(), p.v.cview(), o, p.opts(), {"out rows overlap", "head_stride = 3"});
  // Inputs may share rows: one query row broadcast to every head and token.
  auto q = p.q.cview();
  q.token_stride = q.head_stride = 0;
  Tensor<double> ref(p.n, p.heads, p.dim);
  ism::attention<float>(q, p.k.cview(), p.v.cview(), p.out.view, p.mask, {});
  ism::reference_attention_into<float, double, double>(q, p.k.cview(), p.v.cview(), ref.view, p.mask, {}, nullptr);
  for (index_t t = 0; t < p.n; ++t)
    for (index_t h = 0; h < p.heads; ++h)
      for (index_t d = 0; d < p.dim; ++d) ASSERT_NEAR(p.out.view(t, h, d), ref.view(t, h, d), 1e-5);
}

// Inputs may overlap each other: Q, K and V from one fused projection buffer
// [t][3][h][d], the layout most engines produce.
TEST(HostileSizes, InputsSharingOneFusedBuffer) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t n = 37, heads = 3, dim = 24;
  Tensor<float> qkv(n, 3 * heads, dim), out(n, heads, dim);
  Tensor<double> ref(n, heads, dim);
  qkv.fill_random(rng);
  const index_t ts = 3 * heads * dim;
  auto part = [&](index_t i) {
    return ism::HeadsView<const float>{qkv.buf.data() + i * heads * dim, n, heads, dim, ts, dim};
  };
  const ism::SegmentMask mask = ism::ism_mask({0, 10, 20, 37});
  ism::attention<float>(part(0), part(1), part(2), out.view, mask, {});
  ism::reference_attention_into<float, double, double>(part(0), part(1), part(2), ref.view, mask, {}, nullptr);
  for (index_t t = 0; t < n; ++t)
    for (index_t h = 0; h < heads; ++h)
      for (index_t d = 0; d < dim; ++d) ASSERT_NEAR(out.view(t, h, d), ref.view(t, h, d), 1e-5);
}

// The packed-layout helpers compute a stride; one that overflows is rejected
// instead of wrapping into a small stride that would pass validation.
TEST(HostileSizes, PackedLayoutHelpersRejectOverflowingStrides) {
  float x = 0;
  const index_t big = index_t(1) << 32;
  expect_invalid([&] { ism::token_major(&x, 1, big, big); }, {"ism::token_major", "heads * dim overflows"});
  expect_invalid([&] { ism::head_major(&x, big, 1, big); }, {"ism::head_major", "tokens * dim overflows"});
}

// A paged cache whose heads * dim overflows must be rejected by the checks,
// not by luck after a signed overflow (undefined behaviour, which the
// UndefinedBehaviorSanitizer step reports).
TEST(HostileSizes, PagedCacheWithOverflowingRowSizeIsRejected) {
  std::vector<float> pages(16, 0.f), q(4, 0.f), out(4, 0.f);
  const index_t table[1] = {0};
  const index_t big = index_t(1) << 32;
  const ism::PagedKV<float> kv(pages.data(), pages.data() + 8, 1, 1, big, big, table, 1);
  expect_invalid(
      [&] {
        ism::attention<float>(ism::HeadsView<const float>{q.data(), 1, big, big, 0, 0},
                              kv, ism::HeadsView<float>{out.data(), 1, big, big, 0, 0}, ism::causal_mask());
      },
      {"kv"});
}

// --- mask sizes -------------------------------------------------------------------

TEST(HostileSizes, MaskTotalsBeyondTheMaximumAreRejected) {
  using ism::Attend;
  const index_t huge = ism::SegmentMask::max_length() / 2 + 1;
  expect_invalid([&] { ism::segment_mask({{huge, Attend::Causal}, {huge, Attend::Causal}}); }, {"exceeds the maximum"});
  expect_invalid([&] { ism::ism_mask({0, std::numeric_limits<index_t>::max()}); }, {"exceeds the maximum"});
  expect_invalid([&] { ism::packed_mask({{{huge, Attend::Causal}}, {{huge, Attend::Bidirectional}}}); },
                 {"exceeds the maximum"});
  // A growth call that would overflow leaves the mask as it was.
  ism::SegmentMask m = ism::ism_mask({0, 3, 5});
  expect_invalid([&] { m.extend_last(std::numeric_limits<index_t>::max()); }, {"exceeds the maximum"});
  expect_invalid([&] { m.append({std::numeric_limits<index_t>::max() - 2, Attend::Causal}); }, {"exceeds the maximum"});
  expect_invalid([&] { m.append_document({{1, Attend::Causal}, {std::numeric_limits<index_t>::max(), Attend::Causal}}); },
                 {"overflows"});
  ASSERT_EQ(m.length(), 5);
  ASSERT_EQ(m.spans().size(), 2u);
  EXPECT_EQ(m.keys(4).begin, 0);
  EXPECT_EQ(m.keys(4).end, 5);
  EXPECT_EQ(m.keys(1).end, 3);
}

TEST(HostileSizes, DenseAndTileProductsOverflowingAreRejected) {
  const index_t big = index_t(1) << 32;
  expect_invalid([&] { ism::dense_mask<bool>(ism::causal_mask(), big, big); }, {"n_q * n_k", "overflow"});
  expect_invalid([&] { ism::BlockMap(ism::causal_mask(), big, big, 0, 1, 1); }, {"n_q * n_k", "overflows"});
  // Tile sizes near the limit of index_t: one tile (this once overflowed).
  const index_t max = std::numeric_limits<index_t>::max();
  const ism::BlockMap map(ism::causal_mask(), 10, 10, 0, max, max);
  EXPECT_EQ(map.tile_rows(), 1);
  EXPECT_EQ(map.tile_cols(), 1);
  EXPECT_EQ(map.kind(0, 0), ism::TileKind::Partial);
  EXPECT_EQ(map.stats().visible_pairs, 55);
  // Keys beyond the layout (BlockMap once accepted them).
  expect_invalid([&] { ism::BlockMap(ism::ism_mask({0, 4}), 2, 5, 0, 2, 2); }, {"n_k = 5"});
}

// The export formats size their outputs from the window and block sizes; each
// of these once overflowed, or allocated before the window was checked.
TEST(HostileSizes, ExportSizesAreChecked) {
  const index_t max = std::numeric_limits<index_t>::max();
  const auto causal = ism::causal_mask();
  expect_invalid([&] { ism::query_kv_ranges(causal, -1, 4); }, {"n_q = -1"});
  expect_invalid([&] { ism::flashmask_startend_row_indices(causal, 1, max / 2 + 1); }, {"n_k", "too large"});
  expect_invalid([&] { ism::ggml_kq_mask(causal, 1, 4, 0, max); }, {"overflows"});
  const ism::FlexBlockMask f = ism::flex_block_mask(causal, 10, 10, 0, max, max);
  EXPECT_EQ(f.num_q_blocks, 1);
  EXPECT_EQ(f.num_kv_blocks, 1);
  EXPECT_EQ(f.kv_num_blocks[0], 1);  // 55 of 100 pairs visible: partial
  EXPECT_EQ(f.full_kv_num_blocks[0], 0);
}

// attention_batch checks the requests against each other: one request's output that
// overlaps another request's input or output is a race between requests.
TEST(HostileSizes, BatchRequestsWithOverlappingOutputsAreRejected) {
  Problem a, b;
  using Request = ism::AttentionRequest<float, ism::SegmentMask>;
  std::vector<Request> reqs(2);
  reqs[0] = {a.q.cview(), a.k.cview(), a.v.cview(), a.out.view, &a.mask, -1, nullptr};
  const ism::HeadsView<float> into_a_q{a.q.buf.data(), b.n, b.heads, b.dim, b.heads * b.dim, b.dim};
  reqs[1] = {b.q.cview(), b.k.cview(), b.v.cview(), into_a_q, &b.mask, -1, nullptr};
  const std::vector<float> q_before = a.q.buf;
  expect_invalid([&] { ism::attention_batch(reqs); }, {"requests[1].out", "requests[0]"});
  EXPECT_EQ(q_before, a.q.buf);
  a.expect_untouched();
}

}  // namespace
