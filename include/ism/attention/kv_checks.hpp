#pragma once
// The argument checks of one attention call, for each KV source: everything
// check_attention checks (core/validate.hpp), and the memory the call reads
// and writes, for the overlap checks between the requests of a batch.
// Throws ism::invalid_argument naming the argument and value; nothing is
// written by a call that throws.
#include "ism/core/validate.hpp"
#include "ism/kv/contiguous.hpp"
#include "ism/kv/paged_view.hpp"

namespace ism::detail {
inline namespace ISM_SIMD_NAMESPACE {

struct CheckedCall {
  AttentionShape shape;
  RequestSpans spans;
};

template <class TQ, class TK, class Mask>
CheckedCall check_call(const char* where, HeadsView<const TQ> q, const ContiguousKV<TK>& kv, HeadsView<TQ> out,
                       const Mask& mask, const AttentionOptions& opt) {
  CheckedCall c;
  c.shape = check_attention(where, q, kv.k, kv.v, out, mask, opt);
  c.spans = {check_view(where, "q", q), check_view(where, "k", kv.k), check_view(where, "v", kv.v),
             check_view(where, "out", out), float_span(opt.lse, c.shape.q_heads * c.shape.n_q), ByteSpan{}};
  return c;
}

// A paged cache reuses the contiguous checks on views of the same shapes: q
// and out as given, K and V as the first kv.tokens() rows of their pools (so
// dims, heads, options, q_offset and the mask window are checked with the real
// n_k), and the whole pools for the overlap checks.
template <class TQ, class TK, class I, class Mask>
CheckedCall check_call(const char* where, HeadsView<const TQ> q, const PagedKV<TK, I>& kv, HeadsView<TQ> out,
                       const Mask& mask, const AttentionOptions& opt) {
  const auto pools = check_paged_kv(where, kv);
  // Named for the paged cache here; check_attention would call them k.dim and k.heads.
  const ByteSpan sq = check_view(where, "q", q);
  if (kv.dim() != q.dim) fail(where, "kv.dim = ", kv.dim(), " differs from q.dim = ", q.dim);
  if (q.heads % kv.heads() != 0) fail(where, "q.heads = ", q.heads, " is not a multiple of kv.heads = ", kv.heads());
  HeadsView<const TK> k_rows = pool_view(kv.k_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim());
  HeadsView<const TK> v_rows = pool_view(kv.v_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim());
  k_rows.tokens = v_rows.tokens = kv.tokens();  // within the pools: checked above
  // Before check_attention, which would find an overlap with the first pages
  // and name it "k".
  const ByteSpan so = check_view(where, "out", out);
  if (so.overlaps(pools.first)) fail(where, "out overlaps kv.k_pages");
  if (so.overlaps(pools.second)) fail(where, "out overlaps kv.v_pages");
  CheckedCall c;
  c.shape = check_attention(where, q, k_rows, v_rows, out, mask, opt);
  const ByteSpan sl = float_span(opt.lse, c.shape.q_heads * c.shape.n_q);
  if (sl.overlaps(pools.first) || sl.overlaps(pools.second)) fail(where, "options.lse overlaps an input");
  // The table is read while out and lse are written.
  const ByteSpan st = block_table_span(kv);
  if (so.overlaps(st)) fail(where, "out overlaps kv.block_table");
  if (sl.overlaps(st)) fail(where, "options.lse overlaps kv.block_table");
  c.spans = {sq, pools.first, pools.second, so, sl, st};
  return c;
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::detail
