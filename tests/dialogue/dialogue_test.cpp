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
  ism::reference_attention_into<float, double, double>(c.q.cview(), c.k.cview(), c.v.cview(), ref.view, d.mask(),
                                                       {}, nullptr);
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

}  // namespace
