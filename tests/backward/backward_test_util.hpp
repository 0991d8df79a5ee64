#pragma once
// Helpers of the backward tests: a problem (q, k, v, dout and the forward's
// out and LSE, in any element type and layout), the kernel's gradients, the
// fp64 reference gradients, and an error bound per gradient element.
//
// The bound. An fp32 sum of terms has a rounding error of at most a few ulps
// times the sum of the terms' magnitudes, so each gradient element's bound is
// f * M with M its magnitude sum (computed here in fp64, independently of the
// reference):
//   mS_ij = P_ij (|dP_ij - D_i| + sum_d |dO_id v_jd| + sum_d |dO_id O_id|)
//           (dS and the two dot products it is made of)
//   M(dq_id) = scale sum_j mS_ij |k_jd|,  M(dk_jd) = scale sum_i mS_ij |q_id|,
//   M(dv_jd) = sum_i P_ij |dO_id|
// and f = eps * (c1 sqrt(dim) (1 + score magnitude) + c2 log2(n_k) + c3 +
// c4 |logits|): the dot products of dim terms (random-walk rounding), a score
// error of sqrt(dim) eps |score| changing P by that factor, sums over keys,
// P = exp(z - lse) from fp32 z and lse of magnitude |logits|. A kernel
// bug (a dropped tile or key, a wrong mask edge) moves a gradient by a
// sizeable fraction of M, far beyond f * M.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/kernel_test_util.hpp"  // first: it defines the forward kernel's visit hook
#include "common/testing.hpp"
#include "ism/attention/backward.hpp"
#include "ism/reference_backward.hpp"

namespace ism_test {

constexpr double eps32 = 5.96e-8;  // 2^-24

template <class T>
double ulp_of() {
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return 0x1p-8;
  else if constexpr (std::is_same_v<T, Eigen::half>) return 0x1p-11;
  else return 0.0;
}

// The spacing of T's subnormals: what rounding a tiny gradient to T may cost
// in absolute terms (fp16's smallest normal is 2^-14).
template <class T>
double tiny_of() {
  if constexpr (std::is_same_v<T, Eigen::half>) return 0x1p-24;
  else return 1e-30;
}

struct BwdSizes {
  index_t n_q, n_k, q_offset, heads, kv_heads, dim;
  int layout;
  std::string describe() const {
    return "n_q=" + std::to_string(n_q) + " n_k=" + std::to_string(n_k) + " q_offset=" + std::to_string(q_offset) +
           " heads=" + std::to_string(heads) + "/" + std::to_string(kv_heads) + " dim=" + std::to_string(dim) +
           " layout=" + std::to_string(layout);
  }
};

// One backward problem in element type T: inputs, the forward's out and LSE
// (from ism::attention in T), the kernel's gradients.
template <class T>
struct BwdProblem {
  BwdSizes s;
  Tensor<T> q, k, v, out, dout, dq, dk, dv;
  std::vector<float> lse;
  ism::AttentionOptions opt;
  explicit BwdProblem(const BwdSizes& z)
      : s(z),
        q(z.n_q, z.heads, z.dim, z.layout != 1, z.layout == 2 ? 3 : 0),
        k(z.n_k, z.kv_heads, z.dim, z.layout != 1, z.layout == 2 ? 5 : 0),
        v(z.n_k, z.kv_heads, z.dim, z.layout == 0, z.layout == 2 ? 1 : 0),
        out(z.n_q, z.heads, z.dim, z.layout != 1, z.layout == 2 ? 2 : 0),
        dout(z.n_q, z.heads, z.dim, z.layout == 0, z.layout == 2 ? 4 : 0),
        dq(z.n_q, z.heads, z.dim, z.layout != 1, z.layout == 2 ? 1 : 0),
        dk(z.n_k, z.kv_heads, z.dim, z.layout == 0, z.layout == 2 ? 2 : 0),
        dv(z.n_k, z.kv_heads, z.dim, z.layout != 1, z.layout == 2 ? 3 : 0),
        lse(size_t(z.heads * z.n_q), 0.f) {
    opt.q_offset = z.q_offset;
  }
  void fill(Rng& rng, double amp_qk = 2, double amp_v = 1) {
    q.fill_random(rng, -amp_qk, amp_qk);
    k.fill_random(rng, -amp_qk, amp_qk);
    v.fill_random(rng, -amp_v, amp_v);
    dout.fill_random(rng, -1, 1);
  }
  // The forward (its out and LSE), then the backward, with `threads` threads.
  template <class Mask>
  void run(const Mask& mask, int threads = 1) {
    ism::AttentionOptions o = opt;
    o.lse = lse.data();
    o.threads = threads;
    ism::attention<T>(q.cview(), k.cview(), v.cview(), out.view, mask, o);
    backward(mask, threads);
  }
  template <class Mask>
  void backward(const Mask& mask, int threads = 1, const ism::ParallelFor& pf = {}) {
    ism::AttentionOptions o = opt;
    o.threads = threads;
    o.parallel_for = pf;
    ism::attention_backward<T>(q.cview(), k.cview(), v.cview(), out.cview(), dout.cview(), lse.data(), dq.view,
                               dk.view, dv.view, mask, o);
  }
};

struct Grads64 {
  Tensor<double> dq, dk, dv;
  Grads64(const BwdSizes& s)
      : dq(s.n_q, s.heads, s.dim), dk(s.n_k, s.kv_heads, s.dim), dv(s.n_k, s.kv_heads, s.dim) {}
};

template <class T, class Mask>
Grads64 reference_grads(const BwdProblem<T>& p, const Mask& mask) {
  Grads64 g(p.s);
  ism::reference_attention_backward_into<T, T, double>(p.q.cview(), p.k.cview(), p.v.cview(), p.dout.cview(),
                                                       g.dq.view, g.dk.view, g.dv.view, mask, p.opt);
  return g;
}

// The magnitude sums M of every gradient element (see the top of the file)
// and the largest score magnitude scale * sum_d |q_d k_d|.
struct Magnitudes {
  Grads64 m;
  double score_mag = 0;
  double logit_mag = 0;  // largest |score| after the modifiers, and |LSE|
  explicit Magnitudes(const BwdSizes& s) : m(s) {}
};

template <class T, class Mask>
Magnitudes magnitudes(const BwdProblem<T>& p, const Mask& mask) {
  const BwdSizes& s = p.s;
  Magnitudes r(s);
  const index_t group = s.heads / s.kv_heads;
  const double scale = p.opt.scale != 0.f ? p.opt.scale : 1.0 / std::sqrt(double(s.dim));
  auto x = [](auto v) { return double(ism::to_float(v)); };
  std::vector<double> z(size_t(s.n_k)), pr(size_t(s.n_k)), dp(size_t(s.n_k)), o(size_t(s.dim));
  for (index_t h = 0; h < s.heads; ++h) {
    const index_t g = h / group;
    for (index_t t = 0; t < s.n_q; ++t) {
      const index_t i = s.q_offset + t;
      const ism::KeyRange keys = ism::visible_keys(mask, i, s.n_k);
      double mx = -std::numeric_limits<double>::infinity();
      for (index_t j = keys.begin; j < keys.end; ++j) {
        double dot = 0, mag = 0;
        for (index_t d = 0; d < s.dim; ++d) {
          dot += x(p.q.view(t, h, d)) * x(p.k.view(j, g, d));
          mag += std::abs(x(p.q.view(t, h, d)) * x(p.k.view(j, g, d)));
        }
        r.score_mag = std::max(r.score_mag, scale * mag);
        double sc = scale * dot;
        if (p.opt.softcap != 0.f) sc = p.opt.softcap * std::tanh(sc / p.opt.softcap);
        if (p.opt.alibi_slopes) sc -= p.opt.alibi_slopes[h] * double(std::abs(i - j));
        z[size_t(j)] = sc;
        r.logit_mag = std::max(r.logit_mag, std::abs(sc));
        mx = std::max(mx, sc);
      }
      if (keys.empty()) continue;
      double sum = p.opt.sinks ? std::exp(double(p.opt.sinks[h]) - mx) : 0.0;
      for (index_t j = keys.begin; j < keys.end; ++j) sum += std::exp(z[size_t(j)] - mx);
      r.logit_mag = std::max(r.logit_mag, std::abs(mx + std::log(sum)));
      std::fill(o.begin(), o.end(), 0.0);
      for (index_t j = keys.begin; j < keys.end; ++j) {
        pr[size_t(j)] = std::exp(z[size_t(j)] - mx) / sum;
        for (index_t d = 0; d < s.dim; ++d) o[size_t(d)] += pr[size_t(j)] * x(p.v.view(j, g, d));
      }
      double dd = 0, dd_mag = 0;
      for (index_t d = 0; d < s.dim; ++d) {
        dd += x(p.dout.view(t, h, d)) * o[size_t(d)];
        dd_mag += std::abs(x(p.dout.view(t, h, d)) * o[size_t(d)]);
      }
      for (index_t j = keys.begin; j < keys.end; ++j) {
        double dpj = 0, dp_mag = 0;
        for (index_t d = 0; d < s.dim; ++d) {
          dpj += x(p.dout.view(t, h, d)) * x(p.v.view(j, g, d));
          dp_mag += std::abs(x(p.dout.view(t, h, d)) * x(p.v.view(j, g, d)));
        }
        const double ms = pr[size_t(j)] * (std::abs(dpj - dd) + dp_mag + dd_mag);
        for (index_t d = 0; d < s.dim; ++d) {
          r.m.dq.view(t, h, d) += scale * ms * std::abs(x(p.k.view(j, g, d)));
          r.m.dk.view(j, g, d) += scale * ms * std::abs(x(p.q.view(t, h, d)));
          r.m.dv.view(j, g, d) += pr[size_t(j)] * std::abs(x(p.dout.view(t, h, d)));
        }
      }
    }
  }
  return r;
}

// Relative error factor f of the bound f * M for element type T; the
// constants were set from the largest errors seen over many seeds on every
// instruction set (they stay below a quarter of the bound).
template <class T>
double error_factor(const BwdSizes& s, const Magnitudes& mg, float softcap) {
  double f = eps32 * (2.0 * std::sqrt(double(s.dim)) * (1.0 + mg.score_mag) + 2.0 * std::log2(double(s.n_k) + 2.0) + 8.0);
  // P = exp(z - lse) from fp32 z and lse: a few ulps of their magnitude (the
  // ALiBi term makes them large where the dot products are small).
  f += 4.0 * eps32 * mg.logit_mag;
  // The softcap's tanh is good to a few ulps of 1, times the cap.
  if (softcap != 0.f) f += 8.0 * eps32 * (1.0 + softcap);
  return f + 2.0 * ulp_of<T>();
}

// Largest |got - want| / (f * M + ulp_T |want| + tiny) over a gradient (NaN:
// infinite); a value above 1 fails.
template <class T>
double worst_ratio(const Tensor<T>& got, const Tensor<double>& want, const Tensor<double>& mag, double f,
                   std::string* where) {
  double worst = 0;
  for (index_t a = 0; a < want.view.tokens; ++a)
    for (index_t h = 0; h < want.view.heads; ++h)
      for (index_t d = 0; d < want.view.dim; ++d) {
        const double g = double(ism::to_float(got.view(a, h, d))), w = want.view(a, h, d);
        const double bound = f * mag.view(a, h, d) + ulp_of<T>() * std::abs(w) + tiny_of<T>();
        const double r = std::isfinite(g) ? std::abs(g - w) / bound : std::numeric_limits<double>::infinity();
        if (r > worst) {
          worst = r;
          *where = "token " + std::to_string(a) + " head " + std::to_string(h) + " d " + std::to_string(d) + ": got " +
                   std::to_string(g) + " want " + std::to_string(w) + " bound " + std::to_string(bound);
        }
      }
  return worst;
}

// Checks the kernel's gradients of p against the reference; returns the worst
// error / bound ratio over dq, dk and dv.
template <class T, class Mask>
double check_against_reference(const BwdProblem<T>& p, const Mask& mask) {
  const Grads64 want = reference_grads(p, mask);
  const Magnitudes mg = magnitudes(p, mask);
  const double f = error_factor<T>(p.s, mg, p.opt.softcap);
  double worst = 0;
  for (int which = 0; which < 3; ++which) {
    std::string where;
    const char* name = which == 0 ? "dq" : which == 1 ? "dk" : "dv";
    const double r = which == 0   ? worst_ratio(p.dq, want.dq, mg.m.dq, f, &where)
                     : which == 1 ? worst_ratio(p.dk, want.dk, mg.m.dk, f, &where)
                                  : worst_ratio(p.dv, want.dv, mg.m.dv, f, &where);
    EXPECT_LE(r, 1.0) << name << " at " << where;
    worst = std::max(worst, r);
  }
  return worst;
}

}  // namespace ism_test
