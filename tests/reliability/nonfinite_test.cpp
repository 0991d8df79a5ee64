// NaN and Inf in Q, K or V stay confined to the output rows whose computation
// reads them, and those rows are honest (non-finite where the fp64 reference
// is), never a silent 0 or a plausible number. docs/GUARANTEES.md states the
// exact rule these tests check:
//   - q[t, h, :] reaches output row (t, h), if that row sees any key;
//   - k[j, g, :] and v[j, g, :] reach rows (t, h) with h / group == g whose
//     mask row sees key j;
//   - a NaN anywhere in q[t, h, :] or k[j, g, :] makes every element and the
//     LSE of a reached row NaN; a NaN in v[j, g, d] makes element d of a
//     reached row NaN and leaves its other elements and its LSE bit-identical;
//   - rows not reached are bit-identical to a run without the bad value.
#include <limits>
#include <vector>

#include "reliability/reliability.hpp"

namespace {

using ism::index_t;
using ism_test::Rng;
using ism_test::Tensor;

enum class Where { Q, K, V };
const char* name(Where w) { return w == Where::Q ? "q" : w == Where::K ? "k" : "v"; }

template <class T>
struct Case {
  ism_test::RandomLayout layout;
  ism::SegmentMask mask;
  index_t n_q, n_k, q_offset, heads, kv_heads, dim;
  Tensor<T> q, k, v;

  Case(Rng& rng, index_t n_q_, index_t n_k_, index_t off, index_t heads_, index_t kv_heads_, index_t dim_,
       ism_test::RandomLayout l)
      : layout(std::move(l)),
        mask(layout.mask()),
        n_q(n_q_),
        n_k(n_k_),
        q_offset(off),
        heads(heads_),
        kv_heads(kv_heads_),
        dim(dim_),
        q(n_q_, heads_, dim_, rng.coin()),
        k(n_k_, kv_heads_, dim_, rng.coin(), rng.uniform(0, 3)),
        v(n_k_, kv_heads_, dim_, rng.coin()) {
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
  }

  struct Result {
    Tensor<T> out;
    std::vector<float> lse;
  };
  Result run() const {
    Result r{Tensor<T>(n_q, heads, dim), std::vector<float>(size_t(heads * n_q))};
    ism::AttentionOptions opt;
    opt.q_offset = q_offset;
    opt.lse = r.lse.data();
    opt.threads = 1;  // bitwise comparisons across runs
    ism::attention<T>(q.cview(), k.cview(), v.cview(), r.out.view, mask, opt);
    return r;
  }
  bool sees_any(index_t t) const { return !ism::visible_keys(mask, q_offset + t, n_k).empty(); }
};

template <class T>
Case<T> random_case(Rng& rng) {
  auto layout = ism_test::random_layout(rng, 3, 5, 24);
  const index_t n = ism_test::BruteForceRule(layout).length();
  const index_t kv_heads = rng.uniform(1, 2), heads = kv_heads * rng.uniform(1, 3);
  // Prefill of a window, or a decode-sized block at the end (the split path).
  const index_t n_q = rng.coin() ? rng.uniform(1, n) : std::min<index_t>(n, rng.uniform(1, 2));
  const index_t off = rng.uniform(0, n - n_q);
  const index_t n_k = rng.uniform(std::min(n, off + n_q), n);
  return Case<T>(rng, n_q, n_k, off, heads, kv_heads, rng.uniform(1, 40), std::move(layout));
}

template <class T>
void check_confined(std::uint64_t seed, Where where, float bad, bool check_reached) {
  Rng rng(seed);
  for (int iter = 0; iter < 40; ++iter) {
    Case<T> c = random_case<T>(rng);
    SCOPED_TRACE(::testing::Message() << "iter " << iter << " layout " << c.layout.describe() << " n_q " << c.n_q
                                      << " n_k " << c.n_k << " q_offset " << c.q_offset << " heads " << c.heads
                                      << "/" << c.kv_heads << " dim " << c.dim);
    if (where != Where::Q && c.n_k == 0) continue;
    const auto clean = c.run();
    const index_t group = c.heads / c.kv_heads;
    // Poison one element; reached(t, h) says which output rows read it.
    const index_t d0 = rng.uniform(0, c.dim - 1);
    index_t t0 = 0, h0 = 0, j0 = 0, g0 = 0;
    if (where == Where::Q) {
      t0 = rng.uniform(0, c.n_q - 1);
      h0 = rng.uniform(0, c.heads - 1);
      c.q.view(t0, h0, d0) = T(bad);
    } else {
      j0 = rng.uniform(0, c.n_k - 1);
      g0 = rng.uniform(0, c.kv_heads - 1);
      (where == Where::K ? c.k : c.v).view(j0, g0, d0) = T(bad);
    }
    auto reached = [&](index_t t, index_t h) {
      if (where == Where::Q) return t == t0 && h == h0 && c.sees_any(t);
      return h / group == g0 && c.mask.allowed(c.q_offset + t, j0) && j0 < c.n_k;
    };
    SCOPED_TRACE(::testing::Message() << name(where) << " = " << bad << " at (" << (where == Where::Q ? t0 : j0)
                                      << ", " << (where == Where::Q ? h0 : g0) << ", " << d0 << ")");
    const auto dirty = c.run();
    Tensor<double> ref(c.n_q, c.heads, c.dim);
    std::vector<double> ref_lse(size_t(c.heads * c.n_q));
    ism::AttentionOptions ropt;
    ropt.q_offset = c.q_offset;
    ism::reference_attention_into<T, double, double>(c.q.cview(), c.k.cview(), c.v.cview(), ref.view, c.mask, ropt,
                                                     ref_lse.data());
    for (index_t t = 0; t < c.n_q; ++t)
      for (index_t h = 0; h < c.heads; ++h) {
        const size_t li = size_t(h * c.n_q + t);
        const float lse = dirty.lse[li];
        if (!reached(t, h)) {
          for (index_t d = 0; d < c.dim; ++d)
            ASSERT_EQ(std::memcmp(&dirty.out.view(t, h, d), &clean.out.view(t, h, d), sizeof(T)), 0)
                << "row (" << t << ", " << h << ") does not read the bad value but changed at d " << d;
          ASSERT_EQ(std::memcmp(&lse, &clean.lse[li], sizeof(float)), 0) << "lse of row (" << t << ", " << h << ")";
          continue;
        }
        if (!check_reached) continue;
        // A reached row: the kernel says what the fp64 reference says.
        for (index_t d = 0; d < c.dim; ++d) {
          const double got = double(float(dirty.out.view(t, h, d))), want = ref.view(t, h, d);
          ASSERT_TRUE(ism_rel::same_class(got, want, ism_rel::tolerance<T>(want, 1)))
              << "row (" << t << ", " << h << ") d " << d << ": kernel " << got << ", reference " << want;
        }
        ASSERT_TRUE(ism_rel::same_class(lse, ref_lse[li], 1e-3))
            << "lse of row (" << t << ", " << h << "): kernel " << lse << ", reference " << ref_lse[li];
        if (!std::isnan(bad)) continue;
        // The exact NaN rule of docs/GUARANTEES.md.
        if (where == Where::V) {
          for (index_t d = 0; d < c.dim; ++d) {
            if (d == d0) ASSERT_TRUE(std::isnan(float(dirty.out.view(t, h, d))));
            else ASSERT_EQ(std::memcmp(&dirty.out.view(t, h, d), &clean.out.view(t, h, d), sizeof(T)), 0) << d;
          }
          ASSERT_EQ(std::memcmp(&lse, &clean.lse[li], sizeof(float)), 0);
        } else {
          for (index_t d = 0; d < c.dim; ++d) ASSERT_TRUE(std::isnan(float(dirty.out.view(t, h, d)))) << d;
          ASSERT_TRUE(std::isnan(lse));
        }
      }
  }
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Rows that do not read the bad value are bit-identical.
TEST(NonFinite, NaNInQIsConfined) { ISM_SEEDED_TEST_BODY(seed); check_confined<float>(seed, Where::Q, kNaN, false); }
TEST(NonFinite, NaNInKIsConfined) { ISM_SEEDED_TEST_BODY(seed); check_confined<float>(seed, Where::K, kNaN, false); }
TEST(NonFinite, InfInQIsConfined) { ISM_SEEDED_TEST_BODY(seed); check_confined<float>(seed, Where::Q, kInf, false); }
TEST(NonFinite, InfInKIsConfined) { ISM_SEEDED_TEST_BODY(seed); check_confined<float>(seed, Where::K, kInf, false); }
TEST(NonFinite, MinusInfInKIsConfined) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<float>(seed, Where::K, -kInf, false);
}
TEST(NonFinite, NaNInKIsConfinedBf16) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<Eigen::bfloat16>(seed, Where::K, kNaN, false);
}
TEST(NonFinite, NaNInVIsConfined) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<float>(seed, Where::V, kNaN, false);
}
TEST(NonFinite, InfInVIsConfinedHalf) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<Eigen::half>(seed, Where::V, kInf, false);
}

// Rows that do read it say what the fp64 reference says (NaN, +-Inf or the
// finite value), and follow the exact NaN rule at the top of this file.
TEST(NonFinite, ReachedRowsAreHonestQ) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<float>(seed, Where::Q, kNaN, true);
  check_confined<float>(seed, Where::Q, kInf, true);
}
TEST(NonFinite, ReachedRowsAreHonestK) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<float>(seed, Where::K, kNaN, true);
  check_confined<float>(seed, Where::K, kInf, true);
  check_confined<float>(seed, Where::K, -kInf, true);
}
TEST(NonFinite, ReachedRowsAreHonestV) {
  ISM_SEEDED_TEST_BODY(seed);
  check_confined<float>(seed, Where::V, kNaN, true);
  check_confined<float>(seed, Where::V, kInf, true);
}

// --- kernel bugs these tests found, each as the smallest input that showed it -------
// (fixed in the kernel; kept as regressions)

struct Tiny {
  index_t n_q, n_k, dim;
  std::vector<float> q, k, v, out, lse;
  Tiny(index_t nq, index_t nk, index_t d)
      : n_q(nq), n_k(nk), dim(d), q(size_t(nq * d), 0.5f), k(size_t(nk * d), 0.25f), v(size_t(nk * d), 1.f),
        out(size_t(nq * d), 42.f), lse(size_t(nq), 42.f) {}
  template <class Mask>
  void run(const Mask& mask, index_t q_offset = -1) {
    ism::AttentionOptions opt;
    opt.lse = lse.data();
    opt.q_offset = q_offset;
    opt.threads = 1;
    ism::attention<float>(ism::token_major<const float>(q.data(), n_q, 1, dim),
                          ism::token_major<const float>(k.data(), n_k, 1, dim),
                          ism::token_major<const float>(v.data(), n_k, 1, dim),
                          ism::token_major(out.data(), n_q, 1, dim), mask, opt);
  }
};

// Row 2 sees keys 0..2 and its query holds a NaN: got output 0, LSE -inf
// ("saw no key"); must be NaN.
TEST(NonFiniteRegression, NaNQueryRowIsNotReportedEmpty) {
  Tiny p(4, 4, 4);
  p.q[2 * 4] = kNaN;
  p.run(ism::causal_mask());
  EXPECT_TRUE(std::isnan(p.out[2 * 4])) << p.out[2 * 4];
  EXPECT_TRUE(std::isnan(p.lse[2])) << p.lse[2];
}

// Decode over 4096 keys (the split path: several key chunks merged by LSE)
// with a NaN in key 5: got a finite output (the chunk was dropped); must be NaN.
TEST(NonFiniteRegression, DecodeMergeDoesNotDropANaNChunk) {
  Tiny p(1, 4096, 8);
  p.k[5 * 8] = kNaN;
  p.run(ism::causal_mask());
  EXPECT_TRUE(std::isnan(p.out[0])) << p.out[0];
  EXPECT_TRUE(std::isnan(p.lse[0])) << p.lse[0];
}

// Query row 3 sees keys 0..3; key 6 (a future token in the same key tile) has
// a NaN value: got NaN in element 1 of row 3; must be 1 (all visible values 1).
TEST(NonFiniteRegression, NaNInAMaskedValueDoesNotLeak) {
  Tiny p(1, 8, 4);
  p.v[6 * 4 + 1] = kNaN;
  p.run(ism::causal_mask(), 3);
  for (index_t d = 0; d < 4; ++d) EXPECT_EQ(p.out[size_t(d)], 1.f) << d;
}

// The reference itself once turned a NaN score into an "empty" row (output
// 0, LSE -infinity) because `score > max` is false for NaN.
TEST(NonFinite, ReferencePropagatesNaN) {
  Tensor<float> q(1, 1, 2), k(2, 1, 2), v(2, 1, 2);
  for (auto& x : k.buf) x = 1.f;
  for (auto& x : v.buf) x = 1.f;
  q.view(0, 0, 0) = kNaN;
  Tensor<double> out(1, 1, 2);
  double lse = 0;
  ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), out.view,
                                                       ism::causal_mask(), {}, &lse);
  EXPECT_TRUE(std::isnan(out.view(0, 0, 0)) && std::isnan(out.view(0, 0, 1)));
  EXPECT_TRUE(std::isnan(lse));
}

}  // namespace
