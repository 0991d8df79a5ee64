#pragma once
// PagedKVCache: the owning pool behind PagedKV views (kv/paged_view.hpp).
// Sequences grow a page at a time and pages return to the pool when a
// sequence shrinks or ends, or, under a sliding window, when its oldest pages
// fall out of every remaining row's window (drop_front), so memory is never
// fragmented beyond one partial page per sequence.
#include <algorithm>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/core/validate.hpp"
#include "ism/core/views.hpp"
#include "ism/kv/paged_view.hpp"

namespace ism {

// The owning pool. Pages are handed out from a free list (last freed, first
// reused, as engines do to keep hot pages in cache), so block tables of
// sequences that grew and shrank at different times are not in page order.
template <class T>
class PagedKVCache {
 public:
  PagedKVCache(index_t num_pages, index_t page_size, index_t heads, index_t dim)
      : num_pages_(num_pages), page_size_(page_size), heads_(heads), dim_(dim) {
    const char* where = "ism::PagedKVCache";
    if (num_pages <= 0) detail::fail(where, "num_pages = ", num_pages, " must be positive");
    if (page_size <= 0) detail::fail(where, "page_size = ", page_size, " must be positive");
    if (heads <= 0) detail::fail(where, "heads = ", heads, " must be positive");
    if (dim <= 0) detail::fail(where, "dim = ", dim, " must be positive");
    index_t n = 0;
    if (detail::mul_overflows(num_pages, page_size, &n) || detail::mul_overflows(n, heads, &n) ||
        detail::mul_overflows(n, dim, &n))
      detail::fail(where, "num_pages * page_size * heads * dim overflows");
    k_.assign(static_cast<size_t>(n), T(0.0f));
    v_.assign(static_cast<size_t>(n), T(0.0f));
    free_.reserve(static_cast<size_t>(num_pages));
    for (index_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
  }

  index_t num_pages() const { return num_pages_; }
  index_t page_size() const { return page_size_; }
  index_t heads() const { return heads_; }
  index_t dim() const { return dim_; }
  index_t free_pages() const { return static_cast<index_t>(free_.size()); }

  // A new, empty sequence; returns its id.
  index_t add_sequence() {
    seqs_.push_back({});
    seqs_.back().live = true;
    return static_cast<index_t>(seqs_.size()) - 1;
  }
  // Returns all pages of the sequence to the pool; the id is not reused.
  void free_sequence(index_t seq) {
    truncate(seq, 0);
    at("ism::PagedKVCache::free_sequence", seq).live = false;
  }

  index_t tokens(index_t seq) const { return at("ism::PagedKVCache::tokens", seq).tokens; }
  const std::vector<index_t>& block_table(index_t seq) const {
    return at("ism::PagedKVCache::block_table", seq).table;
  }

  // Appends k.tokens tokens (k and v: [tokens, heads, dim] views, any strides),
  // taking pages from the pool as needed. On throw nothing changed.
  void append(index_t seq, HeadsView<const T> k, HeadsView<const T> v) {
    const char* where = "ism::PagedKVCache::append";
    Sequence& s = at(where, seq);
    detail::check_view(where, "k", k);
    detail::check_view(where, "v", v);
    if (k.heads != heads_) detail::fail(where, "k.heads = ", k.heads, " differs from the cache's heads = ", heads_);
    if (k.dim != dim_) detail::fail(where, "k.dim = ", k.dim, " differs from the cache's dim = ", dim_);
    if (v.heads != heads_) detail::fail(where, "v.heads = ", v.heads, " differs from the cache's heads = ", heads_);
    if (v.dim != dim_) detail::fail(where, "v.dim = ", v.dim, " differs from the cache's dim = ", dim_);
    if (v.tokens != k.tokens) detail::fail(where, "v.tokens = ", v.tokens, " differs from k.tokens = ", k.tokens);
    const index_t new_tokens = s.tokens + k.tokens;
    const index_t blocks = (new_tokens + page_size_ - 1) / page_size_;
    const index_t needed = blocks - static_cast<index_t>(s.table.size());
    if (needed > free_pages())
      detail::fail(where, "sequence ", seq, " needs ", needed, " more pages for ", k.tokens,
                   " tokens, but only ", free_pages(), " of ", num_pages_, " pages are free");
    s.table.reserve(static_cast<size_t>(blocks));
    for (index_t b = 0; b < needed; ++b) {
      s.table.push_back(free_.back());
      free_.pop_back();
    }
    for (index_t t = 0; t < k.tokens; ++t) {
      const index_t pos = s.tokens + t;
      const index_t base = (s.table[static_cast<size_t>(pos / page_size_)] * page_size_ + pos % page_size_) * heads_;
      for (index_t h = 0; h < heads_; ++h) {
        std::copy(k.row(t, h), k.row(t, h) + dim_, k_.data() + (base + h) * dim_);
        std::copy(v.row(t, h), v.row(t, h) + dim_, v_.data() + (base + h) * dim_);
      }
    }
    s.tokens = new_tokens;
  }

  // Keeps the first `tokens` tokens (an engine dropping what is no longer
  // valid, e.g. the history a prefix-LM must recompute); whole pages past the
  // end go back to the pool. After drop_front, `tokens` must be 0 or lie past
  // the dropped prefix (the K/V before it are gone).
  void truncate(index_t seq, index_t tokens) {
    const char* where = "ism::PagedKVCache::truncate";
    Sequence& s = at(where, seq);
    if (tokens < 0 || tokens > s.tokens)
      detail::fail(where, "tokens = ", tokens, " is outside [0, ", s.tokens, "] for sequence ", seq);
    const index_t dropped = s.dropped * page_size_;
    if (tokens > 0 && tokens <= dropped)
      detail::fail(where, "tokens = ", tokens, " lies in the dropped prefix [0, ", dropped, ") of sequence ", seq,
                   " (drop_front): the K/V of its last tokens are no longer held");
    const size_t blocks = static_cast<size_t>((tokens + page_size_ - 1) / page_size_);
    while (s.table.size() > blocks) {
      // Dropped blocks point at a kept page; only truncate(seq, 0) reaches them.
      if (static_cast<index_t>(s.table.size()) > s.dropped) free_.push_back(s.table.back());
      s.table.pop_back();
    }
    if (tokens == 0) s.dropped = 0;
    s.tokens = tokens;
  }

  // Returns to the pool every page of `seq` whose tokens all lie before
  // `first_kept`: under a sliding window, the keys no row left to compute can
  // see (first_needed_key, mask/kv_reuse.hpp; Dialogue::first_needed_key).
  // The last page is always kept. Positions keep their meaning: a dropped
  // block's table entry points at the sequence's first kept page, so the
  // block table stays valid for PagedKV, and a kernel that reads a whole key
  // tile across the window's edge reads this sequence's own memory there
  // (which the mask hides) rather than a page another sequence now writes.
  // Returns how many pages went back to the pool (0 when first_kept is at or
  // before what was dropped already).
  index_t drop_front(index_t seq, index_t first_kept) {
    const char* where = "ism::PagedKVCache::drop_front";
    Sequence& s = at(where, seq);
    if (first_kept < 0 || first_kept > s.tokens)
      detail::fail(where, "first_kept = ", first_kept, " is outside [0, ", s.tokens, "] for sequence ", seq);
    const index_t blocks = static_cast<index_t>(s.table.size());
    const index_t drop = std::min(first_kept / page_size_, blocks - 1);
    if (drop <= s.dropped) return 0;
    const index_t kept = s.table[static_cast<size_t>(drop)];
    for (index_t b = s.dropped; b < drop; ++b) free_.push_back(s.table[static_cast<size_t>(b)]);
    for (index_t b = 0; b < drop; ++b) s.table[static_cast<size_t>(b)] = kept;
    const index_t released = drop - s.dropped;
    s.dropped = drop;
    return released;
  }
  // Tokens [0, dropped_tokens(seq)) of the sequence are no longer held.
  index_t dropped_tokens(index_t seq) const {
    return at("ism::PagedKVCache::dropped_tokens", seq).dropped * page_size_;
  }
  // Pages the sequence holds (its block table less the dropped blocks).
  index_t held_pages(index_t seq) const {
    const Sequence& s = at("ism::PagedKVCache::held_pages", seq);
    return static_cast<index_t>(s.table.size()) - s.dropped;
  }

  // A view of one sequence, valid until that sequence is next appended to,
  // truncated or freed.
  PagedKV<T> view(index_t seq) const {
    const Sequence& s = at("ism::PagedKVCache::view", seq);
    return PagedKV<T>(k_.data(), v_.data(), num_pages_, page_size_, heads_, dim_, s.table.data(), s.tokens);
  }

 private:
  struct Sequence {
    std::vector<index_t> table;
    index_t tokens = 0;
    index_t dropped = 0;  // leading blocks returned to the pool (drop_front)
    bool live = false;
  };
  Sequence& at(const char* where, index_t seq) {
    return const_cast<Sequence&>(static_cast<const PagedKVCache&>(*this).at(where, seq));
  }
  const Sequence& at(const char* where, index_t seq) const {
    if (seq < 0 || seq >= static_cast<index_t>(seqs_.size()) || !seqs_[static_cast<size_t>(seq)].live)
      detail::fail(where, "seq = ", seq, " is not a live sequence of this cache");
    return seqs_[static_cast<size_t>(seq)];
  }

  index_t num_pages_, page_size_, heads_, dim_;
  std::vector<T> k_, v_;
  std::vector<index_t> free_;  // a stack: the last page freed is the next handed out
  std::vector<Sequence> seqs_;
};

}  // namespace ism
