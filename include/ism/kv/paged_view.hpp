#pragma once
// A paged KV cache as serving engines keep it (vLLM's PagedAttention,
// FlashAttention's paged KV): a pool of fixed-size pages, each holding
// `page_size` tokens as [page_size][heads][dim] for K and the same for V, and
// per sequence a block table: token t lives in page block_table[t / page_size]
// at slot t % page_size.
//
// PagedKV is the read-only view of one sequence, a KV source for the kernels
// (kv/contiguous.hpp describes the interface). Many views may share one pool:
// that is how a batch of sequences is attended in one call. Block tables are
// int32 (vLLM, FlashInfer, flash-attention) or int64; the owning allocator is
// kv/paged_cache.hpp.
#include <cstdint>
#include <type_traits>
#include <utility>

#include "ism/core/errors.hpp"
#include "ism/core/validate.hpp"
#include "ism/core/views.hpp"

namespace ism {

// One sequence of a paged cache. Cheap to copy; it points into the pool and the
// block table, which must outlive it (and not change while attention runs).
template <class T, class Index = index_t>
class PagedKV {
  static_assert(std::is_same_v<Index, std::int32_t> || std::is_same_v<Index, std::int64_t>,
                "block tables hold int32 or int64 page indices");

 public:
  using element_type = T;
  using index_type = Index;

  PagedKV() = default;
  // k_pages, v_pages: num_pages pages of [page_size][heads][dim] each.
  // block_table: ceil(tokens / page_size) page indices, in token order.
  PagedKV(const T* k_pages, const T* v_pages, index_t num_pages, index_t page_size, index_t heads, index_t dim,
          const Index* block_table, index_t tokens)
      : k_(k_pages), v_(v_pages), table_(block_table), num_pages_(num_pages), page_size_(page_size),
        heads_(heads), dim_(dim), tokens_(tokens) {}

  // --- the KV-source interface (kv/contiguous.hpp) ---
  index_t tokens() const { return tokens_; }
  index_t heads() const { return heads_; }
  index_t dim() const { return dim_; }
  const T* key(index_t t, index_t h) const { return k_ + offset(t, h); }
  const T* value(index_t t, index_t h) const { return v_ + offset(t, h); }

  index_t page_size() const { return page_size_; }
  index_t num_pages() const { return num_pages_; }
  index_t num_blocks() const { return tokens_ == 0 ? 0 : (tokens_ - 1) / page_size_ + 1; }
  const Index* block_table() const { return table_; }
  const T* k_pages() const { return k_; }
  const T* v_pages() const { return v_; }

 private:
  index_t offset(index_t t, index_t h) const {
    const index_t page = table_[t / page_size_];
    return ((page * page_size_ + t % page_size_) * heads_ + h) * dim_;
  }

  const T* k_ = nullptr;
  const T* v_ = nullptr;
  const Index* table_ = nullptr;
  index_t num_pages_ = 0, page_size_ = 0, heads_ = 0, dim_ = 0, tokens_ = 0;
};

namespace detail {
inline namespace ISM_SIMD_NAMESPACE {  // compiled per instruction set (core/isa.hpp)

// A pool of num_pages pages seen as one [num_pages * page_size, heads, dim]
// view: the byte range the pages occupy, for the overlap checks.
template <class T>
HeadsView<const T> pool_view(const T* pages, index_t num_pages, index_t page_size, index_t heads, index_t dim) {
  return {pages, num_pages * page_size, heads, dim, heads * dim, dim};
}

// Checks a paged view on its own: sizes, pools and every block table entry.
// Returns the pools' byte ranges {k, v}.
template <class T, class I>
std::pair<ByteSpan, ByteSpan> check_paged_kv(const char* where, const PagedKV<T, I>& kv) {
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
  const ByteSpan k = check_view(where, "kv.k_pages",
                                pool_view(kv.k_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  const ByteSpan v = check_view(where, "kv.v_pages",
                                pool_view(kv.v_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  if (kv.tokens() == 0) return {k, v};
  if (kv.num_blocks() > kv.num_pages())
    fail(where, "kv.tokens = ", kv.tokens(), " needs ", kv.num_blocks(), " pages of ", kv.page_size(),
         " tokens, more than kv.num_pages = ", kv.num_pages());
  if (kv.block_table() == nullptr) fail(where, "kv.block_table is null with kv.tokens = ", kv.tokens());
  for (index_t b = 0; b < kv.num_blocks(); ++b) {
    const index_t page = kv.block_table()[b];
    if (page < 0 || page >= kv.num_pages())
      fail(where, "kv.block_table[", b, "] = ", page, " is outside [0, kv.num_pages = ", kv.num_pages(), ")");
  }
  return {k, v};
}

// The bytes of the block table entries a call reads (empty without tokens).
// Call after check_paged_kv, which checked that they exist.
template <class T, class I>
ByteSpan block_table_span(const PagedKV<T, I>& kv) {
  if (kv.tokens() == 0) return {};
  const auto first = reinterpret_cast<std::uintptr_t>(kv.block_table());
  return {first, first + static_cast<std::uintptr_t>(kv.num_blocks()) * sizeof(I)};
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

}  // namespace ism
