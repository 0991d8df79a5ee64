// Dialogues under a sliding window: reuse, safe splits and chunk planning
// follow the combined rule, and an engine that drops the cache pages before
// Dialogue::first_needed_key() after every step (PagedKVCache::drop_front)
// still computes the whole conversation's attention, with memory bounded by
// the window, while the pages it gave back are rewritten by another sequence.
#include "ism/dialogue/chunking.hpp"
#include "ism/dialogue/dialogue.hpp"
#include "ism/kv/paged_cache.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "dialogue/dialogue_testing.hpp"

namespace {

using ism::Dialogue;
using ism::DialogueMask;
using ism::index_t;
using namespace ism_test;

index_t random_window(Rng& rng) {
  switch (rng.uniform(0, 4)) {
    case 0: return 1;
    case 1: return ism::unbounded;
    default: return rng.uniform(2, 40);
  }
}

// A random script: optional system prompt, rounds of a query and an answer
// decoded a token (or a few) at a time. Applied one event at a time by `step`.
template <class Step>
void play_script(Rng& rng, Dialogue& d, index_t max_len, Step&& step) {
  if (rng.coin(0.3)) {
    d.system_prompt(rng.uniform(1, max_len));
    step();
  }
  for (index_t r = rng.uniform(1, 4); r > 0; --r) {
    d.add_query(rng.uniform(1, max_len));
    step();
    for (index_t a = rng.uniform(1, max_len); a > 0;) {
      const index_t n = std::min(a, rng.coin(0.7) ? index_t(1) : rng.uniform(1, 5));
      d.append_answer(n);
      step();
      a -= n;
    }
  }
}

TEST(WindowDialogue, PagedEngineDroppingPagesEqualsTheWholeConversation) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  int dropped_some = 0;
  for (int iter = 0; iter < 24; ++iter) {
    const DialogueMask kind = DialogueMask(rng.uniform(0, 2));
    const index_t w = random_window(rng), page_size = rng.uniform(1, 8), max_len = 16;
    const index_t kv_heads = rng.uniform(1, 2), q_heads = kv_heads * rng.uniform(1, 2), dim = rng.uniform(1, 20);
    SCOPED_TRACE(::testing::Message() << ism::to_string(kind) << " window " << w << " page_size " << page_size);
    // Whole-conversation buffers sized for the longest script.
    const index_t cap = 4 * 6 * max_len;
    Tensor<float> q(cap, q_heads, dim), k(cap, kv_heads, dim), v(cap, kv_heads, dim), out(cap, q_heads, dim);
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
    const index_t pages = 2 * cap / page_size + 4;
    Tensor<float> poison(pages * page_size, kv_heads, dim);
    for (float& x : poison.buf) x = std::numeric_limits<float>::quiet_NaN();
    ism::PagedKVCache<float> cache(pages, page_size, kv_heads, dim);
    const index_t seq = cache.add_sequence(), other = cache.add_sequence();
    Dialogue d(kind, w);
    ASSERT_EQ(d.window(), w);
    index_t max_held = 0;
    auto step = [&] {
      const ism::DialogueStep s = d.pending();
      const auto mask = d.attention_mask();
      // What the engine dropped is never what the step reads from the cache.
      if (s.reused > 0) {
        ASSERT_LE(cache.dropped_tokens(seq), ism::first_needed_key(mask, s.reused)) << "step at " << s.reused;
      }
      cache.truncate(other, 0);
      cache.truncate(seq, s.reused);
      cache.append(seq, rows(k.cview(), s.q_offset, s.n_q), rows(v.cview(), s.q_offset, s.n_q));
      // The other sequence takes every free page, those seq gave back
      // included, and fills them with NaN before seq's attention runs.
      const index_t fill = cache.free_pages() * page_size;
      cache.append(other, rows(poison.cview(), 0, fill), rows(poison.cview(), 0, fill));
      ism::attention<float>(rows(q.cview(), s.q_offset, s.n_q), cache.view(seq), rows(out.view, s.q_offset, s.n_q),
                            mask, s.options());
      d.commit();
      const index_t before = cache.held_pages(seq);
      const index_t released = cache.drop_front(seq, d.first_needed_key());
      ASSERT_EQ(cache.held_pages(seq), before - released);
      dropped_some += released > 0;
      max_held = std::max(max_held, cache.held_pages(seq));
      // Held pages cover the window and one partial page at each end.
      if (w != ism::unbounded) {
        ASSERT_LE(cache.held_pages(seq), (w - 1) / page_size + 2) << "length " << d.length();
      }
    };
    play_script(rng, d, max_len, step);
    if (HasFatalFailure()) return;
    const index_t n = d.length();
    Tensor<double> ref(n, q_heads, dim);
    ism::reference_attention_into<float, double, double>(rows(q.cview(), 0, n), rows(k.cview(), 0, n),
                                                         rows(v.cview(), 0, n), ref.view,
                                                         ism::sliding_window(d.mask(), w), {}, nullptr);
    EXPECT_LE(max_abs_diff(out, ref, 0, n), 2e-5) << "length " << n << ", at most " << max_held << " pages held";
  }
  EXPECT_GT(dropped_some, 0);
}

// Reuse under a window: an ISM or causal dialogue reuses its whole cache at
// every step; a multi-turn prefix-LM reuses nothing on a new query unless the
// window is 1 (every row then sees itself alone, so no row ever changes).
TEST(WindowDialogue, ReuseFollowsTheCombinedRule) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 60; ++iter) {
    const DialogueMask kind = DialogueMask(rng.uniform(0, 2));
    const index_t w = random_window(rng);
    SCOPED_TRACE(::testing::Message() << ism::to_string(kind) << " window " << w);
    Dialogue d(kind, w);
    bool query = false;
    std::vector<ism::KeyRange> computed;  // the keys each row was computed with
    auto step = [&] {
      const index_t cached = d.cached();
      const ism::DialogueStep s = d.pending();
      const auto m = ism::sliding_window(d.mask(), w);
      // Rows [0, reused) still see the keys they were computed with.
      for (index_t i = 0; i < s.reused; ++i) {
        ASSERT_EQ(m.keys(i).begin, computed[size_t(i)].begin) << "row " << i;
        ASSERT_EQ(m.keys(i).end, computed[size_t(i)].end) << "row " << i;
      }
      ASSERT_TRUE(d.is_safe_split(s.reused));
      if (kind != DialogueMask::MultiTurnPrefixLM || w == 1 || !query) {
        ASSERT_EQ(s.reused, cached) << "length " << d.length();
      } else if (cached > 0) {
        ASSERT_EQ(s.reused, 0) << "length " << d.length();
      }
      ASSERT_EQ(d.safe_splits(), ism::safe_splits(m, d.length()));
      d.commit();
      computed.resize(size_t(d.length()));
      for (index_t i = s.reused; i < d.length(); ++i) computed[size_t(i)] = m.keys(i);
    };
    if (rng.coin(0.3)) {
      d.system_prompt(rng.uniform(1, 10));
      query = true;
      step();
    }
    for (index_t r = rng.uniform(1, 3); r > 0; --r) {
      d.add_query(rng.uniform(1, 10));
      query = true;
      step();
      query = false;
      for (index_t a = rng.uniform(1, 6); a > 0; --a) {
        d.append_answer(1);
        step();
      }
    }
  }
}

// Taking tokens back inside a query under a window: the rows of the query cut
// short see earlier keys than anything the dialogue needed before, so the
// rollback's own bound, not first_needed_key() of the longer dialogue, says
// what to keep. Random dialogues: after truncate(n) every row the pending step
// computes, and every later row, sees no key before the bound, and the bound
// never decreases with n (keeping n's covers any later rollback point).
TEST(WindowDialogue, RollbackKeepsWhatTheShorterDialogueNeeds) {
  Dialogue q(DialogueMask::Ism, 3);
  q.add_query(6).commit();
  EXPECT_EQ(q.first_needed_key(), 4);  // the next row, 6, sees [4, 7)
  EXPECT_EQ(ism::first_needed_key(q.attention_mask(), 4), 2);  // rows >= 4 of the longer query
  EXPECT_EQ(q.first_needed_key_after_truncate(4), 0);           // rows 0..3 are computed again
  EXPECT_EQ(q.first_needed_key_after_truncate(6), q.first_needed_key());
  EXPECT_THROW((void)q.first_needed_key_after_truncate(7), ism::invalid_argument);

  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 60; ++iter) {
    Dialogue d(DialogueMask::Ism, random_window(rng));
    play_script(rng, d, 12, [&] { d.commit(); });
    SCOPED_TRACE(::testing::Message() << "window " << d.window() << ", length " << d.length());
    index_t previous = 0;
    for (index_t n = 0; n <= d.length(); ++n) {
      const index_t bound = d.first_needed_key_after_truncate(n);
      EXPECT_GE(bound, previous) << "n = " << n;
      previous = bound;
      Dialogue t = d;
      t.truncate(n);
      const auto m = t.attention_mask();
      for (index_t r = t.pending().q_offset; r < n; ++r) {
        const ism::KeyRange keys = m.keys(r);
        if (keys.begin < keys.end) {
          EXPECT_GE(keys.begin, bound) << "n = " << n << ", row " << r;
        }
      }
      if (t.rounds() > 0) t.append_answer(1);  // a later row
      else t.add_query(1);
      const ism::KeyRange next = t.attention_mask().keys(n);
      EXPECT_GE(next.begin, bound) << "n = " << n << ", the next row";
    }
  }
}

TEST(WindowDialogue, WindowOneMakesEveryPositionASplit) {
  Dialogue d(DialogueMask::Ism, 1);
  d.system_prompt(3).add_query(4).append_answer(2);
  EXPECT_EQ(index_t(d.safe_splits().size()), d.length() + 1);
  d.commit(2);  // inside the system prompt: fine, row 1 sees only itself
  EXPECT_EQ(d.cached(), 2);
  EXPECT_EQ(d.first_needed_key(), 2);
  Dialogue wide(DialogueMask::Ism, 3);
  wide.system_prompt(3).add_query(4);
  EXPECT_THROW(wide.commit(2), ism::invalid_argument);  // row 1 sees key 2 (and 3 would be past the prompt)
  EXPECT_EQ(wide.safe_splits(), (std::vector<index_t>{0, 3, 7}));
  wide.commit();
  EXPECT_EQ(wide.first_needed_key(), 5);  // the next row, 7, sees [5, ...)
}

// Chunked prefill under a window: chunks end at splits of the combined rule;
// at window 1 a Bidirectional segment longer than the limit is cut anyway,
// at any wider window it is reported as without one.
TEST(WindowDialogue, ChunkPlansFollowTheCombinedRule) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 150; ++iter) {
    const RandomLayout layout = random_layout(rng, 2, 6, 20, /*allow_padding=*/false);
    SCOPED_TRACE(layout.describe());
    const ism::SegmentMask inner = layout.mask();
    const index_t w = random_window(rng), n = inner.length(), max_chunk = rng.uniform(1, 24);
    const auto m = ism::sliding_window(inner, w);
    bool inner_plans = true;
    try {
      ism::plan_prefill(inner, 0, n, max_chunk);
    } catch (const ism::oversized_segment&) {
      inner_plans = false;
    }
    if (!inner_plans && w > 1) {
      EXPECT_THROW(ism::plan_prefill(m, 0, n, max_chunk), ism::oversized_segment) << "window " << w;
      EXPECT_THROW(ism::plan_prefill(ism::sliding_window(inner.bounds(), w), 0, n, max_chunk), ism::invalid_argument);
      continue;
    }
    for (const auto& chunks : {ism::plan_prefill(m, 0, n, max_chunk),
                               ism::plan_prefill(ism::sliding_window(inner.bounds(), w), 0, n, max_chunk)}) {
      index_t pos = 0;
      for (const ism::Chunk& ch : chunks) {
        ASSERT_EQ(ch.begin, pos);
        ASSERT_GT(ch.size(), 0);
        ASSERT_LE(ch.size(), max_chunk);
        // The chunk's rows see no key at or after its end (brute force).
        for (index_t i = 0; i < ch.end; ++i)
          for (index_t j = ch.end; j < n; ++j) ASSERT_FALSE(m.allowed(i, j)) << "row " << i << " key " << j;
        pos = ch.end;
      }
      ASSERT_EQ(pos, n);
    }
  }
  // A dialogue plans its pending step under its window.
  Dialogue d(DialogueMask::Ism, 1);
  d.add_query(10);
  const auto chunks = ism::plan_prefill(d, 4);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[1].begin, 4);
  Dialogue wide(DialogueMask::Ism, 2);
  wide.add_query(10);
  EXPECT_THROW(ism::plan_prefill(wide, 4), ism::oversized_segment);
}

// The page pool's drop_front on its own: what goes back, what the block table
// then says, what truncate and append still do.
TEST(WindowDialogue, DropFrontReturnsWholeLeadingPages) {
  const index_t ps = 4, dim = 3;
  ism::PagedKVCache<float> cache(8, ps, 1, dim);
  Tensor<float> kv(30, 1, dim);
  for (index_t t = 0; t < 30; ++t)
    for (index_t d = 0; d < dim; ++d) kv.view(t, 0, d) = float(100 * t + d);
  const index_t seq = cache.add_sequence();
  cache.append(seq, rows(kv.cview(), 0, 18), rows(kv.cview(), 0, 18));  // pages 0..4, the last partial
  ASSERT_EQ(cache.free_pages(), 3);
  EXPECT_EQ(cache.drop_front(seq, 3), 0);  // page 0 still holds key 3
  EXPECT_EQ(cache.drop_front(seq, 9), 2);  // pages 0 and 1 hold keys 0..7
  EXPECT_EQ(cache.dropped_tokens(seq), 8);
  EXPECT_EQ(cache.held_pages(seq), 3);
  EXPECT_EQ(cache.free_pages(), 5);
  EXPECT_EQ(cache.drop_front(seq, 5), 0);  // already gone
  const auto& table = cache.block_table(seq);
  ASSERT_EQ(table.size(), 5u);
  EXPECT_EQ(table[0], table[2]);  // dropped blocks point at the first kept page
  EXPECT_EQ(table[1], table[2]);
  const auto view = cache.view(seq);
  EXPECT_EQ(view.tokens(), 18);  // positions keep their meaning
  for (index_t t = 8; t < 18; ++t) EXPECT_EQ(view.key(t, 0)[1], float(100 * t + 1)) << t;
  // The last page is never dropped, even when every key may go.
  EXPECT_EQ(cache.drop_front(seq, 18), 2);
  EXPECT_EQ(cache.held_pages(seq), 1);
  EXPECT_EQ(cache.dropped_tokens(seq), 16);
  for (index_t t = 16; t < 18; ++t) EXPECT_EQ(view.key(t, 0)[0], float(100 * t)) << t;
  // Truncating into the dropped prefix is an error; past it, or to 0, is fine.
  expect_invalid([&] { cache.truncate(seq, 16); }, {"ism::PagedKVCache::truncate", "tokens = 16", "[0, 16)"});
  EXPECT_EQ(cache.tokens(seq), 18);
  cache.truncate(seq, 17);
  EXPECT_EQ(cache.held_pages(seq), 1);
  cache.append(seq, rows(kv.cview(), 17, 13), rows(kv.cview(), 17, 13));  // grows to 30: pages 4..7
  EXPECT_EQ(cache.held_pages(seq), 4);
  for (index_t t = 16; t < 30; ++t) EXPECT_EQ(cache.view(seq).value(t, 0)[2], float(100 * t + 2)) << t;
  cache.truncate(seq, 0);
  EXPECT_EQ(cache.free_pages(), 8);  // every page back exactly once
  EXPECT_EQ(cache.dropped_tokens(seq), 0);
  cache.append(seq, rows(kv.cview(), 0, 30), rows(kv.cview(), 0, 30));
  EXPECT_EQ(cache.free_pages(), 0);
  cache.free_sequence(seq);
  EXPECT_EQ(cache.free_pages(), 8);

  const index_t s2 = cache.add_sequence();
  EXPECT_EQ(cache.drop_front(s2, 0), 0);  // an empty sequence has nothing to drop
  expect_invalid([&] { cache.drop_front(s2, 1); }, {"ism::PagedKVCache::drop_front", "first_kept = 1", "[0, 0]"});
  expect_invalid([&] { cache.drop_front(s2, -1); }, {"first_kept = -1"});
  expect_invalid([&] { cache.drop_front(99, 0); }, {"seq = 99"});
}

}  // namespace
