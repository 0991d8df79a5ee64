#pragma once
// Dialogue: the mask and KV-cache bookkeeping of one conversation, for an
// inference engine that should not have to think about masks.
//
// The engine describes the conversation as it happens (system prompt, user
// query, answer tokens, next query, ...), and asks, whenever it is about to run
// attention, for the one call that brings its cache up to date: which leading
// cached tokens stay valid (their K/V and outputs are reused), which rows must be
// computed, the mask and the q_offset. After computing, it commits.
//
// Reuse is never assumed from the mask's name: the dialogue remembers the key
// interval every committed row was computed with and compares it with the
// current mask. Under ISM appending a turn changes no earlier row, so everything
// stays cached; under a multi-turn prefix-LM (prefix = whole history up to the
// current answer) every new query widens the prefix, so row 0 changes and the
// dialogue reports no reuse at all.
//
// A dialogue may run under a sliding window (every row also sees only keys
// with |i - j| < window, mask/sliding_window.hpp): reuse, safe splits and
// commits then follow the combined rule, and first_needed_key() says which
// cached keys no row left to compute can see, so an engine can drop them.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "ism/core/options.hpp"
#include "ism/core/errors.hpp"
#include "ism/mask/kv_reuse.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/sliding_window.hpp"

namespace ism {

// The mask a Dialogue hands to attention, over the same script of turns.
enum class DialogueMask : std::uint8_t {
  Ism,                // system prompt and queries Bidirectional, answers Causal
  MultiTurnPrefixLM,  // Bidirectional over all history up to the current answer, Causal after
  Causal,             // every token Causal
};

inline const char* to_string(DialogueMask m) {
  return m == DialogueMask::Ism ? "ISM" : m == DialogueMask::Causal ? "causal" : "prefix-LM";
}

// The attention call that brings a cache up to date: keys [0, n_k), query rows
// at absolute positions [q_offset, q_offset + n_q), of which the first
// `reused` keys come from the cache unchanged.
struct DialogueStep {
  index_t reused = 0;
  index_t q_offset = 0;  // == reused: every row after the valid prefix is recomputed
  index_t n_q = 0;
  index_t n_k = 0;       // == q_offset + n_q
  // `base` with q_offset set for this step.
  AttentionOptions options(AttentionOptions base = {}) const {
    base.q_offset = q_offset;
    return base;
  }
};

class Dialogue {
 public:
  // window: the sliding window every row attends within (>= 1), or
  // ism::unbounded for none.
  explicit Dialogue(DialogueMask kind = DialogueMask::Ism, index_t window = unbounded)
      : kind_(kind), window_(detail::check_sliding_window("ism::Dialogue", window)) {}

  // --- the script --------------------------------------------------------
  // Optional, and only as the very first turn: a Bidirectional segment.
  Dialogue& system_prompt(index_t n) {
    check_positive("ism::Dialogue::system_prompt", "n", n);
    if (length() != 0)
      detail::fail("ism::Dialogue::system_prompt", "the dialogue already holds ", length(),
                   " tokens; the system prompt must come first");
    turns_.append({n, Attend::Bidirectional});
    has_system_ = true;
    grow_mask(n, /*new_query=*/true);
    return *this;
  }
  // A user query of n tokens (one Bidirectional segment); starts the next round.
  Dialogue& add_query(index_t n) {
    check_positive("ism::Dialogue::add_query", "n", n);
    turns_.append({n, Attend::Bidirectional});
    ++rounds_;
    grow_mask(n, /*new_query=*/true);
    return *this;
  }
  // n answer tokens (Causal) of the current round: one at a time while decoding,
  // or a chunk (a forced or speculated continuation).
  Dialogue& append_answer(index_t n = 1) {
    check_positive("ism::Dialogue::append_answer", "n", n);
    if (rounds_ == 0)
      detail::fail("ism::Dialogue::append_answer", "no query to answer yet (call add_query first)");
    if (turns_.spans().back().attend == Attend::Causal) turns_.extend_last(n);
    else turns_.append({n, Attend::Causal});
    grow_mask(n, /*new_query=*/false);
    return *this;
  }

  // Takes back every token at or after n: a rejected speculative token, an
  // answer to regenerate, a turn to edit. The script becomes the one built to
  // length n (a turn cut short stays a turn), and committed rows past n are
  // forgotten. Rows before n that now see other keys are no longer reusable():
  // those of a Bidirectional segment cut short (they saw its old end), and
  // under a multi-turn prefix-LM every row if the prefix shrinks. pending()
  // then recomputes them; the engine drops its cache past pending().reused
  // (PagedKVCache::truncate). Truncating inside a Causal answer keeps every
  // row before n. Throws ism::invalid_argument unless 0 <= n <= length(), and
  // then, like on std::bad_alloc, nothing changed.
  Dialogue& truncate(index_t n) {
    if (n < 0 || n > length())
      detail::fail("ism::Dialogue::truncate", "n = ", n, " is outside [0, length() = ", length(), "]");
    // The only step that may allocate comes first: a prefix-LM mask whose
    // prefix shrinks is built anew.
    SegmentMask other;
    const bool rebuild = kind_ == DialogueMask::MultiTurnPrefixLM && n < other_.length() &&
                         n < other_.spans().front().end;
    if (rebuild) other = prefix_lm(last_query_end(n), n);
    // From here on nothing throws.
    for (auto s = turns_.spans().rbegin(); s != turns_.spans().rend() && s->begin >= n; ++s)
      if (s->attend == Attend::Bidirectional && !(has_system_ && s->begin == 0)) --rounds_;
    has_system_ = has_system_ && n > 0;
    turns_.truncate(n);
    if (rebuild) other_ = std::move(other);
    else if (kind_ != DialogueMask::Ism) other_.truncate(n);
    if (cached() > n) computed_.resize(static_cast<size_t>(n));
    return *this;
  }

  DialogueMask kind() const { return kind_; }
  index_t length() const { return turns_.length(); }
  index_t rounds() const { return rounds_; }
  bool has_system_prompt() const { return has_system_; }
  // The turns as ISM segments, whatever kind() is (the script itself).
  const SegmentMask& turns() const { return turns_; }
  // This dialogue kind's layout, without the window.
  const SegmentMask& mask() const { return kind_ == DialogueMask::Ism ? turns_ : other_; }
  index_t window() const { return window_; }
  // The policy attention must use: mask() within the window (mask() itself
  // when there is none). A view of mask()'s row bounds, valid until the
  // dialogue next changes.
  SlidingWindowMask<RowBoundsMask> attention_mask() const { return {mask().bounds(), window_}; }
  // Positions p where tokens [0, p) can be computed before [p, length()) exist:
  // the only places a prefill chunk or a cache may end.
  bool is_safe_split(index_t p) const { return ism::is_safe_split(attention_mask(), p); }
  std::vector<index_t> safe_splits() const { return ism::safe_splits(attention_mask(), length()); }

  // --- the cache -----------------------------------------------------------
  // Tokens whose rows the engine has computed and committed.
  index_t cached() const { return static_cast<index_t>(computed_.size()); }

  // Leading cached tokens that stay valid: the longest prefix [0, p) whose rows
  // still see exactly the keys they were computed with, cut back to a safe split
  // so that no valid row depends on a key at or after p. In a multi-layer model
  // this is what keeps every layer's K/V of those tokens valid (by induction over
  // layers and positions), not only the first layer's.
  index_t reusable() const {
    const auto m = attention_mask();
    index_t p = 0;
    while (p < cached()) {
      const KeyRange now = m.keys(p), then = computed_[static_cast<size_t>(p)];
      if (now.begin != then.begin || now.end != then.end) break;
      ++p;
    }
    while (p > 0 && !ism::is_safe_split(m, p)) --p;
    return p;
  }

  // Cached keys before this one are seen by no row the pending step computes
  // nor by any row appended later: with a window the engine may drop them
  // (PagedKVCache::drop_front). Without one it is the start of the current
  // document, 0 in a dialogue. A prefix-LM dialogue recomputes everything on
  // its next query, which then needs nothing from the cache.
  index_t first_needed_key() const { return ism::first_needed_key(attention_mask(), reusable()); }

  // The same after truncate(n): what an engine that may still take tokens
  // back to n (a speculative draft starting there) must keep, and no more
  // than first_needed_key() otherwise. It can be earlier than anything the
  // dialogue needs now: cutting a Bidirectional segment short moves its rows'
  // ends, and so their windows, back, and those rows are computed again.
  // Taking tokens back to any n' >= n needs no earlier key. O(length()).
  index_t first_needed_key_after_truncate(index_t n) const {
    if (n < 0 || n > length())
      detail::fail("ism::Dialogue::first_needed_key_after_truncate", "n = ", n, " is outside [0, length() = ",
                   length(), "]");
    Dialogue d = *this;
    d.truncate(n);
    return d.first_needed_key();
  }

  // The call that brings the cache up to date with the whole script.
  DialogueStep pending() const {
    DialogueStep s;
    s.reused = reusable();
    s.q_offset = s.reused;
    s.n_q = length() - s.reused;
    s.n_k = length();
    return s;
  }

  // The engine computed rows [reusable(), end) against keys [0, end) with mask()
  // and stored their K/V; tokens past `end` (if any) are not cached. `end` must
  // be a safe split: otherwise rows before it were computed without keys they see.
  void commit(index_t end) {
    const char* where = "ism::Dialogue::commit";
    const index_t from = reusable();
    if (end < from || end > length())
      detail::fail(where, "end = ", end, " is outside [", from, ", ", length(),
                   "] (reusable() = ", from, ", length() = ", length(), ")");
    const auto m = attention_mask();
    if (!ism::is_safe_split(m, end))
      detail::fail(where, "end = ", end, " is not a safe split of the ", to_string(kind_),
                   " mask: a row before it sees keys at or after it");
    computed_.resize(static_cast<size_t>(end));
    for (index_t i = from; i < end; ++i) computed_[static_cast<size_t>(i)] = m.keys(i);
  }
  void commit() { commit(length()); }

 private:
  // Keeps other_ (the prefix-LM or causal mask) in step with turns_.
  void grow_mask(index_t n, bool new_query) {
    switch (kind_) {
      case DialogueMask::Ism:
        return;
      case DialogueMask::Causal:
        if (other_.length() == 0) other_.append({n, Attend::Causal});
        else other_.extend_last(n);
        return;
      case DialogueMask::MultiTurnPrefixLM:
        if (new_query) {
          // The prefix swallows the whole history, including earlier answers.
          other_ = SegmentMask();
          other_.append({length(), Attend::Bidirectional});
        } else if (other_.spans().back().attend == Attend::Causal) {
          other_.extend_last(n);
        } else {
          other_.append({n, Attend::Causal});
        }
        return;
    }
  }
  // A multi-turn prefix-LM over n tokens: Bidirectional [0, prefix), Causal after.
  static SegmentMask prefix_lm(index_t prefix, index_t n) {
    SegmentMask m;
    if (prefix > 0) m.append({prefix, Attend::Bidirectional});
    if (n > prefix) m.append({n - prefix, Attend::Causal});
    return m;
  }
  // Where the last query (or the system prompt) that starts before n ends,
  // cut at n: the prefix of a prefix-LM dialogue truncated to n tokens.
  index_t last_query_end(index_t n) const {
    const auto& spans = turns_.spans();
    for (auto s = spans.rbegin(); s != spans.rend(); ++s)
      if (s->begin < n && s->attend == Attend::Bidirectional) return std::min(s->end, n);
    return 0;
  }
  static void check_positive(const char* where, const char* arg, index_t n) {
    if (n <= 0) detail::fail(where, arg, " = ", n, " must be positive");
  }

  DialogueMask kind_;
  index_t window_ = unbounded;
  SegmentMask turns_;
  SegmentMask other_;
  index_t rounds_ = 0;
  bool has_system_ = false;
  std::vector<KeyRange> computed_;  // keys each committed row was computed with
};

}  // namespace ism
