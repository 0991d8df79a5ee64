#pragma once
// Argument checks of the attention backward pass: everything the forward
// checks on q, k, v, out, the mask window and the options (validate.hpp),
// then dout, lse and the three gradients. They run before any output is
// touched, so a call that throws writes nothing.
#include "ism/core/validate.hpp"

namespace ism {

namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

template <class A, class B>
void check_same_shape(const char* where, const char* a_name, const HeadsView<A>& a, const char* b_name,
                      const HeadsView<B>& b) {
  if (a.tokens != b.tokens) fail(where, a_name, ".tokens = ", a.tokens, " differs from ", b_name, ".tokens = ", b.tokens);
  if (a.heads != b.heads) fail(where, a_name, ".heads = ", a.heads, " differs from ", b_name, ".heads = ", b.heads);
  if (a.dim != b.dim) fail(where, a_name, ".dim = ", a.dim, " differs from ", b_name, ".dim = ", b.dim);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

inline namespace ISM_SIMD_NAMESPACE {

// Checks every argument of attention_backward; throws ism::invalid_argument
// naming the argument and its value. dq, dk and dv must not overlap each
// other nor any input (q, k, v, out, dout, lse, the modifiers' arrays).
// options.lse, if set, must be the lse argument (a forward's options passed
// on unchanged); the backward pass never writes it.
template <class In, class G, class Mask>
AttentionShape check_attention_backward(const char* where, const HeadsView<In>& q, const HeadsView<In>& k,
                                        const HeadsView<In>& v, const HeadsView<In>& out, const HeadsView<In>& dout,
                                        const float* lse, const HeadsView<G>& dq, const HeadsView<G>& dk,
                                        const HeadsView<G>& dv, const Mask& mask, const AttentionOptions& opt) {
  using detail::fail;
  if (opt.lse != nullptr && opt.lse != lse)
    fail(where, "options.lse must be null or the lse argument (the backward pass reads the LSE from lse)");
  AttentionOptions fwd = opt;
  fwd.lse = nullptr;
  const AttentionShape s = check_attention(where, q, k, v, out, mask, fwd);

  const detail::ByteSpan sdo = detail::check_view(where, "dout", dout);
  detail::check_same_shape(where, "dout", dout, "out", out);
  if (s.n_q > 0 && lse == nullptr)
    fail(where, "lse is null with q.tokens = ", s.n_q, ", q.heads = ", s.q_heads,
         " (pass the LSE the forward returned through options.lse)");
  index_t lse_bytes = 0;
  if (detail::mul_overflows(s.q_heads, s.n_q, &lse_bytes) ||
      detail::mul_overflows(lse_bytes, index_t(sizeof(float)), &lse_bytes))
    fail(where, "lse size q.heads * q.tokens overflows");

  const detail::ByteSpan sdq = detail::check_view(where, "dq", dq);
  const detail::ByteSpan sdk = detail::check_view(where, "dk", dk);
  const detail::ByteSpan sdv = detail::check_view(where, "dv", dv);
  detail::check_same_shape(where, "dq", dq, "q", q);
  detail::check_same_shape(where, "dk", dk, "k", k);
  detail::check_same_shape(where, "dv", dv, "v", v);
  if (dq.tokens > 0) detail::check_rows_distinct(where, "dq", dq);
  if (dk.tokens > 0) detail::check_rows_distinct(where, "dk", dk);
  if (dv.tokens > 0) detail::check_rows_distinct(where, "dv", dv);

  const struct {
    const char* name;
    detail::ByteSpan span;
  } written[] = {{"dq", sdq}, {"dk", sdk}, {"dv", sdv}},
    read[] = {{"q", detail::check_view(where, "q", q)},
              {"k", detail::check_view(where, "k", k)},
              {"v", detail::check_view(where, "v", v)},
              {"out", detail::check_view(where, "out", out)},
              {"dout", sdo},
              {"lse", detail::float_span(lse, s.q_heads * s.n_q)},
              {"options.sinks", detail::float_span(opt.sinks, s.q_heads)},
              {"options.alibi_slopes", detail::float_span(opt.alibi_slopes, s.q_heads)}};
  for (size_t w = 0; w < 3; ++w) {
    for (size_t o = w + 1; o < 3; ++o)
      if (written[w].span.overlaps(written[o].span)) fail(where, written[w].name, " overlaps ", written[o].name);
    for (const auto& r : read)
      if (written[w].span.overlaps(r.span)) fail(where, written[w].name, " overlaps ", r.name);
  }
  return s;
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
