// The fused CPU kernel against the fp64 reference. This file is compiled once
// per instruction set (tests/cpu/CMakeLists.txt); ISM_TEST_EXPECT_SIMD names
// the path the binary must have selected, so a flag mix-up cannot silently
// test the scalar path three times.
#include <atomic>
#include <cmath>
#include <cstring>
#include <set>

#include "cpu/kernel_test_util.hpp"

namespace ism_test {
namespace {

using ism::AttentionOptions;

constexpr double eps32 = 5.96e-8;  // 2^-24, fp32 unit roundoff

// fp32 error bound, relative to max|v| (outputs are convex combinations of v,
// so max|v| is the scale of the output; max|ref| can be far smaller for long
// rows of random values, which would make a bound on it test cancellation,
// not the kernel):
//  - scores: an fp32 FMA chain over D products has a rounding error of about
//    sqrt(D) * eps * (scale * sqrt(D) * max|q| * max|k|) (random-walk
//    rounding of D terms whose partial sums grow like sqrt(D)); a score error
//    d changes a softmax weight by a factor e^d, so the output by up to
//    2 * d * max|v|;
//  - exp2 (2 ulp), the running max rescale and the normalisation add a few
//    ulps; the sums over keys (lane-wise within a tile, then across tiles)
//    grow like log2(n_k) ulps in practice.
// The constants (8 + 2 log2 n_k ulps, 2x the score term) were set from the
// largest errors seen over many seeds on every path, which stay below a
// quarter of the bound; a kernel bug (a dropped key, a wrong rescale) shows
// up as errors of 1e-3 and more, thousands of times the bound.
double fp32_tolerance(double vmax, double score_scale, index_t dim, index_t n_k) {
  const double score_err = std::sqrt(double(dim)) * eps32 * score_scale;
  return vmax * (eps32 * (8.0 + 2.0 * std::log2(double(n_k) + 1.0)) + 2.0 * 2.0 * score_err);
}

struct Sizes {
  index_t n_q, n_k, q_offset, heads, kv_heads, dim;
  int layout;
};

// Random sizes with the N and dim sets, GQA 1/2/4/8, random offsets,
// capped in total work so the fp64 reference stays fast.
Sizes random_sizes(Rng& rng, index_t work_cap) {
  static const index_t ns[] = {1, 2, 63, 64, 65, 97, 1025};
  static const index_t dims[] = {1, 8, 31, 64, 72, 80, 96, 128, 255, 256};
  static const index_t groups[] = {1, 2, 4, 8};
  for (;;) {
    Sizes s;
    const index_t n = rng.coin(0.7) ? ns[rng.uniform(0, 6)] : rng.uniform(1, 300);
    s.dim = dims[rng.uniform(0, 9)];
    const index_t group = groups[rng.uniform(0, 3)];
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * group;
    // Queries: the whole sequence, its tail, or a window ending before the end.
    const int shape = int(rng.uniform(0, 3));
    s.n_k = n;
    if (shape == 0 || n == 1) {
      s.n_q = n;
      s.q_offset = 0;
    } else if (shape == 1) {
      s.n_q = rng.uniform(1, n);
      s.q_offset = n - s.n_q;
    } else {
      s.n_q = rng.uniform(1, n);
      s.q_offset = rng.uniform(0, n - s.n_q);
    }
    s.layout = int(rng.uniform(0, 2));
    if (s.n_q * s.n_k * s.dim * s.heads <= work_cap) return s;
  }
}

template <class Mask>
void check_fp32(const Sizes& s, const Mask& mask, const std::string& desc, Rng& rng, double* worst_ratio) {
  SCOPED_TRACE(::testing::Message() << desc << " n_q=" << s.n_q << " n_k=" << s.n_k << " q_offset=" << s.q_offset
                                    << " heads=" << s.heads << "/" << s.kv_heads << " dim=" << s.dim
                                    << " layout=" << s.layout);
  Problem<float> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, s.layout);
  p.q.fill_random(rng, -2, 2);
  p.k.fill_random(rng, -2, 2);
  p.v.fill_random(rng, -1, 1);
  AttentionOptions o = p.options();
  o.threads = int(rng.uniform(1, 3));
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, o);
  Tensor<double> want(s.n_q, s.heads, s.dim);
  std::vector<double> want_lse;
  reference(p, mask, want, want_lse);

  const double scale = 1.0 / std::sqrt(double(s.dim));
  const double score_scale = scale * std::sqrt(double(s.dim)) * max_abs_input(p.q) * max_abs_input(p.k);
  const double tol = fp32_tolerance(std::max(1e-30, max_abs_input(p.v)), score_scale, s.dim, s.n_k);
  const double err = max_error(p.out, want);
  EXPECT_LE(err, tol);
  *worst_ratio = std::max(*worst_ratio, err / tol);
  for (index_t h = 0; h < s.heads; ++h)
    for (index_t t = 0; t < s.n_q; ++t) {
      const double w = want_lse[size_t(h * s.n_q + t)];
      const float g = p.lse[size_t(h * s.n_q + t)];
      if (std::isinf(w)) {
        ASSERT_TRUE(std::isinf(g) && g < 0) << "row " << t << " head " << h << " sees nothing: lse " << g;
        for (index_t d = 0; d < s.dim; ++d) ASSERT_EQ(p.out.view(t, h, d), 0.f);
      } else {
        ASSERT_NEAR(g, w, 4.0 * score_scale * std::sqrt(double(s.dim)) * eps32 + 16 * eps32 * (1 + std::abs(w)))
            << "lse of row " << t << " head " << h;
      }
    }
}

TEST(CpuKernel, SelectedInstructionSet) {
  EXPECT_STREQ(ISM_SIMD_NAME, ISM_TEST_EXPECT_SIMD);
  std::printf("SIMD path: %s, width %d\n", ISM_SIMD_NAME, ism::cpu::simd::Native::width);
}

// The vocabulary's exp2, which every softmax weight goes through: within 2
// ulp of libm where the result is normal, exactly 0 below -126.5 (masked
// scores are -infinity and must weigh exactly nothing), NaN for NaN.
TEST(CpuKernel, Exp2MatchesLibm) {
  using S = ism::cpu::simd::Native;
  constexpr int W = S::width;
  std::vector<float> xs{-std::numeric_limits<float>::infinity(), -1e30f, -200.f, -127.f, -126.75f, -126.5001f,
                        -126.f, -125.5f, -100.f, -1.f, -0.5f, -1e-7f, 0.f, 1e-7f, 0.5f, 1.f, 100.f, 126.9f};
  for (int i = 0; i <= 200000; ++i) xs.push_back(-126.f + 252.f * float(i) / 200000.f);
  while (xs.size() % W) xs.push_back(0.f);
  alignas(64) float in[W], out[W];
  for (size_t b = 0; b < xs.size(); b += W) {
    for (int l = 0; l < W; ++l) in[l] = xs[b + size_t(l)];
    S::store(out, S::exp2(S::load(in)));
    for (int l = 0; l < W; ++l) {
      const float x = in[l], y = out[l];
      if (x < -126.5f) {
        ASSERT_EQ(y, 0.f) << "exp2(" << x << ")";
        ASSERT_FALSE(std::signbit(y)) << "exp2(" << x << ")";
      } else if (x >= -126.f) {
        const double want = std::exp2(double(x));
        ASSERT_LE(std::abs(double(y) - want), 2.0 * std::ldexp(1.0, std::ilogb(want) - 23)) << "exp2(" << x << ")";
      }
    }
  }
  for (int l = 0; l < W; ++l) in[l] = std::numeric_limits<float>::quiet_NaN();
  S::store(out, S::exp2(S::load(in)));
  for (int l = 0; l < W; ++l) EXPECT_TRUE(std::isnan(out[l]));
}

// The element conversions the kernel uses (core/element.hpp, written in
// integer operations so that no Eigen or F16C code is reachable from kernel
// code) against Eigen's: widening on every 16-bit pattern, round-to-nearest-
// even narrowing on edge values and random bit patterns; then each path's
// vector conversions (F16C, AVX-512, NEON) against the scalar ones.
std::uint16_t bits_of16(Eigen::half x) { return Eigen::numext::bit_cast<std::uint16_t>(x); }
std::uint16_t bits_of16(Eigen::bfloat16 x) { return Eigen::numext::bit_cast<std::uint16_t>(x); }
template <class T>
T from_bits(std::uint16_t b) {
  return Eigen::numext::bit_cast<T>(b);
}
float float_of(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

template <class T>
void check_conversions(Rng& rng) {
  SCOPED_TRACE(ism::type_name<T>());
  // Widening: every pattern, exact (NaN stays NaN).
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const T x = from_bits<T>(std::uint16_t(b));
    const float want = static_cast<float>(x), got = ism::to_float(x);
    if (std::isnan(want)) ASSERT_TRUE(std::isnan(got)) << std::hex << b;
    else ASSERT_EQ(Eigen::numext::bit_cast<std::uint32_t>(got), Eigen::numext::bit_cast<std::uint32_t>(want)) << std::hex << b;
  }
  // Narrowing: edges (zeros, subnormals of both formats, halfway cases, the
  // overflow threshold, infinities) and random patterns.
  std::vector<float> xs{0.f, -0.f, 1.f, -1.f, 65504.f, 65519.99f, 65520.f, 1e30f, -1e30f, 5.96e-8f, 2.98e-8f,
                        2.99e-8f, 6.1e-5f, 1e-40f, -1e-40f, 3.4028235e38f, std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity(), 1.00390625f, 1.0048828125f, 1.0009765625f};
  for (int i = 0; i < 200000; ++i) xs.push_back(float_of(std::uint32_t(rng.gen())));
  for (float x : xs) {
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(ism::to_float(ism::from_float<T>(x))));
      continue;
    }
    ASSERT_EQ(bits_of16(ism::from_float<T>(x)), bits_of16(static_cast<T>(x))) << x;
  }
  // The path's vector load and store against the scalar conversions.
  using S = ism::cpu::simd::Native;
  constexpr int W = S::width;
  alignas(64) T in[W], out[W];
  alignas(64) float f[W];
  for (std::uint32_t b0 = 0; b0 < 0x10000; b0 += W) {
    for (int l = 0; l < W; ++l) in[l] = from_bits<T>(std::uint16_t(b0 + std::uint32_t(l)));
    S::store(f, S::load(in));
    for (int l = 0; l < W; ++l) {
      const float want = ism::to_float(in[l]);
      if (std::isnan(want)) ASSERT_TRUE(std::isnan(f[l]));
      else ASSERT_EQ(Eigen::numext::bit_cast<std::uint32_t>(f[l]), Eigen::numext::bit_cast<std::uint32_t>(want));
    }
  }
  for (size_t i = 0; i + W <= xs.size(); i += W) {
    S::store(out, S::load(&xs[i]));
    for (int l = 0; l < W; ++l) {
      const float x = xs[i + size_t(l)];
      if (std::isnan(x)) {
        ASSERT_TRUE(std::isnan(ism::to_float(out[l])));
      } else if (std::is_same_v<T, Eigen::bfloat16> && std::fpclassify(x) == FP_SUBNORMAL &&
                 bits_of16(out[l]) == (std::signbit(x) ? 0x8000 : 0)) {
        // AVX512_BF16's VCVTNEPS2BF16 flushes fp32 subnormals to a signed
        // zero (cpu/simd/avx512.hpp); every other input must round exactly.
      } else {
        ASSERT_EQ(bits_of16(out[l]), bits_of16(ism::from_float<T>(x))) << x;
      }
    }
  }
}

TEST(CpuKernel, ElementConversionsMatchEigen) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  check_conversions<Eigen::half>(rng);
  check_conversions<Eigen::bfloat16>(rng);
}

// Every mask kind, random sizes from the sets, fp32.
TEST(CpuKernel, Fp32MatchesReferenceOnEveryMaskKind) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int kind = 0; kind < 6; ++kind) {
    for (int it = 0; it < 12; ++it) {
      const Sizes s = random_sizes(rng, 6'000'000);
      std::string desc;
      const AnyMask mask = make_mask(MaskKind(kind), s.n_k, rng, &desc);
      std::visit([&](const auto& m) { check_fp32(s, m, desc, rng, &worst); }, mask);
      if (HasFatalFailure()) return;
    }
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// Every fast-path dim and the generic path against a long ISM cache (N = 1025:
// a partial key tile at the end; 65 or 130 query rows: a partial query tile).
TEST(CpuKernel, Fp32EveryDimLongSequence) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (index_t dim : {1, 8, 31, 64, 72, 80, 96, 128, 255, 256}) {
    Sizes s{dim >= 96 ? 65 : 130, 1025, 0, 2, 1, dim, int(rng.uniform(0, 2))};
    s.q_offset = s.n_k - s.n_q;
    std::string desc;
    const AnyMask mask = make_mask(MaskKind::Ism, s.n_k, rng, &desc);
    std::visit([&](const auto& m) { check_fp32(s, m, desc, rng, &worst); }, mask);
    if (HasFatalFailure()) return;
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// bf16 / fp16: the kernel widens exactly and accumulates in fp32, so its only
// extra error is rounding the output to T. The bound: at most 2x the error of
// a naive attention run in T (scores rounded to T, probabilities rounded to T,
// output rounded to T, like an unfused framework), plus one ulp of T at max|v|.
template <class T, class Mask>
void check_low_precision(const Sizes& s, const Mask& mask, Rng& rng) {
  Problem<T> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, s.layout);
  p.q.fill_random(rng, -2, 2);
  p.k.fill_random(rng, -2, 2);
  p.v.fill_random(rng, -1, 1);
  ism::attention<T>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, p.options());
  Tensor<double> want(s.n_q, s.heads, s.dim);
  std::vector<double> want_lse;
  reference(p, mask, want, want_lse);

  // Naive attention in T.
  const float scale = 1.f / std::sqrt(float(s.dim));
  const index_t group = s.heads / s.kv_heads;
  double naive_err = 0;
  std::vector<float> pr(size_t(s.n_k));
  for (index_t h = 0; h < s.heads; ++h)
    for (index_t t = 0; t < s.n_q; ++t) {
      const ism::KeyRange keys = ism::visible_keys(mask, s.q_offset + t, s.n_k);
      float mx = -std::numeric_limits<float>::infinity();
      for (index_t j = keys.begin; j < keys.end; ++j) {
        float dot = 0;
        for (index_t d = 0; d < s.dim; ++d)
          dot += ism::to_float(p.q.view(t, h, d)) * ism::to_float(p.k.view(j, h / group, d));
        pr[size_t(j)] = ism::to_float(T(dot * scale));
        mx = std::max(mx, pr[size_t(j)]);
      }
      float sum = 0;
      for (index_t j = keys.begin; j < keys.end; ++j) sum += (pr[size_t(j)] = std::exp(pr[size_t(j)] - mx));
      for (index_t d = 0; d < s.dim; ++d) {
        float acc = 0;
        for (index_t j = keys.begin; j < keys.end; ++j)
          acc += ism::to_float(T(pr[size_t(j)] / sum)) * ism::to_float(p.v.view(j, h / group, d));
        const double got = keys.empty() ? 0.0 : double(ism::to_float(T(acc)));
        naive_err = std::max(naive_err, std::abs(got - want.view(t, h, d)));
      }
    }
  const double ulp_t = std::is_same_v<T, Eigen::bfloat16> ? 0x1p-8 : 0x1p-11;
  const double err = max_error(p.out, want);
  EXPECT_LE(err, 2.0 * naive_err + ulp_t * max_abs_input(p.v))
      << ism::type_name<T>() << " n_q=" << s.n_q << " n_k=" << s.n_k << " dim=" << s.dim << " naive error "
      << naive_err;
}

TEST(CpuKernel, Bf16AndFp16WithinNaiveLowPrecisionError) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 24; ++it) {
    const Sizes s = random_sizes(rng, 1'500'000);
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(rng.uniform(0, 5)), s.n_k, rng, &desc);
    SCOPED_TRACE(desc);
    std::visit(
        [&](const auto& m) {
          if (it % 2) check_low_precision<Eigen::bfloat16>(s, m, rng);
          else check_low_precision<Eigen::half>(s, m, rng);
        },
        mask);
  }
}

// Rows that see nothing (padding, and an empty cache) give 0 and LSE -inf.
TEST(CpuKernel, RowsWithoutKeysGiveZeroAndMinusInfinity) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t dim = 64;
  ism::SegmentMask m = ism::packed_mask({{{70, ism::Attend::Bidirectional}, {20, ism::Attend::Causal}}}, 80);
  Problem<float> p(170, 170, 2, 1, dim, 0, 0);
  p.q.fill_random(rng);
  p.k.fill_random(rng);
  p.v.fill_random(rng);
  for (auto& x : p.out.buf) x = std::numeric_limits<float>::quiet_NaN();
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, m, p.options());
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 90; t < 170; ++t) {
      ASSERT_TRUE(std::isinf(p.lse[size_t(h * 170 + t)]) && p.lse[size_t(h * 170 + t)] < 0);
      for (index_t d = 0; d < dim; ++d) ASSERT_EQ(p.out.view(t, h, d), 0.f);
    }
  // No keys at all: every row is empty.
  Problem<float> e(5, 0, 2, 2, dim, 0, 0);
  e.q.fill_random(rng);
  ism::attention<float>(e.q.cview(), e.k.cview(), e.v.cview(), e.out.view, ism::causal_mask(), e.options());
  for (float l : e.lse) EXPECT_TRUE(std::isinf(l) && l < 0);
  for (index_t t = 0; t < 5; ++t)
    for (index_t d = 0; d < dim; ++d) EXPECT_EQ(e.out.view(t, 0, d), 0.f);
}

// Scores of magnitude up to 1e4: the online softmax must not overflow.
TEST(CpuKernel, HugeScoresStayFinite) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (float sign : {1.f, -1.f}) {
    Problem<float> p(200, 200, 2, 1, 64, 0, 0);
    p.q.fill_random(rng);
    p.k.fill_random(rng);
    p.v.fill_random(rng);
    AttentionOptions o = p.options();
    o.scale = sign * 1e4f / 8;  // |score| up to 1e4 for |q.k| up to 8
    ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, ism::causal_mask(), o);
    Tensor<double> want(200, 2, 64);
    std::vector<double> want_lse;
    reference(p, ism::causal_mask(), want, want_lse, o.scale);
    for (float x : p.out.buf) ASSERT_TRUE(std::isfinite(x));
    for (float x : p.lse) ASSERT_TRUE(std::isfinite(x));
    // Score errors of ~1e4 * 64 * eps ~ 0.04 make near-ties between keys move
    // weight around: compare loosely; the point is finite, sane output.
    EXPECT_LE(max_error(p.out, want), 0.5);
  }
}

template <class Mask>
std::vector<float> run_with(const Problem<float>& p, const Mask& mask, int threads, const ism::ParallelFor& pf = {}) {
  Tensor<float> out(p.n_q, p.heads, p.dim);
  AttentionOptions o;
  o.q_offset = p.q_offset;
  o.threads = threads;
  o.parallel_for = pf;
  std::vector<float> lse(size_t(p.heads * p.n_q));
  o.lse = lse.data();
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), out.view, mask, o);
  out.buf.insert(out.buf.end(), lse.begin(), lse.end());
  return out.buf;
}

// The plan does not depend on the thread count, so results are identical bit
// for bit, for prefill and for the split-key decode path, and through a
// caller's own parallel-for.
TEST(CpuKernel, ThreadCountsAgree) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (index_t n_q : {index_t(300), index_t(1)}) {
    const index_t n_k = n_q == 1 ? 3000 : 300;
    Problem<float> p(n_q, n_k, 4, 2, 64, n_k - n_q, 0);
    p.q.fill_random(rng);
    p.k.fill_random(rng);
    p.v.fill_random(rng);
    const auto mask = ism::ism_mask({0, 100, 180, 250, n_k});
    const auto one = run_with(p, mask, 1);
    for (int t = 2; t <= 4; ++t) EXPECT_EQ(one, run_with(p, mask, t)) << t << " threads, n_q " << n_q;
    std::atomic<int> calls{0};
    std::set<index_t> seen;
    const ism::ParallelFor pf = [&](index_t n, const std::function<void(index_t)>& body) {
      ++calls;
      for (index_t i = n - 1; i >= 0; --i) {  // reverse order: order must not matter
        seen.insert(i);
        body(i);
      }
    };
    EXPECT_EQ(one, run_with(p, mask, 1, pf));
    EXPECT_GE(calls.load(), 1);
  }
}

// A decode step (one row against the cache: grouped rows, split keys, LSE
// merge) agrees with the same row computed by the prefill path (a window of
// more than tile_q rows per head ending at that row).
TEST(CpuKernel, DecodeAgreesWithPrefill) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 4; ++it) {
    const index_t n = rng.uniform(600, 2500), dim = it % 2 ? 128 : 40, group = index_t(1) << rng.uniform(0, 3);
    const index_t window = ism::cpu::tile_q + rng.uniform(1, 40);
    Problem<float> p(window, n, 2 * group, 2, dim, n - window, 0);
    p.q.fill_random(rng, -2, 2);
    p.k.fill_random(rng, -2, 2);
    p.v.fill_random(rng);
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(rng.uniform(1, 4)), n, rng, &desc);
    SCOPED_TRACE(::testing::Message() << desc << " n=" << n << " group=" << group << " dim=" << dim);
    std::visit(
        [&](const auto& m) {
          ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, m, p.options());
          const index_t t = window - 1 - rng.uniform(0, 3);  // row within the window
          ism::HeadsView<const float> q1 = p.q.cview();
          q1.data = &p.q.view(t, 0, 0);
          q1.tokens = 1;
          Tensor<float> o1(1, p.heads, dim);
          std::vector<float> lse1(size_t(p.heads));
          AttentionOptions o;
          o.q_offset = p.q_offset + t;
          o.lse = lse1.data();
          ism::attention<float>(q1, p.k.cview(), p.v.cview(), o1.view, m, o);
          for (index_t h = 0; h < p.heads; ++h) {
            for (index_t d = 0; d < dim; ++d) ASSERT_NEAR(o1.view(0, h, d), p.out.view(t, h, d), 2e-6);
            ASSERT_NEAR(lse1[size_t(h)], p.lse[size_t(h * window + t)], 1e-5 * (1 + std::abs(lse1[size_t(h)])));
          }
        },
        mask);
  }
}

// Runs the kernel with the visit counter on and checks the (query tile, key
// tile) steps it took, per query head: never an Empty tile of the block map,
// and every tile that holds a visible pair. With no empty row in the window
// the block map is exact and the counts are equal; an empty row (padding, or
// a row whose keys all lie past the cache) can make the block map count a
// tile Partial that the kernel, which bounds the tile by the rows that see
// something, rightly skips.
template <class Mask>
void expect_visits(const Mask& m, Problem<float>& p, index_t n_q, index_t n_k, index_t off) {
  using ism::cpu::tile_k;
  using ism::cpu::tile_q;
  const ism::BlockMap map(m, n_q, n_k, off, tile_q, tile_k);
  const std::vector<ism::KeyRange> rows = ism::row_bounds(m, n_q, n_k, off);
  index_t needed = 0;
  bool empty_row = false;
  for (index_t t0 = 0; t0 < n_q; t0 += tile_q)
    for (index_t c = 0; c * tile_k < n_k; ++c) {
      bool seen = false;
      for (index_t r = t0; r < std::min(n_q, t0 + tile_q); ++r) {
        const ism::KeyRange k = rows[size_t(r)];
        empty_row = empty_row || k.empty();
        seen = seen || (k.begin < (c + 1) * tile_k && c * tile_k < k.end && !k.empty());
      }
      needed += seen;
    }
  std::atomic<index_t> visited{0};
  visited_tiles = &visited;
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, m, p.options());
  visited_tiles = nullptr;
  const auto& st = map.stats();
  const index_t heads = p.out.view.heads;
  SCOPED_TRACE(::testing::Message() << "block map: full " << st.full << " partial " << st.partial << " empty "
                                    << st.empty << "; tiles with a visible pair " << needed);
  EXPECT_LE(visited.load(), (st.full + st.partial) * heads);
  EXPECT_GE(visited.load(), needed * heads);
  if (!empty_row) {
    EXPECT_EQ(visited.load(), (st.full + st.partial) * heads);
  }
}

// Visited tiles against the block map, per query head, for prefill and the
// grouped decode layout, on every mask kind.
TEST(CpuKernel, EmptyTilesAreNeverVisited) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 12; ++it) {
    const index_t n_k = rng.uniform(1, 1500);
    const index_t n_q = it % 3 == 0 ? rng.uniform(1, std::min<index_t>(8, n_k)) : rng.uniform(1, n_k);
    const index_t off = rng.uniform(0, n_k - n_q), group = it % 2 ? 4 : 1;
    Problem<float> p(n_q, n_k, 2 * group, 2, 16, off, 0);
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(rng.uniform(0, 5)), n_k, rng, &desc);
    SCOPED_TRACE(::testing::Message() << desc << " n_q=" << n_q << " n_k=" << n_k << " off=" << off);
    std::visit([&](const auto& m) { expect_visits(m, p, n_q, n_k, off); }, mask);
  }
}

// Query rows may lie past the cache (q_offset + n_q > n_k, the mask's layout
// covering both): a row whose visible keys all lie past n_k sees nothing. Such
// rows once stretched a tile's key range past the cache, so the kernel packed
// key rows beyond n_k (and wrote before its key buffer). Prefill and decode
// layouts, several documents, against the reference and the visit counts.
TEST(CpuKernel, RowsPastTheCache) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 24; ++it) {
    const RandomLayout layout = random_layout(rng, 4, 6, 90);
    const ism::SegmentMask mask = layout.mask();
    const index_t len = mask.length();
    if (len < 2) continue;
    Sizes s;
    s.n_k = rng.uniform(1, len - 1);
    s.n_q = it % 3 == 0 ? rng.uniform(1, std::min<index_t>(4, len)) : rng.uniform(1, len);
    s.q_offset = rng.uniform(std::max<index_t>(0, s.n_k - s.n_q + 1), len - s.n_q);  // some row is past the cache
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * (it % 2 ? 4 : 1);
    s.dim = it % 4 == 0 ? 128 : rng.uniform(1, 40);
    s.layout = int(rng.uniform(0, 2));
    check_fp32(s, mask, "layout " + layout.describe(), rng, &worst);
    Problem<float> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, s.layout);
    expect_visits(mask, p, s.n_q, s.n_k, s.q_offset);
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// Continuous batching: sequences with different lengths, masks and offsets
// (some decoding, some prefilling) in one call, each against the reference.
TEST(CpuKernel, BatchMatchesPerSequenceReference) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t dim = 64;
  std::vector<Problem<float>> ps;
  ps.reserve(6);  // views point into the buffers: no reallocation
  std::vector<ism::SegmentMask> masks;
  for (int i = 0; i < 6; ++i) {
    const index_t n_k = rng.uniform(1, 700), n_q = i % 2 ? 1 : rng.uniform(1, n_k);
    ps.emplace_back(n_q, n_k, 4, 2, dim, n_k - n_q, int(rng.uniform(0, 2)));
    std::string desc;
    masks.push_back(std::get<ism::SegmentMask>(make_mask(MaskKind::Packed, n_k, rng, &desc)));
  }
  std::vector<ism::AttentionRequest<float, ism::SegmentMask>> reqs;
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].q.fill_random(rng);
    ps[i].k.fill_random(rng);
    ps[i].v.fill_random(rng);
    reqs.push_back({ps[i].q.cview(), ps[i].k.cview(), ps[i].v.cview(), ps[i].out.view, &masks[i], -1,
                    ps[i].lse.data()});
  }
  AttentionOptions o;
  o.threads = 2;
  ism::attention_batch(reqs, o);
  for (size_t i = 0; i < ps.size(); ++i) {
    Tensor<double> want(ps[i].n_q, 4, dim);
    std::vector<double> want_lse;
    reference(ps[i], masks[i], want, want_lse);
    EXPECT_LE(max_error(ps[i].out, want), fp32_tolerance(1.0, 1.0, dim, ps[i].n_k)) << "sequence " << i;  // |q|, |k| <= 1
    for (size_t j = 0; j < want_lse.size(); ++j)
      if (std::isinf(want_lse[j])) EXPECT_TRUE(std::isinf(ps[i].lse[j]));
      else EXPECT_NEAR(ps[i].lse[j], want_lse[j], 1e-5);
  }
}

// Bad input throws before anything is written.
TEST(CpuKernel, BadInputThrowsAndWritesNothing) {
  Problem<float> p(4, 4, 3, 2, 8, 0, 0);  // 3 query heads over 2 KV heads
  for (auto& x : p.out.buf) x = 7.f;
  EXPECT_THROW(ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, ism::causal_mask()),
               ism::invalid_argument);
  for (float x : p.out.buf) EXPECT_EQ(x, 7.f);
  Problem<float> ok(4, 4, 2, 2, 8, 0, 0);
  std::vector<ism::AttentionRequest<float, ism::CausalMask>> reqs;
  const ism::CausalMask causal;
  reqs.push_back({ok.q.cview(), ok.k.cview(), ok.v.cview(), ok.out.view, &causal, -1, nullptr});
  reqs.push_back({p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, &causal, -1, nullptr});
  for (auto& x : ok.out.buf) x = 7.f;
  EXPECT_THROW(ism::attention_batch(reqs), ism::invalid_argument);
  for (float x : ok.out.buf) EXPECT_EQ(x, 7.f);
}

}  // namespace
}  // namespace ism_test
