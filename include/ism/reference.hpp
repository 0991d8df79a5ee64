#pragma once
// The fp64 reference: the dense definition of masked attention, slow and plain.
// Every fast path is tested against it.
#include <cmath>
#include <limits>
#include <vector>

#include "ism/attention/validate.hpp"
#include "ism/core/element.hpp"

namespace ism {

// out[t,h,:] = sum_j softmax_j(scale * q[t,h,:] . k[j,h/group,:]) v[j,h/group,:]
// over the keys j the mask allows for absolute row q_offset + t. Rows that see
// no key get 0 and LSE -infinity. In and Out element types may differ, so tests
// can keep the reference output in fp64 (Out = double, LseT = double).
template <class In, class Out, class LseT, class Mask>
void reference_attention_into(HeadsView<const In> q, HeadsView<const In> k, HeadsView<const In> v,
                              HeadsView<Out> out, const Mask& mask, const AttentionOptions& opt,
                              LseT* lse) {
  AttentionOptions checked = opt;
  checked.lse = nullptr;  // typed LSE pointer checked below
  const AttentionShape s = check_attention("ism::reference_attention", q, k, v, out, mask, checked);
  const auto allowed = dense_mask<bool>(mask, s.n_q, s.n_k, s.q_offset);
  std::vector<double> p(static_cast<size_t>(s.n_k)), acc(static_cast<size_t>(s.dim));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (index_t h = 0; h < s.q_heads; ++h) {
    const index_t kh = h / s.group;
    for (index_t t = 0; t < s.n_q; ++t) {
      const In* qr = q.row(t, h);
      // m is the largest score, NaN if any score is NaN: a NaN must reach the
      // output of every row that sees it, not be skipped by `>` and turn the
      // row into an "empty" one.
      double m = neg_inf;
      for (index_t j = 0; j < s.n_k; ++j) {
        if (!allowed(t, j)) continue;
        const In* kr = k.row(j, kh);
        double dot = 0;
        for (index_t d = 0; d < s.dim; ++d) dot += double(to_float(qr[d])) * double(to_float(kr[d]));
        const double score = double(s.scale) * dot;
        p[size_t(j)] = score;
        if (std::isnan(score) || score > m) m = score;  // once NaN, `score > m` is always false
      }
      // No visible key, or only keys scored -inf (which Inf inputs can give):
      // the row sees nothing, as under an additive -inf mask. Output 0, LSE -inf.
      const bool empty = m == neg_inf;
      std::fill(acc.begin(), acc.end(), 0.0);
      double sum = 0;
      for (index_t j = 0; j < s.n_k && !empty; ++j) {
        if (!allowed(t, j)) continue;
        const double w = std::exp(p[size_t(j)] - m);
        sum += w;
        const In* vr = v.row(j, kh);
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
      if (lse) lse[h * s.n_q + t] = empty ? LseT(neg_inf) : LseT(m + std::log(sum));
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

}  // namespace ism
