// Score modifiers (softcap, ALiBi, attention sinks) and mixed element types
// (Q/out of one type, K/V of another) through the fused CPU kernel, against
// the fp64 reference. Compiled once per instruction set, like kernel_test.
#include <cmath>
#include <limits>
#include <variant>

#include "cpu/kernel_test_util.hpp"

namespace ism_test {
namespace {

using ism::AttentionOptions;

constexpr double eps32 = 5.96e-8;  // 2^-24

// The modifiers a test case turns on.
struct Mods {
  float softcap = 0.f;
  std::vector<float> sinks, slopes;
  void apply(AttentionOptions& o) const {
    o.softcap = softcap;
    o.sinks = sinks.empty() ? nullptr : sinks.data();
    o.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
  }
  std::string describe() const {
    std::ostringstream os;
    os << "softcap " << softcap << (sinks.empty() ? "" : " sinks") << (slopes.empty() ? "" : " alibi");
    return os.str();
  }
};

Mods random_mods(Rng& rng, index_t heads, int which) {
  Mods m;
  if (which & 1) m.softcap = float(rng.real(0.5, 40));
  if (which & 2) {
    for (index_t h = 0; h < heads; ++h) {
      // Mostly ordinary sinks; sometimes none for a head (-inf) or one that
      // dominates every row.
      const double u = rng.real(0, 1);
      m.sinks.push_back(u < 0.15 ? -std::numeric_limits<float>::infinity() : u < 0.25 ? 30.f : float(rng.real(-3, 3)));
    }
  }
  if (which & 4)  // ALiBi's geometric slopes, 2^(-8 h / H)
    for (index_t h = 0; h < heads; ++h) m.slopes.push_back(std::exp2(-8.f * float(h + 1) / float(heads)));
  return m;
}

// |got - want| allowed: the fp32 kernel's error (kernel_test's bound, with
// the score scale), plus the softcap's tanh (a few ulps of 1, times the cap)
// and the ALiBi bias rounded in fp32 (what matters is the bias of the keys
// that carry weight, so a few ulps of the score range).
double tolerance(double vmax, double score_scale, index_t dim, index_t n_k, const Mods& m) {
  double score_err = std::sqrt(double(dim)) * eps32 * score_scale;
  if (m.softcap != 0.f) score_err += 16 * eps32 * m.softcap;
  if (!m.slopes.empty()) score_err += 16 * eps32 * (1 + score_scale);
  return vmax * (eps32 * (8.0 + 2.0 * std::log2(double(n_k) + 1.0)) + 4.0 * score_err);
}

// With a softcap the scores are bounded by the cap.
double m_or(double score_scale, const Mods& m) {
  return m.softcap != 0.f ? std::min(score_scale, double(m.softcap)) : score_scale;
}

template <class Mask>
void check(const Mask& mask, const std::string& desc, index_t n_q, index_t n_k, index_t off, index_t heads,
           index_t kv_heads, index_t dim, int layout, const Mods& mods, int threads, Rng& rng) {
  SCOPED_TRACE(::testing::Message() << desc << " n_q=" << n_q << " n_k=" << n_k << " q_offset=" << off
                                    << " heads=" << heads << "/" << kv_heads << " dim=" << dim << " layout=" << layout
                                    << " " << mods.describe());
  Problem<float> p(n_q, n_k, heads, kv_heads, dim, off, layout);
  p.q.fill_random(rng, -3, 3);
  p.k.fill_random(rng, -3, 3);
  p.v.fill_random(rng, -1, 1);
  AttentionOptions o = p.options();
  o.threads = threads;
  mods.apply(o);
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, o);

  Tensor<double> want(n_q, heads, dim);
  std::vector<double> want_lse(size_t(heads * n_q));
  AttentionOptions r;
  r.q_offset = off;
  mods.apply(r);
  ism::reference_attention_into<float, double, double>(p.q.cview(), p.k.cview(), p.v.cview(), want.view, mask, r,
                                                       want_lse.data());
  const double score_scale = 9.0 * std::sqrt(double(dim));  // scale * dim * max|q| * max|k| with scale 1/sqrt(dim)
  const double tol = tolerance(1.0, m_or(score_scale, mods), dim, n_k, mods);
  EXPECT_LE(max_error(p.out, want), tol);
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < n_q; ++t) {
      const double w = want_lse[size_t(h * n_q + t)];
      const float g = p.lse[size_t(h * n_q + t)];
      if (std::isinf(w)) {
        ASSERT_TRUE(std::isinf(g) && g < 0) << "row " << t << " head " << h << ": lse " << g;
      } else {
        ASSERT_NEAR(g, w, 64 * eps32 * (1 + std::abs(w)) + 4 * score_scale * eps32) << "lse row " << t << " head " << h;
      }
    }
}


// Every modifier alone and combined, every mask kind, prefill and decode
// (split keys merged: the sinks must join exactly once), GQA, odd sizes.
TEST(ScoreMods, EachAndCombinedMatchReference) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  static const index_t dims[] = {8, 31, 64, 128};
  for (int which = 1; which < 8; ++which)
    for (int it = 0; it < 5; ++it) {
      const bool decode = it % 2 == 1;
      const index_t n_k = decode ? rng.uniform(1100, 2300) : rng.uniform(1, 300);
      const index_t n_q = decode ? rng.uniform(1, 3) : rng.uniform(1, n_k);
      const index_t off = n_k - n_q;
      const index_t kv_heads = rng.uniform(1, 2), heads = kv_heads * (rng.coin() ? 4 : 1);
      const index_t dim = dims[rng.uniform(0, 3)];
      std::string desc;
      const AnyMask mask = make_mask(MaskKind(rng.uniform(0, 5)), n_k, rng, &desc);
      const Mods mods = random_mods(rng, heads, which);
      std::visit([&](const auto& m) { check(m, desc, n_q, n_k, off, heads, kv_heads, dim, int(rng.uniform(0, 2)), mods,
                                            int(rng.uniform(1, 3)), rng); },
                 mask);
      if (HasFatalFailure()) return;
    }
}

// Sinks of -infinity are no sinks: the result is the same bits as without.
TEST(ScoreMods, MinusInfinitySinksAreNoSinks) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (index_t n_k : {300, 2000}) {
    Problem<float> p(n_k == 300 ? 200 : 2, n_k, 4, 2, 64, n_k - (n_k == 300 ? 200 : 2), 0);
    p.q.fill_random(rng);
    p.k.fill_random(rng);
    p.v.fill_random(rng);
    const ism::SegmentMask mask = ism::ism_mask({0, n_k / 3, n_k / 2, n_k});
    Tensor<float> with = p.out;
    std::vector<float> lse_with(p.lse.size());
    ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, p.options());
    const std::vector<float> none(4, -std::numeric_limits<float>::infinity());
    AttentionOptions o = p.options();
    o.sinks = none.data();
    o.lse = lse_with.data();
    ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), with.view, mask, o);
    EXPECT_EQ(with.buf, p.out.buf);
    for (size_t i = 0; i < p.lse.size(); ++i) EXPECT_EQ(lse_with[i], p.lse[i]);
  }
}

// A row that sees no key gets output 0 and LSE = its sink; a huge sink makes
// every output 0 and the LSE the sink; huge scores under a softcap stay finite.
TEST(ScoreMods, DegenerateCases) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  // Padding rows (they see nothing) with sinks.
  const ism::SegmentMask mask = ism::packed_mask({{{5, ism::Attend::Bidirectional}, {7, ism::Attend::Causal}}}, 6);
  Problem<float> p(18, 18, 2, 1, 16, 0, 0);
  p.q.fill_random(rng);
  p.k.fill_random(rng);
  p.v.fill_random(rng);
  const std::vector<float> sinks{1.5f, 1e30f};
  AttentionOptions o = p.options();
  o.sinks = sinks.data();
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, o);
  for (index_t t = 12; t < 18; ++t)
    for (index_t h = 0; h < 2; ++h) {
      EXPECT_EQ(p.lse[size_t(h * 18 + t)], sinks[size_t(h)]) << "padding row " << t;
      for (index_t d = 0; d < 16; ++d) EXPECT_EQ(p.out.view(t, h, d), 0.f);
    }
  for (index_t t = 0; t < 12; ++t) {
    EXPECT_FLOAT_EQ(p.lse[size_t(18 + t)], 1e30f) << "a huge sink dominates row " << t;
    for (index_t d = 0; d < 16; ++d) EXPECT_EQ(p.out.view(t, 1, d), 0.f);
  }

  // Scores of 1e6 and more under a softcap of 30: finite, and equal to the
  // reference (every capped score is within 30 of the others).
  Problem<float> big(70, 70, 2, 2, 32, 0, 1);
  big.q.fill_random(rng, -1e3, 1e3);
  big.k.fill_random(rng, -1e3, 1e3);
  big.v.fill_random(rng);
  AttentionOptions c = big.options();
  c.softcap = 30.f;
  ism::attention<float>(big.q.cview(), big.k.cview(), big.v.cview(), big.out.view, ism::causal_mask(), c);
  for (float x : big.out.buf) ASSERT_TRUE(std::isfinite(x));
  for (float x : big.lse) ASSERT_TRUE(std::isfinite(x));
}

// Q/out of one element type, K/V of another, through the contiguous and the
// paged entry points, without template arguments.
template <class TQ, class TK>
void check_mixed(Rng& rng, index_t n_q, index_t n_k, index_t heads, index_t kv_heads, index_t dim) {
  SCOPED_TRACE(::testing::Message() << "Q/out " << ism::type_name<TQ>() << ", K/V " << ism::type_name<TK>()
                                    << " n_q=" << n_q << " n_k=" << n_k << " dim=" << dim);
  const index_t off = n_k - n_q;
  Tensor<TQ> q(n_q, heads, dim), out(n_q, heads, dim), paged_out(n_q, heads, dim);
  Tensor<TK> k(n_k, kv_heads, dim), v(n_k, kv_heads, dim);
  q.fill_random(rng, -2, 2);
  k.fill_random(rng, -2, 2);
  v.fill_random(rng);
  const ism::SegmentMask mask = ism::ism_mask({0, n_k / 4 + 1, n_k / 2 + 1, n_k + 1});
  std::vector<float> lse(size_t(heads * n_q));
  AttentionOptions o;
  o.q_offset = off;
  o.lse = lse.data();
  ism::attention(q.cview(), k.cview(), v.cview(), out.view, mask, o);  // types deduced

  Tensor<double> want(n_q, heads, dim);
  std::vector<double> want_lse(lse.size());
  AttentionOptions r;
  r.q_offset = off;
  ism::reference_attention_into<TQ, double, double>(q.cview(), k.cview(), v.cview(), want.view, mask, r,
                                                    want_lse.data());
  const double ulp_q = std::is_same_v<TQ, float> ? 0.0 : std::is_same_v<TQ, Eigen::bfloat16> ? 0x1p-8 : 0x1p-11;
  const double tol = ulp_q + 1e-5;
  EXPECT_LE(max_error(out, want), tol);
  for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], want_lse[i], 1e-4 * (1 + std::abs(want_lse[i])));

  // The same keys through a paged cache with an int32 block table.
  const index_t page = 16, pages = (n_k + page - 1) / page;
  std::vector<TK> kp(size_t(pages * page * kv_heads * dim)), vp(kp.size());
  std::vector<std::int32_t> table(static_cast<size_t>(pages));
  for (index_t b = 0; b < pages; ++b) table[size_t(b)] = std::int32_t(pages - 1 - b);  // reversed pages
  for (index_t t = 0; t < n_k; ++t)
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t d = 0; d < dim; ++d) {
        const size_t at = size_t(((table[size_t(t / page)] * page + t % page) * kv_heads + h) * dim + d);
        kp[at] = k.view(t, h, d);
        vp[at] = v.view(t, h, d);
      }
  const ism::PagedKV<TK, std::int32_t> kv(kp.data(), vp.data(), pages, page, kv_heads, dim, table.data(), n_k);
  AttentionOptions po;
  po.q_offset = off;
  ism::attention(q.cview(), kv, paged_out.view, mask, po);
  EXPECT_EQ(paged_out.buf, out.buf) << "paged and contiguous differ";
}

TEST(MixedTypes, QueryAndCacheOfDifferentTypes) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 2; ++it) {
    const bool decode = it == 1;
    const index_t n_k = decode ? 1500 : 150, n_q = decode ? 1 : 90, dim = decode ? 128 : 72;
    check_mixed<float, Eigen::bfloat16>(rng, n_q, n_k, 8, 2, dim);
    check_mixed<float, Eigen::half>(rng, n_q, n_k, 8, 2, dim);
    check_mixed<Eigen::bfloat16, float>(rng, n_q, n_k, 4, 4, dim);
    check_mixed<Eigen::half, Eigen::bfloat16>(rng, n_q, n_k, 4, 1, dim);
  }
}

// The modifiers' bad values are named, and nothing is written.
TEST(ScoreMods, BadModifiersAreNamedAndWriteNothing) {
  Problem<float> p(4, 4, 2, 1, 8, 0, 0);
  for (auto& x : p.out.buf) x = 7.f;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  auto expect = [&](auto set, std::initializer_list<const char*> needles) {
    AttentionOptions o = p.options();
    set(o);
    expect_invalid([&] { ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, ism::causal_mask(), o); },
                   needles);
    for (float x : p.out.buf) ASSERT_EQ(x, 7.f);
  };
  expect([](AttentionOptions& o) { o.softcap = -1.f; }, {"options.softcap", "-1"});
  expect([&](AttentionOptions& o) { o.softcap = nan; }, {"options.softcap"});
  expect([&](AttentionOptions& o) { o.softcap = inf; }, {"options.softcap"});
  expect([](AttentionOptions& o) { o.softcap = 1e-45f; }, {"options.softcap", "too small"});
  static const float bad_sinks[] = {0.f, nan}, inf_sinks[] = {inf, 0.f}, bad_slopes[] = {1.f, inf};
  expect([](AttentionOptions& o) { o.sinks = bad_sinks; }, {"options.sinks[1]"});
  expect([](AttentionOptions& o) { o.sinks = inf_sinks; }, {"options.sinks[0]"});
  expect([](AttentionOptions& o) { o.alibi_slopes = bad_slopes; }, {"options.alibi_slopes[1]"});
  // Values that overflow once the kernels multiply them by log2(e).
  static const float huge_sinks[] = {3e38f, 0.f}, huge_slopes[] = {0.f, -3e38f};
  expect([](AttentionOptions& o) { o.sinks = huge_sinks; }, {"options.sinks[0]", "log2(e)"});
  expect([](AttentionOptions& o) { o.alibi_slopes = huge_slopes; }, {"options.alibi_slopes[1]"});
  expect([](AttentionOptions& o) { o.softcap = 3e38f; }, {"options.softcap"});
  expect([&](AttentionOptions& o) { o.sinks = p.out.buf.data(); }, {"out overlaps options.sinks"});
  expect([&](AttentionOptions& o) { o.alibi_slopes = p.out.buf.data() + 1; }, {"out overlaps options.alibi_slopes"});
}

// ALiBi's distances are exact in fp32 below 2^24 positions: a call whose
// positions reach past that is refused rather than computed with distances
// rounded to a few units. Just below it, rows that see their neighbours get
// the reference's LSE: a window of 64 keys ending at each row, over 2^24 keys
// that are all the same row of memory (stride 0: inputs may overlap), so the
// expected LSE has a closed form.
TEST(ScoreMods, AlibiPositionsBeyond2To24AreRefused) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  Problem<float> p(8, 64, 2, 1, 16, 0, 0);
  p.q.fill_random(rng);
  p.k.fill_random(rng);
  p.v.fill_random(rng);
  const std::vector<float> slopes{0.5f, 0.25f};
  for (auto& x : p.out.buf) x = 7.f;
  AttentionOptions o;
  o.alibi_slopes = slopes.data();
  o.q_offset = index_t(1) << 30;
  expect_invalid([&] { ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, ism::causal_mask(), o); },
                 {"options.alibi_slopes", "2^24"});
  for (float x : p.out.buf) ASSERT_EQ(x, 7.f);

  const index_t n_k = index_t(1) << 24, w = 64;
  const ism::HeadsView<const float> k{p.k.buf.data(), n_k, 1, 16, 0, 16}, v{p.v.buf.data(), n_k, 1, 16, 0, 16};
  o.q_offset = n_k - 8;
  o.lse = p.lse.data();
  ism::attention<float>(p.q.cview(), k, v, p.out.view, ism::sliding_window(ism::causal_mask(), w), o);
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < 8; ++t) {
      double dot = 0;
      for (index_t d = 0; d < 16; ++d) dot += double(p.q.view(t, h, d)) * double(p.k.buf[size_t(d)]);
      double sum = 0;
      for (index_t dist = 0; dist < w; ++dist) sum += std::exp(dot / 4.0 - double(slopes[size_t(h)]) * double(dist));
      EXPECT_NEAR(p.lse[size_t(h * 8 + t)], std::log(sum), 1e-5) << "row " << t << " head " << h;
    }
}

}  // namespace
}  // namespace ism_test
