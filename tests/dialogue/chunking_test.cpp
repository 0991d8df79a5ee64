// Chunked prefill: chunks never end inside a Bidirectional segment, chunked
// attention equals the whole prefill, a cut inside a segment would not, and an
// oversized segment is reported by name.
#include "ism/dialogue/chunking.hpp"

#include <algorithm>
#include <string>

#include "dialogue/dialogue_testing.hpp"

namespace {

using ism::index_t;
using namespace ism_test;

// The chunk rule checked on the spans directly, not through is_safe_split.
bool ends_inside_bidirectional(const ism::SegmentMask& m, index_t p) {
  for (const auto& s : m.spans())
    if (s.attend == ism::Attend::Bidirectional && !s.is_padding() && s.begin < p && p < s.end) return true;
  return false;
}

TEST(ChunkedPrefill, ChunksRespectSegmentsAndMatchTheWholePrefill) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  int planned = 0;
  for (int iter = 0; iter < 150; ++iter) {
    const RandomLayout layout = random_layout(rng, 2, 6, 20);
    SCOPED_TRACE(layout.describe());
    const ism::SegmentMask mask = layout.mask();
    const index_t n = mask.length();
    // A random safe start and stop (the cache before start is complete).
    const auto splits = mask.safe_splits();
    index_t start = splits[size_t(rng.uniform(0, index_t(splits.size()) - 1))];
    index_t stop = splits[size_t(rng.uniform(0, index_t(splits.size()) - 1))];
    if (start > stop) std::swap(start, stop);
    const index_t max_chunk = rng.uniform(1, 24);
    index_t longest = 0;  // longest Bidirectional segment inside the prefill
    for (const auto& s : mask.spans())
      if (s.attend == ism::Attend::Bidirectional && !s.is_padding() && s.begin >= start && s.end <= stop)
        longest = std::max(longest, s.length());
    if (longest > max_chunk) {
      EXPECT_THROW(ism::plan_prefill(mask, start, stop - start, max_chunk), ism::oversized_segment);
      continue;
    }
    const auto chunks = ism::plan_prefill(mask, start, stop - start, max_chunk);
    ++planned;
    index_t pos = start;
    for (const auto& ch : chunks) {
      EXPECT_EQ(ch.begin, pos);
      EXPECT_GT(ch.size(), 0);
      EXPECT_LE(ch.size(), max_chunk);
      EXPECT_FALSE(ends_inside_bidirectional(mask, ch.end)) << "chunk ends at " << ch.end;
      pos = ch.end;
    }
    EXPECT_EQ(pos, stop);
    // Greedy is optimal: no plan with fewer chunks exists. A lower bound that
    // is tight here: every chunk but the last could not reach one more split.
    for (size_t i = 0; i + 1 < chunks.size(); ++i)
      for (index_t p = chunks[i].end + 1; p <= std::min(stop, chunks[i].begin + max_chunk); ++p)
        EXPECT_TRUE(ends_inside_bidirectional(mask, p)) << "chunk " << i << " could have reached " << p;

    // Chunked attention equals the whole prefill, row for row.
    const index_t kv_heads = rng.uniform(1, 2), q_heads = kv_heads * rng.uniform(1, 2), dim = rng.uniform(1, 19);
    Tensor<float> q(n, q_heads, dim), k(n, kv_heads, dim), v(n, kv_heads, dim), chunked(n, q_heads, dim),
        whole(n, q_heads, dim);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    for (const auto& ch : chunks) attend_rows(q, k, v, chunked, mask, ch.begin, ch.size(), ch.end);
    attend_rows(q, k, v, whole, mask, start, stop - start, stop);
    EXPECT_LE(max_abs_diff(chunked, whole, start, stop - start), 2e-6);
  }
  EXPECT_GT(planned, 30);
}

TEST(ChunkedPrefill, CuttingInsideASegmentWouldChangeTheResult) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 20; ++iter) {
    // query [0, B) Bidirectional, answer [B, N) Causal; cut the query at c.
    const index_t b = rng.uniform(2, 30), n = b + rng.uniform(1, 10), c = rng.uniform(1, b - 1), dim = rng.uniform(2, 16);
    const auto mask = ism::ism_mask({0, b, n});
    EXPECT_FALSE(mask.is_safe_split(c));
    Tensor<float> q(n, 2, dim), k(n, 1, dim), v(n, 1, dim), cut(n, 2, dim), whole(n, 2, dim);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    attend_rows(q, k, v, whole, mask, 0, n, n);
    // What a mask-blind engine would do: chunk [0, c) then [c, n).
    attend_rows(q, k, v, cut, mask, 0, c, c);
    attend_rows(q, k, v, cut, mask, c, n - c, n);
    EXPECT_GT(max_abs_diff(cut, whole, 0, c), 1e-3) << "rows before the cut should have missed keys";
    EXPECT_LE(max_abs_diff(cut, whole, c, n - c), 2e-6);  // later rows had every key
    // The planner refuses that cut: with max_chunk = c the query does not fit.
    EXPECT_THROW(ism::plan_prefill(mask, 0, n, c), ism::oversized_segment);
  }
}

TEST(ChunkedPrefill, OversizedSegmentErrorNamesSegmentAndLength) {
  // system [0,4) B, query [4,17) B (13 tokens), answer [17,20) C
  const auto mask = ism::segment_mask(
      {{4, ism::Attend::Bidirectional}, {13, ism::Attend::Bidirectional}, {3, ism::Attend::Causal}});
  try {
    ism::plan_prefill(mask, 0, 20, 8);
    FAIL() << "no exception";
  } catch (const ism::oversized_segment& e) {
    EXPECT_EQ(e.segment(), 1);
    EXPECT_EQ(e.begin(), 4);
    EXPECT_EQ(e.end(), 17);
    EXPECT_EQ(e.length(), 13);
    EXPECT_EQ(e.max_chunk(), 8);
    const std::string msg = e.what();
    for (const char* part : {"segment 1", "[4, 17)", "length 13", "max_chunk = 8"})
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  }
  // It is an std::invalid_argument for callers that catch the family.
  EXPECT_THROW(ism::plan_prefill(mask, 0, 20, 8), std::invalid_argument);
  // With room for it, one chunk per reachable safe split.
  const auto chunks = ism::plan_prefill(mask, 0, 20, 13);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].end, 4);
  EXPECT_EQ(chunks[1].end, 17);
  EXPECT_EQ(chunks[2].end, 20);
}

TEST(ChunkedPrefill, RejectsUnsafeEndsAndBadArguments) {
  const auto mask = ism::ism_mask({0, 6, 9, 15});
  auto message_of = [&](index_t start, index_t count, index_t c) {
    try {
      ism::plan_prefill(mask, start, count, c);
    } catch (const ism::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_NE(message_of(3, 6, 8).find("start = 3"), std::string::npos);
  EXPECT_NE(message_of(0, 12, 8).find("start + count = 12"), std::string::npos);
  EXPECT_NE(message_of(0, 6, 0).find("max_chunk = 0"), std::string::npos);
  EXPECT_NE(message_of(0, -1, 4).find("count = -1"), std::string::npos);
  EXPECT_NE(message_of(9, 7, 8).find("layout length 15"), std::string::npos);
  EXPECT_TRUE(ism::plan_prefill(mask, 9, 0, 4).empty());
}

TEST(ChunkedPrefill, DialogueOverloadPlansThePendingStep) {
  ism::Dialogue d;
  d.system_prompt(5).add_query(7).append_answer(3);
  d.commit(5);
  const auto chunks = ism::plan_prefill(d, 8);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].begin, 5);
  EXPECT_EQ(chunks[0].end, 13);  // the furthest safe split in reach: answers are Causal
  EXPECT_EQ(chunks[1].end, 15);
  // The prefix-LM of the same script is one 12-token prefix: it cannot chunk at 8.
  ism::Dialogue p(ism::DialogueMask::MultiTurnPrefixLM);
  p.system_prompt(5).add_query(7).append_answer(3);
  EXPECT_THROW(ism::plan_prefill(p, 8), ism::oversized_segment);
}

}  // namespace
