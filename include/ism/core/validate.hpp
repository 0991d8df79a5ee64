#pragma once
// Argument checks shared by every attention entry point. They run before any
// output is touched, so a call that throws writes nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/core/isa.hpp"
#include "ism/core/options.hpp"
#include "ism/core/query_window.hpp"
#include "ism/core/shape.hpp"
#include "ism/core/views.hpp"

namespace ism {
// Per instruction set (core/isa.hpp): these templates are compiled in every
// translation unit that calls ism, with its flags.

namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

// Byte range [first, last) a view touches; checks that it is addressable.
struct ByteSpan {
  std::uintptr_t first = 0, last = 0;
  bool empty() const { return last <= first; }
  bool overlaps(const ByteSpan& o) const { return !empty() && !o.empty() && first < o.last && o.first < last; }
};

template <class T>
ByteSpan check_view(const char* where, const char* name, const HeadsView<T>& v) {
  if (v.tokens < 0) fail(where, name, ".tokens = ", v.tokens, " is negative");
  if (v.heads <= 0) fail(where, name, ".heads = ", v.heads, " must be positive");
  if (v.dim <= 0) fail(where, name, ".dim = ", v.dim, " must be positive");
  if (v.token_stride < 0) fail(where, name, ".token_stride = ", v.token_stride, " is negative");
  if (v.head_stride < 0) fail(where, name, ".head_stride = ", v.head_stride, " is negative");
  if (v.tokens == 0) return {};
  if (v.data == nullptr)
    fail(where, name, ".data is null with ", name, ".tokens = ", v.tokens, ", ", name, ".heads = ", v.heads,
         ", ", name, ".dim = ", v.dim);
  // Largest element offset; it must fit in index_t and in the address space.
  index_t a = 0, b = 0, last = 0;
  if (mul_overflows(v.tokens - 1, v.token_stride, &a) || mul_overflows(v.heads - 1, v.head_stride, &b) ||
      add_overflows(a, b, &last) || add_overflows(last, v.dim, &last) ||
      mul_overflows(last, static_cast<index_t>(sizeof(T)), &last))
    fail(where, name, " spans more than 2^63 bytes (tokens = ", v.tokens, ", heads = ", v.heads,
         ", dim = ", v.dim, ", token_stride = ", v.token_stride, ", head_stride = ", v.head_stride, ")");
  const auto first = reinterpret_cast<std::uintptr_t>(v.data);
  std::uintptr_t end = 0;
  if (__builtin_add_overflow(first, static_cast<std::uintptr_t>(last), &end))
    fail(where, name, " runs past the end of the address space");
  return {first, end};
}

// The (token, head) rows of a view must not share memory when the library
// writes them: rows handled by different threads would race on the shared
// bytes and the result would depend on scheduling. Accepted are the nestings
// real buffers have, [t][h][d] or [h][t][d] with any padding; a view that
// check_view accepted cannot overflow these sums.
template <class T>
void check_rows_distinct(const char* where, const char* name, const HeadsView<T>& v) {
  if (v.tokens <= 1 && v.heads <= 1) return;
  const index_t heads_extent = (v.heads - 1) * v.head_stride + v.dim;
  const index_t tokens_extent = (v.tokens - 1) * v.token_stride + v.dim;
  const bool token_major =
      (v.heads == 1 || v.head_stride >= v.dim) && (v.tokens == 1 || v.token_stride >= heads_extent);
  const bool head_major =
      (v.tokens == 1 || v.token_stride >= v.dim) && (v.heads == 1 || v.head_stride >= tokens_extent);
  if (!token_major && !head_major)
    fail(where, name, " rows overlap each other (tokens = ", v.tokens, ", heads = ", v.heads, ", dim = ", v.dim,
         ", token_stride = ", v.token_stride, ", head_stride = ", v.head_stride,
         "): every (token, head) row written must have memory of its own");
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

// Byte range of n floats at p (empty for a null p).
inline ByteSpan float_span(const float* p, index_t n) {
  if (p == nullptr || n <= 0) return {};
  const auto first = reinterpret_cast<std::uintptr_t>(p);
  return {first, first + static_cast<std::uintptr_t>(n) * sizeof(float)};
}

// Largest absolute position (and so distance) ALiBi may see: the kernels
// compute |i - j| in fp32 relative to a key tile, exact below 2^24. Models
// with ALiBi (BLOOM, MPT) run far shorter contexts.
inline constexpr index_t alibi_max_position = index_t(1) << 24;

// The call's positions fit ALiBi's fp32 distances. Needs no read of the
// slopes, so the CUDA entry (whose slopes are in device memory) calls it too.
inline void check_alibi_positions(const char* where, const AttentionShape& s) {
  if (s.q_offset + s.n_q > alibi_max_position || s.n_k > alibi_max_position)
    fail(where, "options.alibi_slopes with query rows [", s.q_offset, ", ", s.q_offset + s.n_q, ") and n_k = ", s.n_k,
         ": ALiBi distances are computed in fp32, exact only below 2^24 = ", alibi_max_position, " positions");
}

// The score modifiers of AttentionOptions: their values (O(q_heads) reads)
// and that the output does not overlap them. The kernels work in log2 units,
// so every value is checked to stay finite once multiplied by log2(e).
inline void check_modifiers(const char* where, const AttentionOptions& opt, const AttentionShape& s,
                            const ByteSpan& out) {
  constexpr float log2e = 1.4426950408889634f;
  auto finite_in_log2 = [&](float x) { return std::isfinite(x * log2e); };
  if (!std::isfinite(opt.softcap) || opt.softcap < 0.f || !finite_in_log2(opt.softcap))
    fail(where, "options.softcap = ", opt.softcap, " must be finite, below FLT_MAX / log2(e), and >= 0 (0: off)");
  if (opt.softcap > 0.f && !std::isfinite(s.scale / opt.softcap))
    fail(where, "options.softcap = ", opt.softcap, " is too small for scale = ", s.scale,
         " (scale / softcap overflows)");
  for (index_t h = 0; opt.sinks && h < s.q_heads; ++h)
    if (std::isnan(opt.sinks[h]) || opt.sinks[h] == std::numeric_limits<float>::infinity() ||
        (opt.sinks[h] != -std::numeric_limits<float>::infinity() && !finite_in_log2(opt.sinks[h])))
      fail(where, "options.sinks[", h, "] = ", opt.sinks[h],
           " must be finite and below FLT_MAX / log2(e) in magnitude, or -infinity (no sink)");
  for (index_t h = 0; opt.alibi_slopes && h < s.q_heads; ++h)
    if (!std::isfinite(opt.alibi_slopes[h]) || !finite_in_log2(opt.alibi_slopes[h]))
      fail(where, "options.alibi_slopes[", h, "] = ", opt.alibi_slopes[h],
           " must be finite and below FLT_MAX / log2(e) in magnitude");
  if (opt.alibi_slopes) check_alibi_positions(where, s);
  if (out.overlaps(float_span(opt.sinks, s.q_heads))) fail(where, "out overlaps options.sinks");
  if (out.overlaps(float_span(opt.alibi_slopes, s.q_heads))) fail(where, "out overlaps options.alibi_slopes");
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

inline namespace ISM_SIMD_NAMESPACE {

// Checks every argument of an attention call; throws ism::invalid_argument
// naming the argument and its value. Out must not overlap q, k, v or lse
// (checked on the byte ranges the views span).
template <class Q, class KV, class O, class Mask>
AttentionShape check_attention(const char* where, const HeadsView<Q>& q, const HeadsView<KV>& k,
                               const HeadsView<KV>& v, const HeadsView<O>& out, const Mask& mask,
                               const AttentionOptions& opt) {
  using detail::fail;
  const auto sq = detail::check_view(where, "q", q);
  const auto sk = detail::check_view(where, "k", k);
  const auto sv = detail::check_view(where, "v", v);
  const auto so = detail::check_view(where, "out", out);
  if (k.dim != q.dim) fail(where, "k.dim = ", k.dim, " differs from q.dim = ", q.dim);
  if (v.dim != q.dim) fail(where, "v.dim = ", v.dim, " differs from q.dim = ", q.dim);
  if (out.dim != q.dim) fail(where, "out.dim = ", out.dim, " differs from q.dim = ", q.dim);
  if (v.tokens != k.tokens) fail(where, "v.tokens = ", v.tokens, " differs from k.tokens = ", k.tokens);
  if (out.tokens != q.tokens) fail(where, "out.tokens = ", out.tokens, " differs from q.tokens = ", q.tokens);
  if (v.heads != k.heads) fail(where, "v.heads = ", v.heads, " differs from k.heads = ", k.heads);
  if (out.heads != q.heads) fail(where, "out.heads = ", out.heads, " differs from q.heads = ", q.heads);
  if (q.heads % k.heads != 0)
    fail(where, "q.heads = ", q.heads, " is not a multiple of k.heads = ", k.heads);
  if (opt.threads < 0) fail(where, "options.threads = ", opt.threads, " is negative");
  if (!std::isfinite(opt.scale)) fail(where, "options.scale = ", opt.scale, " is not finite");
  if (opt.q_offset < -1) fail(where, "options.q_offset = ", opt.q_offset, " is negative (use -1 for the default)");

  AttentionShape s;
  s.n_q = q.tokens;
  s.n_k = k.tokens;
  s.q_heads = q.heads;
  s.kv_heads = k.heads;
  s.group = q.heads / k.heads;
  s.dim = q.dim;
  s.q_offset = opt.q_offset;
  if (s.q_offset == -1) {
    s.q_offset = k.tokens - q.tokens;
    if (s.q_offset < 0)
      fail(where, "q.tokens = ", q.tokens, " exceeds k.tokens = ", k.tokens,
           " (the default q_offset = k.tokens - q.tokens would be negative; pass options.q_offset)");
  }
  detail::check_window(where, mask, s.n_q, s.n_k, s.q_offset);
  s.scale = opt.scale != 0.f ? opt.scale : 1.f / std::sqrt(static_cast<float>(s.dim));

  // After the shape checks, so that a wrong dim is reported as such.
  if (out.tokens > 0) detail::check_rows_distinct(where, "out", out);
  if (so.overlaps(sq)) fail(where, "out overlaps q (in-place attention is not supported)");
  if (so.overlaps(sk)) fail(where, "out overlaps k");
  if (so.overlaps(sv)) fail(where, "out overlaps v");
  detail::check_modifiers(where, opt, s, so);
  if (opt.lse != nullptr && s.n_q > 0) {
    index_t n = 0;
    if (detail::mul_overflows(s.q_heads, s.n_q, &n) || detail::mul_overflows(n, index_t(sizeof(float)), &n))
      fail(where, "options.lse size q.heads * q.tokens overflows");
    const detail::ByteSpan sl = detail::float_span(opt.lse, s.q_heads * s.n_q);
    if (sl.overlaps(so)) fail(where, "options.lse overlaps out");
    if (sl.overlaps(sq) || sl.overlaps(sk) || sl.overlaps(sv)) fail(where, "options.lse overlaps an input");
    if (sl.overlaps(detail::float_span(opt.sinks, s.q_heads)) ||
        sl.overlaps(detail::float_span(opt.alibi_slopes, s.q_heads)))
      fail(where, "options.lse overlaps an input");
  }
  return s;
}

}  // inline namespace ISM_SIMD_NAMESPACE

namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

// The memory one request of a batch reads (q, k, v: for a paged cache its
// pools, and its block table) and writes (out, lse).
struct RequestSpans {
  ByteSpan q, k, v, out, lse;
  ByteSpan table;  // a paged cache's block table (empty otherwise)
};

// Requests of one batch run at the same time, so no request may write memory
// that another request reads or writes (each request's own views were checked
// by check_attention). Written spans (out, lse) are sorted once; every span then
// finds the written spans it meets by binary search: O(R log R) for R requests.
// `requests` is any vector of RequestSpans (the CPU path passes an isa_vector,
// core/isa_vector.hpp, which makes this instantiation its unit's own).
template <class Requests>
void check_requests_disjoint(const char* where, const Requests& requests) {
  struct Span {
    ByteSpan bytes;
    size_t request;
    const char* name;
  };
  std::vector<Span> written, all;
  for (size_t i = 0; i < requests.size(); ++i) {
    const RequestSpans& r = requests[i];
    written.push_back({r.out, i, "out"});
    written.push_back({r.lse, i, "lse"});
    all.push_back({r.q, i, "q"});
    all.push_back({r.k, i, "k"});
    all.push_back({r.v, i, "v"});
    all.push_back({r.table, i, "kv.block_table"});
  }
  all.insert(all.end(), written.begin(), written.end());
  written.erase(std::remove_if(written.begin(), written.end(), [](const Span& s) { return s.bytes.empty(); }),
                written.end());
  std::sort(written.begin(), written.end(), [](const Span& a, const Span& b) { return a.bytes.first < b.bytes.first; });
  for (size_t w = 1; w < written.size(); ++w)
    if (written[w - 1].bytes.overlaps(written[w].bytes) && written[w - 1].request != written[w].request)
      fail(where, "requests[", written[w].request, "].", written[w].name, " overlaps requests[",
           written[w - 1].request, "].", written[w - 1].name, " (requests run at the same time)");
  // Written spans of different requests are now disjoint, so sorted by first
  // they are sorted by last too.
  for (const Span& s : all) {
    auto it = std::partition_point(written.begin(), written.end(),
                                   [&](const Span& w) { return w.bytes.last <= s.bytes.first; });
    for (; it != written.end() && it->bytes.first < s.bytes.last; ++it)
      if (it->request != s.request && it->bytes.overlaps(s.bytes))
        fail(where, "requests[", it->request, "].", it->name, " overlaps requests[", s.request, "].", s.name,
             " (requests run at the same time)");
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

}  // namespace ism
