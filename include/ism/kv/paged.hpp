#pragma once
// Paged KV caches, as serving engines keep them (vLLM's PagedAttention,
// FlashAttention's paged KV): a pool of fixed-size pages, each holding
// `page_size` tokens as [page_size][heads][dim] for K and the same for V, and
// per sequence a block table: token t lives in page block_table[t / page_size]
// at slot t % page_size. Sequences grow a page at a time and pages return to
// the pool when a sequence shrinks or ends, so memory is never fragmented
// beyond one partial page per sequence.
//
//   PagedKV<T>       a read-only view of one sequence (a KV source for the kernel)
//   PagedKVCache<T>  the owning pool: sequences, appends, page allocation
//   attention(q, PagedKV, out, mask, opt)   the fused kernel over a paged cache
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ism/attention/attention.hpp"
#include "ism/attention/validate.hpp"
#include "ism/core/errors.hpp"
#include "ism/core/views.hpp"

namespace ism {

// One sequence of a paged cache. Cheap to copy; it points into the pool and the
// block table, which must outlive it (and not change while attention runs).
template <class T>
class PagedKV {
 public:
  PagedKV() = default;
  // k_pages, v_pages: num_pages pages of [page_size][heads][dim] each.
  // block_table: ceil(tokens / page_size) page indices, in token order.
  PagedKV(const T* k_pages, const T* v_pages, index_t num_pages, index_t page_size, index_t heads, index_t dim,
          const index_t* block_table, index_t tokens)
      : k_(k_pages), v_(v_pages), table_(block_table), num_pages_(num_pages), page_size_(page_size),
        heads_(heads), dim_(dim), tokens_(tokens) {}

  // --- the KV-source interface (attention/kv_source.hpp) ---
  index_t tokens() const { return tokens_; }
  index_t heads() const { return heads_; }
  index_t dim() const { return dim_; }
  const T* key(index_t t, index_t h) const { return k_ + offset(t, h); }
  const T* value(index_t t, index_t h) const { return v_ + offset(t, h); }

  index_t page_size() const { return page_size_; }
  index_t num_pages() const { return num_pages_; }
  index_t num_blocks() const { return tokens_ == 0 ? 0 : (tokens_ - 1) / page_size_ + 1; }
  const index_t* block_table() const { return table_; }
  const T* k_pages() const { return k_; }
  const T* v_pages() const { return v_; }

 private:
  index_t offset(index_t t, index_t h) const {
    const index_t page = table_[t / page_size_];
    return ((page * page_size_ + t % page_size_) * heads_ + h) * dim_;
  }

  const T* k_ = nullptr;
  const T* v_ = nullptr;
  const index_t* table_ = nullptr;
  index_t num_pages_ = 0, page_size_ = 0, heads_ = 0, dim_ = 0, tokens_ = 0;
};

namespace detail {

// A pool of num_pages pages seen as one [num_pages * page_size, heads, dim]
// view: the byte range the pages occupy, for the overlap checks.
template <class T>
HeadsView<const T> pool_view(const T* pages, index_t num_pages, index_t page_size, index_t heads, index_t dim) {
  return {pages, num_pages * page_size, heads, dim, heads * dim, dim};
}

template <class T>
void check_paged_kv(const char* where, const PagedKV<T>& kv) {
  if (kv.page_size() <= 0) fail(where, "kv.page_size = ", kv.page_size(), " must be positive");
  if (kv.num_pages() < 0) fail(where, "kv.num_pages = ", kv.num_pages(), " is negative");
  if (kv.tokens() < 0) fail(where, "kv.tokens = ", kv.tokens(), " is negative");
  index_t pool_tokens = 0;
  if (mul_overflows(kv.num_pages(), kv.page_size(), &pool_tokens))
    fail(where, "kv.num_pages * kv.page_size overflows: ", kv.num_pages(), " * ", kv.page_size());
  // pool_view multiplies heads by dim: check them first (a signed overflow
  // there would be undefined behaviour, not an error message).
  if (kv.heads() <= 0) fail(where, "kv.heads = ", kv.heads(), " must be positive");
  if (kv.dim() <= 0) fail(where, "kv.dim = ", kv.dim(), " must be positive");
  index_t row = 0;
  if (mul_overflows(kv.heads(), kv.dim(), &row))
    fail(where, "kv.heads * kv.dim overflows: ", kv.heads(), " * ", kv.dim());
  // The pools as views: heads, dim, null data and address-space overflow are
  // checked the same way as for a contiguous cache.
  check_view(where, "kv.k_pages", pool_view(kv.k_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  check_view(where, "kv.v_pages", pool_view(kv.v_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  if (kv.tokens() == 0) return;
  if (kv.num_blocks() > kv.num_pages())
    fail(where, "kv.tokens = ", kv.tokens(), " needs ", kv.num_blocks(), " pages of ", kv.page_size(),
         " tokens, more than kv.num_pages = ", kv.num_pages());
  if (kv.block_table() == nullptr) fail(where, "kv.block_table is null with kv.tokens = ", kv.tokens());
  for (index_t b = 0; b < kv.num_blocks(); ++b) {
    const index_t page = kv.block_table()[b];
    if (page < 0 || page >= kv.num_pages())
      fail(where, "kv.block_table[", b, "] = ", page, " is outside [0, kv.num_pages = ", kv.num_pages(), ")");
  }
}

}  // namespace detail

// Checks an attention call over a paged cache; throws ism::invalid_argument
// naming the argument and value. The checks of a contiguous call are reused by
// running check_attention on views of the same shapes: q and out as given, K
// and V as the first kv.tokens() rows of their pools (so dims, heads, options,
// q_offset and the mask window are checked with the real n_k), and the whole
// pools for the overlap checks.
template <class T, class Mask>
AttentionShape check_paged_attention(const char* where, HeadsView<const T> q, const PagedKV<T>& kv,
                                     const HeadsView<T>& out, const Mask& mask, const AttentionOptions& opt) {
  detail::check_paged_kv(where, kv);
  // Named for the paged cache here; check_attention would call them k.dim and k.heads.
  detail::check_view(where, "q", q);
  if (kv.dim() != q.dim) detail::fail(where, "kv.dim = ", kv.dim(), " differs from q.dim = ", q.dim);
  if (q.heads % kv.heads() != 0)
    detail::fail(where, "q.heads = ", q.heads, " is not a multiple of kv.heads = ", kv.heads());
  const auto k_pool = detail::pool_view(kv.k_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim());
  const auto v_pool = detail::pool_view(kv.v_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim());
  HeadsView<const T> k_rows = k_pool, v_rows = v_pool;
  k_rows.tokens = v_rows.tokens = kv.tokens();  // within the pools: checked above
  const AttentionShape shape = check_attention(where, q, k_rows, v_rows, out, mask, opt);
  const auto so = detail::check_view(where, "out", out);
  if (so.overlaps(detail::check_view(where, "kv.k_pages", k_pool))) detail::fail(where, "out overlaps kv.k_pages");
  if (so.overlaps(detail::check_view(where, "kv.v_pages", v_pool))) detail::fail(where, "out overlaps kv.v_pages");
  return shape;
}

// In the kernel's per-instruction-set namespace (see attention.hpp), so that
// translation units built for different instruction sets do not define one
// function twice with different bodies.
inline namespace ISM_SIMD_NAMESPACE {

// Same contract as the contiguous ism::attention, with K and V read through the
// block table. Results equal the contiguous call on the same keys bit for bit
// (the kernel packs key tiles row by row from either source).
template <class T, class Mask>
void attention(HeadsView<const detail::type_identity_t<T>> q, const PagedKV<T>& kv, HeadsView<T> out,
               const Mask& mask, const AttentionOptions& opt = {}) {
  const AttentionShape shape = check_paged_attention("ism::attention(paged)", q, kv, out, mask, opt);
  detail::run_attention(q, kv, out, mask, opt, shape);
}

}  // inline namespace ISM_SIMD_NAMESPACE

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
  // end go back to the pool.
  void truncate(index_t seq, index_t tokens) {
    const char* where = "ism::PagedKVCache::truncate";
    Sequence& s = at(where, seq);
    if (tokens < 0 || tokens > s.tokens)
      detail::fail(where, "tokens = ", tokens, " is outside [0, ", s.tokens, "] for sequence ", seq);
    const size_t blocks = static_cast<size_t>((tokens + page_size_ - 1) / page_size_);
    while (s.table.size() > blocks) {
      free_.push_back(s.table.back());
      s.table.pop_back();
    }
    s.tokens = tokens;
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
