// The Dialogue builder: incremental attention through it equals the whole
// conversation computed at once; ISM claims (and gets) full reuse; a multi-turn
// prefix-LM over the same script changes earlier rows and claims none.
#include "ism/dialogue/chunking.hpp"
#include "ism/dialogue/dialogue.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "dialogue/dialogue_testing.hpp"

namespace {

using ism::Dialogue;
using ism::DialogueMask;
using ism::index_t;
using namespace ism_test;

// One turn event of a conversation script.
struct Event {
  enum Kind { System, Query, Answer } kind;
  index_t n;
};

std::vector<Event> random_script(Rng& rng, index_t max_len) {
  std::vector<Event> ev;
  if (rng.coin(0.4)) ev.push_back({Event::System, rng.uniform(1, max_len)});
  const index_t rounds = rng.uniform(1, 4);
  for (index_t r = 0; r < rounds; ++r) {
    ev.push_back({Event::Query, rng.uniform(1, max_len)});
    if (r + 1 == rounds && rng.coin(0.2)) break;  // the last query may stay unanswered
    index_t answer = rng.uniform(1, max_len);
    const bool one_at_a_time = rng.coin();
    while (answer > 0) {
      const index_t n = one_at_a_time ? 1 : std::min(answer, rng.uniform(1, 6));
      ev.push_back({Event::Answer, n});
      answer -= n;
    }
  }
  return ev;
}

std::string describe(const std::vector<Event>& ev) {
  std::string s;
  for (const Event& e : ev)
    s += (e.kind == Event::System ? "S" : e.kind == Event::Query ? "Q" : "a") + std::to_string(e.n) + " ";
  return s;
}

index_t total_length(const std::vector<Event>& ev) {
  index_t n = 0;
  for (const Event& e : ev) n += e.n;
  return n;
}

void apply(Dialogue& d, const Event& e) {
  if (e.kind == Event::System) d.system_prompt(e.n);
  else if (e.kind == Event::Query) d.add_query(e.n);
  else d.append_answer(e.n);
}

// Random Q/K/V for a whole conversation (token embeddings times random
// projections, as far as attention can tell).
struct Conversation {
  Tensor<float> q, k, v, out;
  Conversation(Rng& rng, index_t n, index_t q_heads, index_t kv_heads, index_t dim)
      : q(n, q_heads, dim, rng.coin()), k(n, kv_heads, dim, rng.coin(), rng.uniform(0, 2)),
        v(n, kv_heads, dim, rng.coin()), out(n, q_heads, dim) {
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
  }
};

Conversation random_conversation(Rng& rng, index_t n) {
  const index_t kv_heads = rng.uniform(1, 3), q_heads = kv_heads * rng.uniform(1, 3);
  return Conversation(rng, n, q_heads, kv_heads, rng.uniform(1, 33));
}

// Plays the script as an engine would: after every event, one pending step
// (split into prefill chunks when asked), then commit. `check` sees the dialogue
// and the step before it is computed, and the outputs before and after.
template <class Check>
void play(Dialogue& d, const std::vector<Event>& script, Conversation& c, Rng& rng, bool chunked,
          Check&& check) {
  for (const Event& e : script) {
    const index_t cached_before = d.cached();
    apply(d, e);
    const ism::DialogueStep step = d.pending();
    ASSERT_EQ(step.q_offset, step.reused);
    ASSERT_EQ(step.n_k, d.length());
    ASSERT_EQ(step.q_offset + step.n_q, step.n_k);
    const Tensor<float> before = snapshot(c.out);
    std::vector<ism::Chunk> chunks{{step.q_offset, step.n_k}};
    if (chunked && step.n_q > 1) {
      // A limit no smaller than the longest Bidirectional segment, so it plans.
      index_t longest = 1;
      for (const auto& s : d.mask().spans())
        if (s.attend == ism::Attend::Bidirectional && s.end > step.q_offset) longest = std::max(longest, s.length());
      chunks = ism::plan_prefill(d, rng.uniform(longest, longest + 8));
    }
    for (const ism::Chunk& ch : chunks) {
      attend_rows(c.q, c.k, c.v, c.out, d.mask(), ch.begin, ch.size(), ch.end);
      d.commit(ch.end);
    }
    ASSERT_EQ(d.cached(), d.length());
    check(e, step, cached_before, before, c.out);
  }
}

// Incremental outputs equal the whole conversation under the final mask, and
// that is attention: the fp64 reference, to fp32 rounding.
void expect_matches_whole(const Dialogue& d, const Conversation& c) {
  const index_t n = d.length(), heads = c.out.view.heads, dim = c.out.view.dim;
  Tensor<float> whole(n, heads, dim);
  attend_rows(c.q, c.k, c.v, whole, d.mask(), 0, n, n);
  EXPECT_LE(max_abs_diff(c.out, whole, 0, n), 2e-6);
  Tensor<double> ref(n, heads, dim);
  ism::reference_attention_into<float, double, double>(rows(c.q.cview(), 0, n), rows(c.k.cview(), 0, n),
                                                       rows(c.v.cview(), 0, n), ref.view, d.mask(), {}, nullptr);
  EXPECT_LE(max_abs_diff(c.out, ref, 0, n), 2e-5);
}

// Random scripts under a mask that never changes an earlier row: every step
// reuses the whole cache, cached rows stay bit-identical, and the incremental
// result is the whole conversation's.
void expect_full_reuse(DialogueMask kind, int scripts, index_t max_len) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < scripts; ++iter) {
    const auto script = random_script(rng, max_len);
    SCOPED_TRACE(describe(script));
    Conversation c = random_conversation(rng, total_length(script));
    Dialogue d(kind);
    play(d, script, c, rng, rng.coin(), [&](const Event&, const ism::DialogueStep& step, index_t cached_before,
                                            const Tensor<float>& before, const Tensor<float>& after) {
      EXPECT_EQ(step.reused, cached_before);
      EXPECT_EQ(max_abs_diff(before, after, 0, cached_before), 0.0);
    });
    expect_matches_whole(d, c);
    if (kind == DialogueMask::Causal) {  // one segment that every split cuts safely
      EXPECT_EQ(index_t(d.safe_splits().size()), d.length() + 1);
    }
  }
}

TEST(Dialogue, IsmIncrementalEqualsWholeAndReusesEverything) { expect_full_reuse(DialogueMask::Ism, 40, 24); }

TEST(Dialogue, CausalReusesEverythingAndMatchesWhole) { expect_full_reuse(DialogueMask::Causal, 20, 16); }

TEST(Dialogue, MultiTurnPrefixLmChangesEarlierRowsAndClaimsNoReuse) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  int rounds_checked = 0;
  for (int iter = 0; iter < 40; ++iter) {
    const auto script = random_script(rng, 24);
    SCOPED_TRACE(describe(script));
    Conversation c = random_conversation(rng, total_length(script));
    Dialogue d(DialogueMask::MultiTurnPrefixLM);
    play(d, script, c, rng, /*chunked=*/false,
         [&](const Event& e, const ism::DialogueStep& step, index_t cached_before, const Tensor<float>& before,
             const Tensor<float>& after) {
           if (e.kind == Event::Answer) {
             // Inside a round the prefix is fixed: decoding reuses the cache.
             EXPECT_EQ(step.reused, cached_before);
             return;
           }
           // A new query widens the prefix: every earlier row sees new keys.
           EXPECT_EQ(step.reused, 0);
           if (cached_before > 0) {
             EXPECT_GT(max_abs_diff(before, after, 0, cached_before), 1e-4)
                 << "earlier rows did not change under prefix-LM";
             ++rounds_checked;
           }
         });
    expect_matches_whole(d, c);
  }
  EXPECT_GT(rounds_checked, 0);
}

TEST(Dialogue, MasksFollowTheScript) {
  Dialogue ism(DialogueMask::Ism), plm(DialogueMask::MultiTurnPrefixLM);
  for (Dialogue* d : {&ism, &plm}) d->system_prompt(3).add_query(4).append_answer(2).append_answer(1).add_query(2);
  // ISM: S[0,3) B, Q[3,7) B, A[7,10) C, Q[10,12) B.
  const auto& s = ism.mask().spans();
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[2].begin, 7);
  EXPECT_EQ(s[2].end, 10);
  EXPECT_EQ(s[2].attend, ism::Attend::Causal);
  EXPECT_EQ(ism.rounds(), 2);
  EXPECT_TRUE(ism.has_system_prompt());
  EXPECT_EQ(ism.safe_splits(), (std::vector<index_t>{0, 3, 7, 8, 9, 10, 12}));
  // Prefix-LM over the same script: one Bidirectional prefix of everything so far.
  ASSERT_EQ(plm.mask().spans().size(), 1u);
  EXPECT_EQ(plm.mask().keys(0).end, 12);
  EXPECT_EQ(plm.safe_splits(), (std::vector<index_t>{0, 12}));
  EXPECT_EQ(plm.turns().spans().size(), 4u);  // the script itself is the same
  plm.append_answer(2);
  EXPECT_EQ(plm.mask().keys(12).end, 13);
  EXPECT_EQ(plm.mask().keys(11).end, 12);
}

TEST(Dialogue, ReuseIsCutBackToASafeSplit) {
  // Commit part of an answer, then extend nothing but check the numbers an
  // engine reads between steps.
  Dialogue d;
  d.add_query(5);
  EXPECT_EQ(d.pending().reused, 0);
  EXPECT_EQ(d.pending().n_q, 5);
  d.commit();
  d.append_answer(3);
  EXPECT_EQ(d.pending().reused, 5);
  EXPECT_EQ(d.pending().n_q, 3);
  d.commit(6);  // one answer token at a time is fine: answers are Causal
  EXPECT_EQ(d.cached(), 6);
  EXPECT_EQ(d.pending().q_offset, 6);
  EXPECT_EQ(d.pending().options().q_offset, 6);
  d.commit();
  d.add_query(4);
  EXPECT_EQ(d.reusable(), 8);
}

TEST(Dialogue, RejectsBadUse) {
  Dialogue d;
  EXPECT_THROW(d.append_answer(1), ism::invalid_argument);  // nothing to answer
  EXPECT_THROW(d.add_query(0), ism::invalid_argument);
  d.add_query(4);
  EXPECT_THROW(d.system_prompt(2), ism::invalid_argument);  // must come first
  EXPECT_THROW(d.append_answer(-1), ism::invalid_argument);
  try {
    d.commit(2);  // inside the Bidirectional query
    FAIL() << "commit inside a Bidirectional segment did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("end = 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(d.commit(5), ism::invalid_argument);  // past the end
  EXPECT_EQ(d.cached(), 0);
}

// --- taking tokens back ----------------------------------------------------

// The script cut at n tokens: the dialogue an engine would have built had it
// stopped at n (the event holding token n - 1 shortened).
std::vector<Event> cut_script(const std::vector<Event>& script, index_t n) {
  std::vector<Event> cut;
  for (const Event& e : script) {
    if (n <= 0) break;
    cut.push_back({e.kind, std::min(e.n, n)});
    n -= cut.back().n;
  }
  return cut;
}

// What reusable() must be after truncate(n) of a dialogue that committed
// every step: rows before n keep their keys except
//   ISM, causal: the rows of a Bidirectional turn (system prompt, query) cut
//                short, which saw its old end: reuse stops at its start;
//   prefix-LM:   every row, if n falls before the end of the last query (the
//                prefix shrinks); otherwise none.
index_t reusable_after_truncate(DialogueMask kind, const std::vector<Event>& script, index_t n) {
  index_t pos = 0, last_query_end = 0, keep = n;
  for (const Event& e : script) {
    if (e.kind != Event::Answer) {
      last_query_end = pos + e.n;
      if (kind == DialogueMask::Ism && pos < n && n < pos + e.n) keep = pos;
    }
    pos += e.n;
  }
  return kind == DialogueMask::MultiTurnPrefixLM && n < last_query_end ? 0 : keep;
}

// The keys each committed row was computed with, kept by the test as an
// engine would see them: reuse after any truncation is the longest prefix of
// rows whose keys are those of `mask`, cut back to a safe split of it. (This
// is how a prefix-LM row computed before a later query becomes valid again
// when that query is taken back.)
struct ComputedRows {
  std::vector<ism::KeyRange> keys;
  void commit(const Dialogue& d) {
    const index_t from = d.reusable();
    keys.resize(size_t(d.length()));
    for (index_t i = from; i < d.length(); ++i) keys[size_t(i)] = d.mask().keys(i);
  }
  index_t reusable(const ism::SegmentMask& mask, index_t n) const {
    index_t p = 0;
    while (p < std::min<index_t>(n, index_t(keys.size())) && keys[size_t(p)].begin == mask.keys(p).begin &&
           keys[size_t(p)].end == mask.keys(p).end)
      ++p;
    while (p > 0 && !mask.is_safe_split(p)) --p;
    return p;
  }
};

// A few valid events after a cut (a system prompt only on an empty dialogue,
// answers only once there is a query).
std::vector<Event> random_continuation(Rng& rng, index_t length, index_t rounds) {
  std::vector<Event> ev;
  if (length == 0 && rng.coin()) ev.push_back({Event::System, rng.uniform(1, 6)});
  for (int i = 0; i < 3; ++i) {
    const bool answer = rounds > 0 && rng.coin(0.6);
    ev.push_back({answer ? Event::Answer : Event::Query, rng.uniform(1, 6)});
    rounds += !answer;
  }
  return ev;
}

void expect_same_dialogue(const Dialogue& got, const Dialogue& want) {
  ASSERT_EQ(got.length(), want.length());
  ASSERT_EQ(got.rounds(), want.rounds());
  ASSERT_EQ(got.has_system_prompt(), want.has_system_prompt());
  for (const auto& [g, w] : {std::pair(&got.mask(), &want.mask()), std::pair(&got.turns(), &want.turns())}) {
    ASSERT_EQ(g->num_documents(), w->num_documents());
    ASSERT_EQ(g->spans().size(), w->spans().size());
    for (size_t s = 0; s < w->spans().size(); ++s) {
      ASSERT_EQ(g->spans()[s].begin, w->spans()[s].begin) << "span " << s;
      ASSERT_EQ(g->spans()[s].end, w->spans()[s].end) << "span " << s;
      ASSERT_EQ(g->spans()[s].attend, w->spans()[s].attend) << "span " << s;
    }
    for (index_t i = 0; i < w->length(); ++i) {
      ASSERT_EQ(g->keys(i).begin, w->keys(i).begin) << "row " << i;
      ASSERT_EQ(g->keys(i).end, w->keys(i).end) << "row " << i;
    }
  }
  ASSERT_EQ(got.safe_splits(), want.safe_splits());
}

// Every cut of random scripts, some steps left uncommitted: the dialogue
// equals the one built to that length, cached rows past the cut are gone,
// reuse stops where the rule says, and both go on alike.
TEST(DialogueTruncate, EqualsTheDialogueBuiltToThatLength) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (DialogueMask kind : {DialogueMask::Ism, DialogueMask::MultiTurnPrefixLM, DialogueMask::Causal}) {
    SCOPED_TRACE(ism::to_string(kind));
    for (int iter = 0; iter < 40; ++iter) {
      const auto script = random_script(rng, 8);
      SCOPED_TRACE(describe(script));
      Dialogue d(kind);
      ComputedRows computed;
      const bool every_step = iter % 2 == 0;
      for (const Event& e : script) {
        apply(d, e);
        if (every_step || rng.coin(0.7)) {
          computed.commit(d);
          d.commit();
        }
      }
      for (index_t n = 0; n <= d.length(); ++n) {
        SCOPED_TRACE(::testing::Message() << "truncate(" << n << ") of " << d.length() << ", cached " << d.cached());
        Dialogue t = d;
        EXPECT_EQ(&t.truncate(n), &t);
        Dialogue built(kind);
        for (const Event& e : cut_script(script, n)) apply(built, e);
        expect_same_dialogue(t, built);
        EXPECT_EQ(t.cached(), std::min(n, d.cached()));
        const index_t reused = computed.reusable(built.mask(), n);
        if (every_step) {
          EXPECT_EQ(reused, reusable_after_truncate(kind, script, n));
        }
        EXPECT_EQ(t.reusable(), reused);
        const ism::DialogueStep step = t.pending();
        EXPECT_EQ(step.reused, reused);
        EXPECT_EQ(step.q_offset, reused);
        EXPECT_EQ(step.n_q, n - reused);
        EXPECT_EQ(step.n_k, n);
        // Both go on alike: the recomputed step, then new turns.
        t.commit();
        built.commit();
        for (const Event& e : random_continuation(rng, n, built.rounds())) {
          apply(t, e);
          apply(built, e);
          EXPECT_EQ(t.pending().reused, built.pending().reused);
          t.commit();
          built.commit();
        }
        expect_same_dialogue(t, built);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Speculative decoding and regenerated answers at the attention level: after
// truncate(n) the engine recomputes pending() and carries on with new tokens
// (new Q/K/V past n); the incremental outputs stay the whole conversation's.
TEST(DialogueTruncate, RollbackThenRecomputeEqualsTheWholeConversation) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (DialogueMask kind : {DialogueMask::Ism, DialogueMask::MultiTurnPrefixLM, DialogueMask::Causal}) {
    SCOPED_TRACE(ism::to_string(kind));
    for (int iter = 0; iter < 12; ++iter) {
      const auto script = random_script(rng, 16);
      SCOPED_TRACE(describe(script));
      const index_t length = total_length(script);
      Conversation c = random_conversation(rng, length + 18);  // room for the continuation
      Dialogue d(kind);
      play(d, script, c, rng, rng.coin(), [](auto&&...) {});
      const index_t n = rng.uniform(0, length);
      SCOPED_TRACE(::testing::Message() << "truncate(" << n << ")");
      const index_t reused = reusable_after_truncate(kind, script, n);
      d.truncate(n);
      ASSERT_EQ(d.reusable(), reused);
      // Tokens past n are new tokens: new Q, K and V.
      for (Tensor<float>* t : {&c.q, &c.k, &c.v})
        for (index_t p = n; p < t->view.tokens; ++p)
          for (index_t h = 0; h < t->view.heads; ++h)
            for (index_t x = 0; x < t->view.dim; ++x) t->view(p, h, x) = float(rng.real(-1, 1));
      const auto more = random_continuation(rng, n, d.rounds());
      bool first = true;
      play(d, more, c, rng, rng.coin(),
           [&](const Event&, const ism::DialogueStep& step, index_t cached_before, const Tensor<float>&,
               const Tensor<float>&) {
             if (first) {
               EXPECT_EQ(cached_before, n);
               EXPECT_LE(step.reused, reused);  // a new query may invalidate more (prefix-LM)
             }
             first = false;
           });
      expect_matches_whole(d, c);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(DialogueTruncate, BadLengthThrowsAndChangesNothing) {
  for (DialogueMask kind : {DialogueMask::Ism, DialogueMask::MultiTurnPrefixLM, DialogueMask::Causal}) {
    Dialogue d(kind);
    d.system_prompt(3).add_query(4).append_answer(2);
    d.commit();
    d.add_query(5);
    const Dialogue before = d;
    ism_test::expect_invalid([&] { d.truncate(-1); }, {"ism::Dialogue::truncate", "n = -1", "length() = 14"});
    ism_test::expect_invalid([&] { d.truncate(15); }, {"n = 15", "length() = 14"});
    expect_same_dialogue(d, before);
    EXPECT_EQ(d.cached(), before.cached());
    EXPECT_EQ(d.reusable(), before.reusable());
    // Everything goes, system prompt included; a new one may come first again.
    d.truncate(0);
    EXPECT_EQ(d.length(), 0);
    EXPECT_EQ(d.rounds(), 0);
    EXPECT_FALSE(d.has_system_prompt());
    EXPECT_EQ(d.cached(), 0);
    d.system_prompt(2).add_query(1);
    EXPECT_EQ(d.rounds(), 1);
  }
}

// The speculative-decoding step an engine runs: two draft tokens appended,
// computed and committed, the second rejected.
TEST(DialogueTruncate, RejectedDraftTokenKeepsTheAnswerCached) {
  Dialogue d;
  d.add_query(6);
  d.commit();
  d.append_answer(1);
  d.commit();
  d.append_answer(2);  // draft tokens
  d.commit();
  d.truncate(8);       // the last one rejected
  EXPECT_EQ(d.reusable(), 8);
  EXPECT_EQ(d.pending().n_q, 0);
  d.append_answer(1);
  EXPECT_EQ(d.pending().reused, 8);
  EXPECT_EQ(d.pending().n_q, 1);
  // Cutting the query itself invalidates it: its rows saw all 6 tokens.
  d.commit();
  d.truncate(4);
  EXPECT_EQ(d.reusable(), 0);
  EXPECT_EQ(d.pending().n_q, 4);
}

}  // namespace
