// SegmentMask::truncate(n): the layout cut at n is the layout built to length
// n (spans, documents, every pair of the rule, safe splits), and it goes on
// growing like one.
#include "common/testing.hpp"

namespace {

using ism::Attend;
using ism::index_t;
using ism::Segment;
using ism_test::BruteForceRule;
using ism_test::RandomLayout;
using ism_test::Rng;

// The layout built to length n: documents and segments past n dropped, the
// segment holding n - 1 ending at n, padding cut likewise.
RandomLayout cut(const RandomLayout& l, index_t n) {
  RandomLayout c;
  index_t pos = 0;
  for (const auto& doc : l.docs) {
    if (pos >= n) break;
    std::vector<Segment> segs;
    for (const Segment& s : doc) {
      if (pos >= n) break;
      segs.push_back({std::min(s.length, n - pos), s.attend});
      pos += segs.back().length;
    }
    c.docs.push_back(segs);
  }
  c.padding = std::min(l.padding, n - pos);
  return c;
}

void expect_same_mask(const ism::SegmentMask& got, const ism::SegmentMask& want) {
  ASSERT_EQ(got.length(), want.length());
  ASSERT_EQ(got.num_documents(), want.num_documents());
  ASSERT_EQ(got.spans().size(), want.spans().size());
  for (size_t s = 0; s < want.spans().size(); ++s) {
    const auto &g = got.spans()[s], &w = want.spans()[s];
    ASSERT_EQ(g.begin, w.begin) << "span " << s;
    ASSERT_EQ(g.end, w.end) << "span " << s;
    ASSERT_EQ(g.attend, w.attend) << "span " << s;
    ASSERT_EQ(g.doc, w.doc) << "span " << s;
  }
  for (index_t i = -1; i <= want.length(); ++i) {
    ASSERT_EQ(got.keys(i).begin, want.keys(i).begin) << "row " << i;
    ASSERT_EQ(got.keys(i).end, want.keys(i).end) << "row " << i;
  }
  ASSERT_EQ(got.safe_splits(), want.safe_splits());
}

// One growth call, the same on both masks (and on the layout they follow).
void grow_both(Rng& rng, ism::SegmentMask& a, ism::SegmentMask& b) {
  const Segment s{rng.uniform(1, 6), rng.coin() ? Attend::Causal : Attend::Bidirectional};
  switch (a.length() == 0 ? rng.uniform(0, 2) : rng.uniform(0, 3)) {
    case 0: a.append(s), b.append(s); break;
    case 1: a.append_document({s, s}), b.append_document({s, s}); break;
    case 2: a.append_padding(s.length), b.append_padding(s.length); break;
    default: a.extend_last(s.length), b.extend_last(s.length); break;
  }
}

// Every cut of random packed layouts (documents, both modes, padding).
TEST(MaskTruncate, EqualsTheLayoutBuiltToThatLength) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 150; ++iter) {
    const RandomLayout layout = ism_test::random_layout(rng, 3, 5, 9);
    SCOPED_TRACE(layout.describe());
    const ism::SegmentMask full = layout.mask();
    for (index_t n = 0; n <= full.length(); ++n) {
      SCOPED_TRACE(::testing::Message() << "truncate(" << n << ")");
      ism::SegmentMask m = full;
      EXPECT_EQ(&m.truncate(n), &m);
      const RandomLayout want = cut(layout, n);
      ism::SegmentMask built = want.mask();
      expect_same_mask(m, built);
      // The literal rule, pair by pair.
      const BruteForceRule rule(want);
      for (index_t i = 0; i < n; ++i)
        for (index_t j = 0; j < n; ++j) ASSERT_EQ(m.allowed(i, j), rule.allowed(i, j)) << i << ", " << j;
      // It grows on like the layout built to n (a new segment joins the last
      // document, or starts one after padding).
      for (int g = 0; g < 3; ++g) {
        grow_both(rng, m, built);
        expect_same_mask(m, built);
      }
      if (HasFatalFailure()) return;
    }
  }
}

TEST(MaskTruncate, CutsComposeAndTheFullLengthChangesNothing) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 100; ++iter) {
    const ism::SegmentMask full = ism_test::random_layout(rng, 3, 5, 9).mask();
    const index_t a = rng.uniform(0, full.length()), b = rng.uniform(0, a);
    ism::SegmentMask twice = full, once = full, same = full;
    twice.truncate(a).truncate(b);
    once.truncate(b);
    expect_same_mask(twice, once);
    same.truncate(full.length());
    expect_same_mask(same, full);
  }
}

// Inside a Bidirectional segment the cut shrinks what its earlier rows see,
// so a split that was unsafe at n is safe after truncate(n); cutting a Causal
// segment leaves every earlier row alone.
TEST(MaskTruncate, BidirectionalRowsSeeTheirNewEnd) {
  ism::SegmentMask m = ism::ism_mask({0, 6, 10, 15});  // B[0,6) C[6,10) B[10,15)
  EXPECT_FALSE(m.is_safe_split(12));
  ism::SegmentMask cut = m;
  cut.truncate(12);
  EXPECT_EQ(cut.keys(10).end, 12);
  EXPECT_EQ(cut.keys(11).end, 12);
  EXPECT_TRUE(cut.is_safe_split(12));
  for (index_t i = 0; i < 10; ++i) EXPECT_EQ(cut.keys(i).end, m.keys(i).end) << i;
  cut.truncate(8);
  for (index_t i = 0; i < 8; ++i) EXPECT_EQ(cut.keys(i).end, m.keys(i).end) << i;
  EXPECT_EQ(cut.spans().size(), 2u);
  cut.truncate(3);
  EXPECT_EQ(cut.keys(0).end, 3);
  cut.truncate(0);
  EXPECT_EQ(cut.length(), 0);
  EXPECT_EQ(cut.num_documents(), 0);
  EXPECT_TRUE(cut.spans().empty());
}

TEST(MaskTruncate, BadLengthThrowsAndChangesNothing) {
  ism::SegmentMask m = ism::packed_mask({{{4, Attend::Bidirectional}, {3, Attend::Causal}}, {{5, Attend::Causal}}}, 2);
  const ism::SegmentMask before = m;
  ism_test::expect_invalid([&] { m.truncate(-1); }, {"ism::SegmentMask::truncate", "n = -1", "[0, 14]"});
  ism_test::expect_invalid([&] { m.truncate(15); }, {"n = 15", "[0, 14]"});
  ism_test::expect_invalid([&] { m.truncate(std::numeric_limits<index_t>::min()); }, {"n = -9223372036854775808"});
  expect_same_mask(m, before);
  ism::SegmentMask empty;
  ism_test::expect_invalid([&] { empty.truncate(1); }, {"n = 1", "[0, 0]"});
  empty.truncate(0);
  EXPECT_EQ(empty.length(), 0);
}

}  // namespace
