// Sliding windows over every mask kind, checked pair by pair against the
// literal rule (inner mask allows and |i - j| < window): the interval shape the
// kernels rely on, tiles, safe splits and the first key a cache must keep.
#include "ism/mask/kv_reuse.hpp"
#include "ism/mask/sliding_window.hpp"

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>

#include "common/testing.hpp"

namespace {

using ism::index_t;
using ism_test::BruteForceRule;
using ism_test::expect_invalid;
using ism_test::Rng;

// Kernels (the CUDA one too) take policies by value.
static_assert(std::is_trivially_copyable_v<ism::SlidingWindowMask<ism::CausalMask>>);
static_assert(std::is_trivially_copyable_v<ism::SlidingWindowMask<ism::PrefixMask>>);
static_assert(std::is_trivially_copyable_v<ism::SlidingWindowMask<ism::RowBoundsMask>>);
static_assert(std::is_trivially_copyable_v<ism::SlidingWindowMask<ism::QueryBounds>>);

// Windows worth trying on a layout of length n: 1, tiny, about half, n - 1,
// n, n + 1, far beyond, and no window at all.
index_t random_window(Rng& rng, index_t n) {
  switch (rng.uniform(0, 7)) {
    case 0: return 1;
    case 1: return rng.uniform(1, 4);
    case 2: return std::max<index_t>(1, n / 2);
    case 3: return std::max<index_t>(1, n - 1);
    case 4: return std::max<index_t>(1, n);
    case 5: return n + 1;
    case 6: return ism::unbounded;
    default: return rng.uniform(1, n + 3);
  }
}

bool in_band(index_t i, index_t j, index_t w) { return (i > j ? i - j : j - i) < w; }

// Every accessor of the windowed policy against `rule` on positions
// [-1, n]; both interval ends non-decreasing over the rows.
template <class Mask, class Rule>
void check_policy(const Mask& inner, index_t w, index_t n, const Rule& rule) {
  const auto m = ism::sliding_window(inner, w);
  SCOPED_TRACE(::testing::Message() << "window " << w << " n " << n);
  ASSERT_EQ(m.length(), inner.length());
  for (index_t i = -1; i <= n; ++i) {
    const ism::KeyRange r = m.keys(i);
    for (index_t j = -1; j <= n + 1; ++j) {
      const bool want = rule(i, j) && in_band(i, j, w);
      ASSERT_EQ(m.allowed(i, j), want) << "q " << i << " k " << j;
      ASSERT_EQ(r.contains(j), want) << "q " << i << " k " << j;
    }
  }
  // Rows past a layout see nothing and are not rows of the rule.
  const index_t rows = inner.length() == ism::unbounded ? n + 2 : n;
  for (index_t i = 1; i < rows; ++i) {
    ASSERT_LE(m.keys(i - 1).begin, m.keys(i).begin) << "row " << i;
    ASSERT_LE(m.keys(i - 1).end, m.keys(i).end) << "row " << i;
  }
}

TEST(SlidingWindow, MatchesTheRuleOnEveryMaskKind) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 3, 6, 20);
    SCOPED_TRACE(layout.describe());
    const BruteForceRule rule(layout);
    const index_t n = rule.length(), w = random_window(rng, n);
    const ism::SegmentMask m = layout.mask();
    check_policy(m, w, n, [&](index_t i, index_t j) { return rule.allowed(i, j); });
    check_policy(m.bounds(), w, n, [&](index_t i, index_t j) { return rule.allowed(i, j); });
    if (HasFatalFailure()) return;
  }
  for (int iter = 0; iter < 100; ++iter) {
    const index_t n = rng.uniform(1, 60), w = random_window(rng, n), p = rng.uniform(0, n);
    check_policy(ism::causal_mask(), w, n, [](index_t i, index_t j) { return i >= 0 && j >= 0 && j <= i; });
    check_policy(ism::full_mask(), w, n, [](index_t i, index_t j) { return i >= 0 && j >= 0; });
    check_policy(ism::prefix_mask(p), w, n,
                 [p](index_t i, index_t j) { return i >= 0 && j >= 0 && (j <= i || (i < p && j < p)); });
    if (HasFatalFailure()) return;
  }
}

TEST(SlidingWindow, DenseMaskAndTilesFollowTheWindow) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 150; ++iter) {
    const auto layout = ism_test::random_layout(rng, 2, 6, 30);
    SCOPED_TRACE(layout.describe());
    const BruteForceRule rule(layout);
    const index_t n = rule.length(), w = random_window(rng, n);
    const auto m = ism::sliding_window(layout.mask(), w);
    const index_t off = rng.uniform(0, n - 1), n_q = rng.uniform(1, n - off), n_k = rng.uniform(0, n);
    const auto d = ism::dense_mask<bool>(m, n_q, n_k, off);
    for (index_t r = 0; r < n_q; ++r)
      for (index_t c = 0; c < n_k; ++c)
        ASSERT_EQ(d(r, c), rule.allowed(off + r, c) && in_band(off + r, c, w)) << "row " << off + r << " key " << c;
    // Full and Empty tiles are exact (Partial only conservative across
    // padding rows, which see nothing, as without a window).
    const index_t tq = rng.uniform(1, 9), tk = rng.uniform(1, 9);
    const ism::BlockMap map(m, n_q, n_k, off, tq, tk);
    for (index_t tr = 0; tr < map.tile_rows(); ++tr)
      for (index_t tc = 0; tc < map.tile_cols(); ++tc) {
        index_t seen = 0, all = 0;
        for (index_t r = tr * tq; r < std::min(n_q, (tr + 1) * tq); ++r)
          for (index_t c = tc * tk; c < std::min(n_k, (tc + 1) * tk); ++c, ++all) seen += d(r, c);
        const ism::TileKind kind = map.kind(tr, tc);
        if (kind == ism::TileKind::Full) {
          ASSERT_EQ(seen, all) << "tile " << tr << "," << tc;
        }
        if (kind == ism::TileKind::Empty) {
          ASSERT_EQ(seen, 0) << "tile " << tr << "," << tc;
        }
        if (kind == ism::TileKind::Partial && layout.padding == 0) {
          ASSERT_TRUE(seen > 0 && seen < all) << "tile " << tr << "," << tc;
        }
      }
  }
}

// A causal window of w over N rows lets through exactly the band's pairs:
// sum over i of min(i + 1, w).
TEST(SlidingWindow, VisiblePairsOfACausalBand) {
  for (index_t n : {1, 7, 64, 65, 300})
    for (index_t w : {index_t(1), index_t(2), index_t(63), n, n + 5}) {
      index_t want = 0;
      for (index_t i = 0; i < n; ++i) want += std::min(i + 1, w);
      const ism::BlockMap map(ism::sliding_window(ism::causal_mask(), w), n, n, 0, 64, 64);
      EXPECT_EQ(map.stats().visible_pairs, want) << "n " << n << " w " << w;
    }
}

TEST(SlidingWindow, AWindowOfAWindowIsTheNarrowerOne) {
  const auto a = ism::sliding_window(ism::sliding_window(ism::causal_mask(), 5), 9);
  const auto b = ism::sliding_window(ism::sliding_window(ism::causal_mask(), 9), 5);
  static_assert(std::is_same_v<decltype(a), const ism::SlidingWindowMask<ism::CausalMask>>);
  EXPECT_EQ(a.window, 5);
  EXPECT_EQ(b.window, 5);
}

// Huge windows and positions near the top of index_t do not overflow.
TEST(SlidingWindow, ExtremeWindowsAndPositions) {
  const index_t big = ism::unbounded;
  const auto full = ism::sliding_window(ism::full_mask(), big);
  EXPECT_EQ(full.keys(0).begin, 0);
  EXPECT_EQ(full.keys(0).end, big);
  EXPECT_EQ(full.keys(big - 1).begin, 0);
  const auto one = ism::sliding_window(ism::full_mask(), 1);
  EXPECT_EQ(one.keys(big - 1).begin, big - 1);
  EXPECT_EQ(one.keys(big - 1).end, big);
  EXPECT_TRUE(one.allowed(big - 1, big - 1));
  EXPECT_FALSE(one.allowed(big - 1, 0));
  EXPECT_TRUE(ism::sliding_window(ism::causal_mask(), big).allowed(big - 1, 0));
  // p = unbounded is past every row of a mask without a layout.
  EXPECT_EQ(ism::first_needed_key(ism::sliding_window(ism::prefix_mask(3), 5), big), big - 4);
  EXPECT_EQ(ism::first_needed_key(ism::causal_mask(), big), 0);
  EXPECT_TRUE(ism::is_safe_split(ism::causal_mask(), big));
}

// is_safe_split over any policy, against its definition: no row before p sees
// a key at or after p. Over a SegmentMask without a window it is the member.
TEST(SlidingWindow, SafeSplitsFollowTheCombinedRule) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 3, 6, 16);
    SCOPED_TRACE(layout.describe());
    const BruteForceRule rule(layout);
    const index_t n = rule.length(), w = random_window(rng, n);
    const ism::SegmentMask inner = layout.mask();
    const auto m = ism::sliding_window(inner, w);
    std::vector<index_t> want;
    for (index_t p = 0; p <= n; ++p) {
      bool safe = true;
      for (index_t i = 0; i < p && safe; ++i)
        for (index_t j = p; j < n && safe; ++j) safe = !(rule.allowed(i, j) && in_band(i, j, w));
      ASSERT_EQ(ism::is_safe_split(m, p), safe) << "p " << p << " window " << w;
      ASSERT_EQ(ism::is_safe_split(inner, p), inner.is_safe_split(p)) << "p " << p;
      // A window only removes keys: every split the layout allows stays.
      if (inner.is_safe_split(p)) {
        ASSERT_TRUE(safe) << "p " << p;
      }
      // Window 1: each row sees itself alone, so every position is a split.
      if (w == 1) {
        ASSERT_TRUE(safe) << "p " << p;
      }
      if (safe) want.push_back(p);
    }
    ASSERT_EQ(ism::safe_splits(m, n), want);
  }
}

// first_needed_key(mask, p): no row at or after p, in the layout or appended
// to it later, sees a key before it; and it is tight (row p sees it) when row
// p exists and sees anything.
TEST(SlidingWindow, FirstNeededKeyAgainstBruteForce) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    // The layout, then more tokens appended as a dialogue grows: a turn of
    // the same document, a new document, padding, or a longer last segment.
    const auto layout = ism_test::random_layout(rng, 2, 5, 16);
    const ism::SegmentMask now = layout.mask();
    const index_t n = now.length();
    ism::SegmentMask grown = now;
    const index_t extra = rng.uniform(1, 16);
    const ism::Attend mode = rng.coin() ? ism::Attend::Causal : ism::Attend::Bidirectional;
    switch (rng.uniform(0, 3)) {
      case 0: grown.append({extra, mode}); break;
      case 1: grown.append_document({{extra, mode}}); break;
      case 2: grown.append_padding(extra); break;
      default: grown.extend_last(extra); break;
    }
    SCOPED_TRACE(layout.describe() + " grows by " + std::to_string(extra));
    const index_t w = random_window(rng, n);
    const auto m = ism::sliding_window(now, w);
    const auto g = ism::sliding_window(grown, w);
    for (index_t p = 0; p <= n; ++p) {
      const index_t f = ism::first_needed_key(m, p);
      ASSERT_LE(f, p);
      ASSERT_GE(f, 0);
      for (index_t i = p; i < grown.length(); ++i)
        for (index_t j = 0; j < f; ++j) ASSERT_FALSE(g.allowed(i, j)) << "row " << i << " sees " << j << " < " << f;
      if (p < n && !m.keys(p).empty()) {
        ASSERT_EQ(f, m.keys(p).begin) << "p " << p;
      }
      // The inner mask's own bound is the window's with an unbounded window.
      ASSERT_EQ(ism::first_needed_key(now, p), ism::first_needed_key(ism::sliding_window(now, ism::unbounded), p));
    }
  }
  // Masks without a layout: a causal band of w needs the last w - 1 keys.
  for (index_t w : {1, 2, 5, 100})
    for (index_t p : {0, 1, 4, 5, 6, 1000})
      EXPECT_EQ(ism::first_needed_key(ism::sliding_window(ism::causal_mask(), w), p), std::max<index_t>(0, p - w + 1))
          << "w " << w << " p " << p;
  EXPECT_EQ(ism::first_needed_key(ism::causal_mask(), 1000), 0);
}

TEST(SlidingWindow, BadInputIsRejected) {
  for (index_t w : {index_t(0), index_t(-1), index_t(-1000), std::numeric_limits<index_t>::min()}) {
    const std::string value = "window = " + std::to_string(w);
    expect_invalid([&] { ism::sliding_window(ism::causal_mask(), w); }, {"ism::sliding_window", value.c_str()});
    expect_invalid([&] { ism::sliding_window(ism::sliding_window(ism::causal_mask(), 4), w); },
                   {"ism::sliding_window", value.c_str()});
    expect_invalid([&] { ism::Dialogue d(ism::DialogueMask::Ism, w); }, {"ism::Dialogue", value.c_str()});
  }
  const auto m = ism::sliding_window(ism::ism_mask({0, 3, 7}), 2);
  expect_invalid([&] { ism::is_safe_split(m, 8); }, {"ism::is_safe_split", "p = 8", "[0, 7]"});
  expect_invalid([&] { ism::is_safe_split(m, -1); }, {"ism::is_safe_split", "p = -1"});
  expect_invalid([&] { ism::first_needed_key(m, 8); }, {"ism::first_needed_key", "p = 8"});
  expect_invalid([&] { ism::first_needed_key(ism::causal_mask(), -3); }, {"ism::first_needed_key", "p = -3"});
  expect_invalid([&] { ism::safe_splits(m, 9); }, {"ism::safe_splits", "p = 9"});
}

}  // namespace
