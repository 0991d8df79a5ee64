// The mask rule of docs/DESIGN.md section 1, checked pair by pair against the literal
// definition on random layouts, for every accessor and materialiser.
#include "common/testing.hpp"

namespace {

using ism::Attend;
using ism::index_t;
using ism_test::BruteForceRule;
using ism_test::Rng;

template <class Scalar>
void expect_dense_matches(const ism::SegmentMask& m, const BruteForceRule& rule, index_t n_q, index_t n_k,
                          index_t off) {
  const auto d = ism::dense_mask<Scalar>(m, n_q, n_k, off);
  ASSERT_EQ(d.rows(), n_q);
  ASSERT_EQ(d.cols(), n_k);
  for (index_t r = 0; r < n_q; ++r)
    for (index_t c = 0; c < n_k; ++c) {
      const bool visible = rule.allowed(off + r, c);
      if constexpr (std::is_same_v<Scalar, bool>) {
        ASSERT_EQ(d(r, c), visible) << "row " << off + r << " key " << c;
      } else {
        const float x = static_cast<float>(d(r, c));
        if (visible) ASSERT_EQ(x, 0.f) << "row " << off + r << " key " << c;
        else ASSERT_TRUE(std::isinf(x) && x < 0) << "row " << off + r << " key " << c;
      }
    }
}

TEST(MaskRule, MatchesBruteForceOnRandomLayouts) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 1200; ++iter) {
    const auto layout = ism_test::random_layout(rng);
    SCOPED_TRACE(layout.describe());
    const ism::SegmentMask m = layout.mask();
    const BruteForceRule rule(layout);
    const index_t n = rule.length();
    ASSERT_EQ(m.length(), n);
    for (index_t i = 0; i < n; ++i) {
      const ism::KeyRange r = m.keys(i);
      for (index_t j = 0; j < n; ++j) {
        ASSERT_EQ(m.allowed(i, j), rule.allowed(i, j)) << "q " << i << " k " << j;
        ASSERT_EQ(r.contains(j), rule.allowed(i, j)) << "q " << i << " k " << j;
      }
      if (i > 0) {  // both ends non-decreasing: what the tile logic relies on
        ASSERT_LE(m.keys(i - 1).begin, r.begin);
        ASSERT_LE(m.keys(i - 1).end, r.end);
      }
    }
    // A random window of query rows against a random prefix of the keys.
    const index_t off = rng.uniform(0, n - 1);
    const index_t n_q = rng.uniform(0, n - off);
    const index_t n_k = rng.uniform(0, n);
    if (iter % 4 == 0) {
      expect_dense_matches<bool>(m, rule, n_q, n_k, off);
      expect_dense_matches<float>(m, rule, n_q, n_k, off);
    } else if (iter % 4 == 1) {
      expect_dense_matches<double>(m, rule, n_q, n_k, off);
    } else if (iter % 4 == 2) {
      expect_dense_matches<Eigen::half>(m, rule, n_q, n_k, off);
    } else {
      expect_dense_matches<Eigen::bfloat16>(m, rule, n_q, n_k, off);
    }
    const auto bounds = ism::row_bounds(m, n_q, n_k, off);
    ASSERT_EQ(index_t(bounds.size()), n_q);
    for (index_t r = 0; r < n_q; ++r)
      for (index_t c = 0; c < n_k; ++c)
        ASSERT_EQ(bounds[size_t(r)].contains(c), rule.allowed(off + r, c));
  }
}

TEST(MaskRule, IsmAlternatesModesFromFirst) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<index_t> b{0};
    const index_t turns = rng.uniform(1, 10);
    for (index_t t = 0; t < turns; ++t) b.push_back(b.back() + rng.uniform(1, 20));
    const Attend first = rng.coin() ? Attend::Causal : Attend::Bidirectional;
    ism_test::RandomLayout l;
    l.docs.emplace_back();
    Attend mode = first;
    for (size_t i = 1; i < b.size(); ++i) {
      l.docs[0].push_back({b[i] - b[i - 1], mode});
      mode = mode == Attend::Causal ? Attend::Bidirectional : Attend::Causal;
    }
    const auto m = ism::ism_mask(b, first);
    const BruteForceRule rule(l);
    for (index_t i = 0; i < b.back(); ++i)
      for (index_t j = 0; j < b.back(); ++j) ASSERT_EQ(m.allowed(i, j), rule.allowed(i, j));
  }
}

// Dense bool matrices of two masks over the same window.
template <class A, class B>
void expect_same_mask(const A& a, const B& b, index_t n) {
  EXPECT_EQ(ism::dense_mask<bool>(a, n, n), ism::dense_mask<bool>(b, n, n));
}

TEST(MaskRule, SpecialCasesAgree) {
  for (index_t n : {1, 2, 7, 64, 100}) {
    SCOPED_TRACE(n);
    expect_same_mask(ism::causal_mask(), ism::segment_mask({{n, Attend::Causal}}), n);
    expect_same_mask(ism::full_mask(), ism::segment_mask({{n, Attend::Bidirectional}}), n);
    for (index_t p : {index_t(1), n / 2, n - 1}) {
      if (p < 1 || p >= n) continue;
      const auto two = ism::segment_mask({{p, Attend::Bidirectional}, {n - p, Attend::Causal}});
      expect_same_mask(ism::prefix_mask(p), two, n);
      // ISM whose only query segment is the prefix is prefix-LM.
      expect_same_mask(ism::prefix_mask(p), ism::ism_mask({0, p, n}), n);
    }
    expect_same_mask(ism::prefix_mask(0), ism::causal_mask(), n);
    expect_same_mask(ism::prefix_mask(n), ism::full_mask(), n);
  }
}

TEST(MaskRule, NeighbouringBidirectionalSegmentsStaySeparate) {
  const auto m = ism::segment_mask({{3, Attend::Bidirectional}, {3, Attend::Bidirectional}});
  EXPECT_FALSE(m.allowed(0, 3));  // the first does not see the second
  EXPECT_TRUE(m.allowed(3, 5));
  EXPECT_TRUE(m.allowed(5, 0));
}

TEST(MaskRule, DocumentsNeverSeeEachOther) {
  const auto m = ism::packed_mask({{{4, Attend::Bidirectional}}, {{2, Attend::Causal}, {3, Attend::Bidirectional}}}, 2);
  for (index_t i = 4; i < 9; ++i)
    for (index_t j = 0; j < 4; ++j) EXPECT_FALSE(m.allowed(i, j));
  for (index_t i = 9; i < 11; ++i) EXPECT_TRUE(m.keys(i).empty()) << "padding row " << i;
  EXPECT_EQ(m.num_documents(), 2);
  EXPECT_EQ(m.document_of(10), -1);
}

// --- growth ------------------------------------------------------------------

TEST(MaskGrowth, AppendAndExtendEqualRebuilding) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 200; ++iter) {
    ism::SegmentMask grown;
    std::vector<ism::Segment> segs;
    const int steps = int(rng.uniform(1, 12));
    for (int s = 0; s < steps; ++s) {
      if (!segs.empty() && rng.coin(0.4)) {
        const index_t n = rng.uniform(1, 5);
        grown.extend_last(n);
        segs.back().length += n;
      } else {
        const ism::Segment seg{rng.uniform(1, 9), rng.coin() ? Attend::Causal : Attend::Bidirectional};
        grown.append(seg);
        segs.push_back(seg);
      }
      const auto built = ism::segment_mask(segs);
      ASSERT_EQ(grown.length(), built.length());
      for (index_t i = 0; i < built.length(); ++i) {
        ASSERT_EQ(grown.keys(i).begin, built.keys(i).begin);
        ASSERT_EQ(grown.keys(i).end, built.keys(i).end);
      }
    }
  }
}

// --- KV-cache reuse: the reason ISM exists -------------------------------------

// Brute force: no row before p sees a key at or after p.
bool brute_safe_split(const BruteForceRule& rule, index_t p) {
  for (index_t i = 0; i < p; ++i)
    for (index_t j = p; j < rule.length(); ++j)
      if (rule.allowed(i, j)) return false;
  return true;
}

TEST(KvReuse, SafeSplitsMatchBruteForce) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 2, 6, 12);
    SCOPED_TRACE(layout.describe());
    const auto m = layout.mask();
    const BruteForceRule rule(layout);
    std::vector<index_t> expect;
    for (index_t p = 0; p <= rule.length(); ++p) {
      ASSERT_EQ(m.is_safe_split(p), brute_safe_split(rule, p)) << "p = " << p;
      if (brute_safe_split(rule, p)) expect.push_back(p);
    }
    ASSERT_EQ(m.safe_splits(), expect);
  }
}

TEST(KvReuse, IsmRowsBeforeEverySegmentBoundarySeeNothingAfterIt) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<index_t> b{0};
    const index_t turns = rng.uniform(2, 12);
    for (index_t t = 0; t < turns; ++t) b.push_back(b.back() + rng.uniform(1, 30));
    const auto m = ism::ism_mask(b);
    for (size_t s = 1; s + 1 < b.size(); ++s) {
      const index_t p = b[s];
      for (index_t i = 0; i < p; ++i) ASSERT_LE(m.keys(i).end, p) << "row " << i << " boundary " << p;
      ASSERT_TRUE(m.is_safe_split(p));
    }
  }
}

// A multi-turn prefix-LM makes the whole history its prefix; when the next
// round arrives the prefix grows, so rows of earlier rounds see new keys.
TEST(KvReuse, MultiTurnPrefixLmBreaksReuse) {
  const std::vector<index_t> b{0, 5, 9, 14, 20};  // q1 a1 q2 a2
  const auto ism_m = ism::ism_mask(b);
  const auto round1 = ism::prefix_mask(5);   // history = q1, answer a1 causal
  const auto round2 = ism::prefix_mask(14);  // history = q1 a1 q2
  bool changed = false;
  for (index_t i = 0; i < 9; ++i)
    for (index_t j = 0; j < 20; ++j) {
      changed |= round1.allowed(i, j) != round2.allowed(i, j);
      // ISM: rows of round 1 are the same before and after round 2 exists.
      EXPECT_EQ(ism_m.allowed(i, j), ism::ism_mask({0, 5, 9}).allowed(i, j) && j < 9);
    }
  EXPECT_TRUE(changed);
  EXPECT_FALSE(round2.allowed(0, 10) == round1.allowed(0, 10));
}

TEST(KvReuse, AppendingARoundNeverChangesEarlierAttention) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t heads = 2, dim = 8;
  for (int iter = 0; iter < 20; ++iter) {
    std::vector<index_t> b{0};
    const index_t turns = rng.uniform(2, 8);
    for (index_t t = 0; t < turns; ++t) b.push_back(b.back() + rng.uniform(1, 12));
    const index_t n = b.back();
    ism_test::Tensor<float> q(n, heads, dim), k(n, heads, dim), v(n, heads, dim);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    // Attention of the history alone (all but the last round), then of everything.
    const index_t p = b[b.size() - 2];
    std::vector<index_t> hist(b.begin(), b.end() - 1);
    ism_test::Tensor<double> o_hist(p, heads, dim), o_all(n, heads, dim), o_pref_hist(p, heads, dim),
        o_pref_all(n, heads, dim);
    auto head = [&](const ism_test::Tensor<float>& t) {
      auto view = t.cview();
      view.tokens = p;
      return view;
    };
    ism::reference_attention_into<float, double, double>(head(q), head(k), head(v), o_hist.view,
                                                         ism::ism_mask(hist), {}, nullptr);
    ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), o_all.view,
                                                         ism::ism_mask(b), {}, nullptr);
    // Multi-turn prefix-LM: the prefix is all of the history seen so far.
    ism::reference_attention_into<float, double, double>(head(q), head(k), head(v), o_pref_hist.view,
                                                         ism::prefix_mask(p), {}, nullptr);
    ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), o_pref_all.view,
                                                         ism::prefix_mask(n), {}, nullptr);
    bool prefix_changed = false;
    for (index_t t = 0; t < p; ++t)
      for (index_t h = 0; h < heads; ++h)
        for (index_t d = 0; d < dim; ++d) {
          ASSERT_EQ(o_hist.view(t, h, d), o_all.view(t, h, d)) << "ISM row " << t << " changed";
          prefix_changed |= o_pref_hist.view(t, h, d) != o_pref_all.view(t, h, d);
        }
    EXPECT_TRUE(prefix_changed) << "a multi-turn prefix-LM should change earlier rows";
  }
}

}  // namespace
