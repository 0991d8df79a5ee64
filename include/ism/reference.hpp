#pragma once
// The fp64 reference: the dense definition of masked attention, slow and plain.
// Every fast path is tested against it; it shares no code with the kernels
// beyond the argument checks and the mask policies.
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ism/core/element.hpp"
#include "ism/core/validate.hpp"
#include "ism/mask/dense.hpp"

namespace ism {

// out[t,h,:] = sum_j softmax_j(s_tj) v[j,h/group,:] over the keys j the mask
// allows for absolute row i = q_offset + t, where
//   s_tj = scale * q[t,h,:] . k[j,h/group,:]
//   s_tj = softcap * tanh(s_tj / softcap)     (options.softcap != 0)
//   s_tj = s_tj - alibi_slopes[h] * |i - j|    (options.alibi_slopes)
// and the softmax denominator gains exp(sinks[h]) (options.sinks). Rows that
// see no key get 0 and LSE -infinity (or their sink). Q and K/V element types
// may differ, and so may Out: tests keep the reference output in fp64
// (Out = double, LseT = double).
template <class In, class Out, class LseT, class Mask, class InKV = In>
void reference_attention_into(HeadsView<const In> q, HeadsView<const InKV> k, HeadsView<const InKV> v,
                              HeadsView<Out> out, const Mask& mask, const AttentionOptions& opt, LseT* lse) {
  AttentionOptions checked = opt;
  checked.lse = nullptr;  // typed LSE pointer checked below
  const AttentionShape s = check_attention("ism::reference_attention", q, k, v, out, mask, checked);
  const auto allowed = dense_mask<bool>(mask, s.n_q, s.n_k, s.q_offset);
  std::vector<double> p(static_cast<size_t>(s.n_k)), acc(static_cast<size_t>(s.dim));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (index_t h = 0; h < s.q_heads; ++h) {
    const index_t kh = h / s.group;
    const double sink = opt.sinks ? double(opt.sinks[h]) : neg_inf;
    for (index_t t = 0; t < s.n_q; ++t) {
      const In* qr = q.row(t, h);
      const index_t i = s.q_offset + t;
      // m is the largest score, NaN if any score is NaN: a NaN must reach the
      // output of every row that sees it, not be skipped by `>` and turn the
      // row into an "empty" one.
      double m = neg_inf;
      for (index_t j = 0; j < s.n_k; ++j) {
        if (!allowed(t, j)) continue;
        const InKV* kr = k.row(j, kh);
        double dot = 0;
        for (index_t d = 0; d < s.dim; ++d) dot += double(to_float(qr[d])) * double(to_float(kr[d]));
        double score = double(s.scale) * dot;
        if (opt.softcap != 0.f) score = double(opt.softcap) * std::tanh(score / double(opt.softcap));
        if (opt.alibi_slopes) score -= double(opt.alibi_slopes[h]) * double(i > j ? i - j : j - i);
        p[size_t(j)] = score;
        if (std::isnan(score) || score > m) m = score;  // once NaN, `score > m` is always false
      }
      // No visible key, or only keys scored -inf (which Inf inputs can give):
      // the row sees nothing, as under an additive -inf mask. Output 0, LSE
      // the sink (-inf without one).
      const bool empty = m == neg_inf;
      const double top = empty ? sink : (std::isnan(m) || m >= sink ? m : sink);
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = sink == neg_inf ? 0.0 : std::exp(sink - top);
      for (index_t j = 0; j < s.n_k && !empty; ++j) {
        if (!allowed(t, j)) continue;
        const double w = std::exp(p[size_t(j)] - top);
        sum += w;
        const InKV* vr = v.row(j, kh);
        for (index_t d = 0; d < s.dim; ++d) acc[size_t(d)] += w * double(to_float(vr[d]));
      }
      Out* o = out.row(t, h);
      for (index_t d = 0; d < s.dim; ++d) {
        // Non-finite inputs give whatever the arithmetic gives (NaN or +-Inf),
        // never a silent 0.
        const double x = empty ? 0.0 : acc[size_t(d)] / sum;
        if constexpr (std::is_same_v<Out, double>) o[d] = x;
        else o[d] = from_float<Out>(float(x));
      }
      if (lse) lse[h * s.n_q + t] = empty && sink == neg_inf ? LseT(neg_inf) : LseT(top + std::log(sum));
    }
  }
}

template <class T, class Mask>
void reference_attention(HeadsView<const detail::type_identity_t<T>> q,
                         HeadsView<const detail::type_identity_t<T>> k,
                         HeadsView<const detail::type_identity_t<T>> v, HeadsView<T> out, const Mask& mask,
                         const AttentionOptions& opt = {}) {
  // Full checks (including lse overlap) before anything is written.
  check_attention("ism::reference_attention", q, k, v, out, mask, opt);
  reference_attention_into<T, T, float>(q, k, v, out, mask, opt, opt.lse);
}

// Q/out and K/V of different element types.
template <class TQ, class TK, class Mask, class = std::enable_if_t<!std::is_same_v<TQ, TK>>>
void reference_attention(HeadsView<const TQ> q, HeadsView<const TK> k, HeadsView<const TK> v, HeadsView<TQ> out,
                         const Mask& mask, const AttentionOptions& opt = {}) {
  check_attention("ism::reference_attention", q, k, v, out, mask, opt);
  reference_attention_into<TQ, TQ, float>(q, k, v, out, mask, opt, opt.lse);
}

}  // namespace ism
