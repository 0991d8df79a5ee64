#pragma once
// The fp64 reference of the attention backward pass: the dense definition,
// slow and plain, written from the math and sharing no code with the kernels
// (only the argument checks and the mask policies). It recomputes the
// forward in fp64 from q, k, v (the out and lse arguments of the public
// spelling are checked, not read), so it is the exact gradient of the fp64
// reference forward, which reference_attention_forward64 below exposes for
// finite-difference checks.
//
// For each query head h and row t (absolute position i = q_offset + t) with
// visible keys J:
//   s_j = scale * q . k_j;  z_j = softcap * tanh(s_j / softcap) (if on);
//   z_j -= slope_h * |i - j| (ALiBi);  P_j = exp(z_j - lse),
//   lse = log(sum_J exp(z_j) + exp(sink_h));
//   dP_j = dout . v_j;  D = sum_J P_j dP_j (= dout . out);
//   dz_j = P_j (dP_j - D);  ds_j = dz_j * (1 - tanh^2(s_j / softcap)) (if on);
//   dq += scale * ds_j k_j;  dk_j += scale * ds_j q;  dv_j += P_j dout.
// A row that sees no key (or only keys scored -inf) has out 0 and adds
// nothing. Sinks join the normalisation only (no gradient for them).
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ism/core/element.hpp"
#include "ism/core/validate.hpp"
#include "ism/core/validate_backward.hpp"

namespace ism {

namespace detail {

template <class T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, double>) return x;
  else return double(to_float(x));
}

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, double>) return x;
  else return from_float<T>(float(x));
}

// The fp64 scores and softmax of one row: z over the visible keys (the rest
// untouched), P, the row's LSE; returns false if the row sees nothing.
template <class In, class InKV>
bool reference_row(HeadsView<const In> q, HeadsView<const InKV> k, const AttentionShape& s,
                   const AttentionOptions& opt, const std::vector<char>& allowed, index_t t, index_t h,
                   std::vector<double>& z, std::vector<double>& th, std::vector<double>& p, double* lse) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  const index_t i = s.q_offset + t, kh = h / s.group;
  double m = neg_inf;
  for (index_t j = 0; j < s.n_k; ++j) {
    if (!allowed[size_t(j)]) continue;
    double dot = 0;
    for (index_t d = 0; d < s.dim; ++d) dot += to_double(q(t, h, d)) * to_double(k(j, kh, d));
    double score = double(s.scale) * dot;
    if (opt.softcap != 0.f) {
      th[size_t(j)] = std::tanh(score / double(opt.softcap));
      score = double(opt.softcap) * th[size_t(j)];
    }
    if (opt.alibi_slopes) score -= double(opt.alibi_slopes[h]) * double(i > j ? i - j : j - i);
    z[size_t(j)] = score;
    if (std::isnan(score) || score > m) m = score;
  }
  const double sink = opt.sinks ? double(opt.sinks[h]) : neg_inf;
  if (m == neg_inf) {
    *lse = sink;
    return false;
  }
  const double top = std::isnan(m) || m >= sink ? m : sink;
  double sum = sink == neg_inf ? 0.0 : std::exp(sink - top);
  for (index_t j = 0; j < s.n_k; ++j)
    if (allowed[size_t(j)]) sum += std::exp(z[size_t(j)] - top);
  *lse = top + std::log(sum);
  for (index_t j = 0; j < s.n_k; ++j)
    if (allowed[size_t(j)]) p[size_t(j)] = std::exp(z[size_t(j)] - *lse);
  return true;
}

template <class Mask>
std::vector<char> allowed_row(const Mask& mask, const AttentionShape& s, index_t t) {
  std::vector<char> a(static_cast<size_t>(s.n_k), 0);
  const index_t i = s.q_offset + t;
  for (index_t j = 0; j < s.n_k; ++j) a[size_t(j)] = mask.allowed(i, j) ? 1 : 0;
  return a;
}

}  // namespace detail

// The forward in fp64 throughout (inputs widened exactly, fp64 outputs): the
// function whose gradient reference_attention_backward_into computes. Unlike
// reference_attention_into, double inputs are read as double, so finite
// differences of it in fp64 are accurate to ~1e-10.
template <class In, class InKV, class Mask>
void reference_attention_forward64(HeadsView<const In> q, HeadsView<const InKV> k, HeadsView<const InKV> v,
                                   HeadsView<double> out, const Mask& mask, const AttentionOptions& opt,
                                   double* lse = nullptr) {
  AttentionOptions o = opt;
  o.lse = nullptr;
  const AttentionShape s = check_attention("ism::reference_attention_forward64", q, k, v, out, mask, o);
  std::vector<double> z(size_t(s.n_k)), th(size_t(s.n_k)), p(size_t(s.n_k));
  for (index_t t = 0; t < s.n_q; ++t) {
    const std::vector<char> allowed = detail::allowed_row(mask, s, t);
    for (index_t h = 0; h < s.q_heads; ++h) {
      double l = 0;
      const bool any = detail::reference_row(q, k, s, opt, allowed, t, h, z, th, p, &l);
      if (lse) lse[h * s.n_q + t] = l;
      for (index_t d = 0; d < s.dim; ++d) {
        double acc = 0;
        for (index_t j = 0; any && j < s.n_k; ++j)
          if (allowed[size_t(j)]) acc += p[size_t(j)] * detail::to_double(v(j, h / s.group, d));
        out(t, h, d) = acc;
      }
    }
  }
}

// dq, dk, dv of the loss sum(dout * out) in fp64, written as Out (double
// keeps them exact for tests). Checks shapes; writes nothing on bad input.
template <class In, class InKV, class Out, class Mask>
void reference_attention_backward_into(HeadsView<const In> q, HeadsView<const InKV> k, HeadsView<const InKV> v,
                                       HeadsView<const In> dout, HeadsView<Out> dq, HeadsView<Out> dk,
                                       HeadsView<Out> dv, const Mask& mask, const AttentionOptions& opt) {
  const char* where = "ism::reference_attention_backward";
  AttentionOptions o = opt;
  o.lse = nullptr;
  const AttentionShape s = check_attention(where, q, k, v, dout, mask, o);
  detail::check_same_shape(where, "dq", dq, "q", q);
  detail::check_same_shape(where, "dk", dk, "k", k);
  detail::check_same_shape(where, "dv", dv, "v", v);
  const index_t kd = s.kv_heads * s.dim;
  std::vector<double> gk(size_t(s.n_k * kd), 0.0), gv(gk.size(), 0.0), gq(size_t(s.dim));
  std::vector<double> z(size_t(s.n_k)), th(size_t(s.n_k)), p(size_t(s.n_k)), dp(size_t(s.n_k));
  for (index_t t = 0; t < s.n_q; ++t) {
    const std::vector<char> allowed = detail::allowed_row(mask, s, t);
    for (index_t h = 0; h < s.q_heads; ++h) {
      const index_t kh = h / s.group;
      std::fill(gq.begin(), gq.end(), 0.0);
      double l = 0;
      if (detail::reference_row(q, k, s, opt, allowed, t, h, z, th, p, &l)) {
        double dd = 0;
        for (index_t j = 0; j < s.n_k; ++j) {
          if (!allowed[size_t(j)]) continue;
          double x = 0;
          for (index_t d = 0; d < s.dim; ++d) x += detail::to_double(dout(t, h, d)) * detail::to_double(v(j, kh, d));
          dp[size_t(j)] = x;
          dd += p[size_t(j)] * x;
        }
        for (index_t j = 0; j < s.n_k; ++j) {
          if (!allowed[size_t(j)]) continue;
          double ds = p[size_t(j)] * (dp[size_t(j)] - dd);
          if (opt.softcap != 0.f) ds *= 1.0 - th[size_t(j)] * th[size_t(j)];
          for (index_t d = 0; d < s.dim; ++d) {
            gq[size_t(d)] += double(s.scale) * ds * detail::to_double(k(j, kh, d));
            gk[size_t(j * kd + kh * s.dim + d)] += double(s.scale) * ds * detail::to_double(q(t, h, d));
            gv[size_t(j * kd + kh * s.dim + d)] += p[size_t(j)] * detail::to_double(dout(t, h, d));
          }
        }
      }
      for (index_t d = 0; d < s.dim; ++d) dq(t, h, d) = detail::from_double<Out>(gq[size_t(d)]);
    }
  }
  for (index_t j = 0; j < s.n_k; ++j)
    for (index_t kh = 0; kh < s.kv_heads; ++kh)
      for (index_t d = 0; d < s.dim; ++d) {
        dk(j, kh, d) = detail::from_double<Out>(gk[size_t(j * kd + kh * s.dim + d)]);
        dv(j, kh, d) = detail::from_double<Out>(gv[size_t(j * kd + kh * s.dim + d)]);
      }
}

// The spelling of ism::attention_backward, checked the same way; out and lse
// are checked only (the reference recomputes them in fp64).
template <class T, class Mask>
void reference_attention_backward(HeadsView<const detail::type_identity_t<T>> q,
                                  HeadsView<const detail::type_identity_t<T>> k,
                                  HeadsView<const detail::type_identity_t<T>> v,
                                  HeadsView<const detail::type_identity_t<T>> out,
                                  HeadsView<const detail::type_identity_t<T>> dout, const float* lse, HeadsView<T> dq,
                                  HeadsView<T> dk, HeadsView<T> dv, const Mask& mask,
                                  const AttentionOptions& opt = {}) {
  check_attention_backward("ism::reference_attention_backward", q, k, v, out, dout, lse, dq, dk, dv, mask, opt);
  reference_attention_backward_into<T, T, T>(q, k, v, dout, dq, dk, dv, mask, opt);
}

}  // namespace ism
