#pragma once
// Helpers of the CPU kernel tests: random problems (mask kind, sizes, GQA,
// offsets, layouts), the fp64 reference in fp64 output, error measures.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <variant>

#include "cpu/visit_hook.hpp"  // first: before any ism header
#include "common/testing.hpp"

namespace ism_test {

enum class MaskKind { Full, Causal, Prefix, Ism, Segments, Packed };

inline const char* to_string(MaskKind k) {
  switch (k) {
    case MaskKind::Full: return "full";
    case MaskKind::Causal: return "causal";
    case MaskKind::Prefix: return "prefix";
    case MaskKind::Ism: return "ism";
    case MaskKind::Segments: return "segment_mask";
    default: return "packed+padding";
  }
}

using AnyMask = std::variant<ism::FullMask, ism::CausalMask, ism::PrefixMask, ism::SegmentMask>;

// A mask of the given kind over n positions (layouts cover exactly [0, n)).
inline AnyMask make_mask(MaskKind kind, index_t n, Rng& rng, std::string* desc) {
  switch (kind) {
    case MaskKind::Full: *desc = "full"; return ism::full_mask();
    case MaskKind::Causal: *desc = "causal"; return ism::causal_mask();
    case MaskKind::Prefix: {
      const index_t p = rng.uniform(0, n);
      *desc = "prefix " + std::to_string(p);
      return ism::prefix_mask(p);
    }
    case MaskKind::Ism: {
      std::vector<index_t> b{0};
      while (b.back() < n) b.push_back(std::min(n, b.back() + rng.uniform(1, std::max<index_t>(1, n / 3 + 1))));
      *desc = "ism " + std::to_string(b.size() - 1) + " segments";
      return ism::ism_mask(b, rng.coin() ? ism::Attend::Bidirectional : ism::Attend::Causal);
    }
    case MaskKind::Segments: {
      std::vector<ism::Segment> segs;
      index_t left = n;
      while (left > 0) {
        const index_t len = std::min(left, rng.uniform(1, std::max<index_t>(1, n / 4 + 1)));
        segs.push_back({len, rng.coin() ? ism::Attend::Causal : ism::Attend::Bidirectional});
        left -= len;
      }
      *desc = "segment_mask " + std::to_string(segs.size()) + " segments";
      return ism::segment_mask(segs);
    }
    default: {
      // Documents then padding, summing to n (at least one padding token
      // when n > 1, so some rows see nothing).
      const index_t pad = n > 1 ? rng.uniform(1, std::max<index_t>(1, n / 4)) : 0;
      std::vector<std::vector<ism::Segment>> docs;
      index_t left = n - pad;
      while (left > 0) {
        std::vector<ism::Segment> segs;
        index_t doc_len = std::min(left, rng.uniform(1, std::max<index_t>(1, n / 2)));
        left -= doc_len;
        while (doc_len > 0) {
          const index_t len = std::min(doc_len, rng.uniform(1, std::max<index_t>(1, n / 6 + 1)));
          segs.push_back({len, rng.coin() ? ism::Attend::Causal : ism::Attend::Bidirectional});
          doc_len -= len;
        }
        docs.push_back(segs);
      }
      ism::SegmentMask m;
      for (const auto& d : docs) m.append_document(d);
      if (pad > 0) m.append_padding(pad);
      *desc = "packed " + std::to_string(docs.size()) + " docs + " + std::to_string(pad) + " padding";
      return m;
    }
  }
}

// The vectors of a problem: q [n_q, H, D], k/v [n_k, KH, D] in one of three
// layouts (token-major, head-major, padded strides).
template <class T>
struct Problem {
  index_t n_q, n_k, heads, kv_heads, dim, q_offset;
  Tensor<T> q, k, v, out;
  std::vector<float> lse;
  Problem(index_t nq, index_t nk, index_t h, index_t kh, index_t d, index_t off, int layout)
      : n_q(nq), n_k(nk), heads(h), kv_heads(kh), dim(d), q_offset(off),
        q(nq, h, d, layout != 1, layout == 2 ? 3 : 0),
        k(nk, kh, d, layout != 1, layout == 2 ? 5 : 0),
        v(nk, kh, d, layout == 0, layout == 2 ? 1 : 0),
        out(nq, h, d, layout != 1, layout == 2 ? 2 : 0),
        lse(size_t(h * nq), 0.f) {}
  ism::AttentionOptions options() {
    ism::AttentionOptions o;
    o.q_offset = q_offset;
    o.lse = lse.data();
    return o;
  }
};

// fp64 reference output and LSE of a problem (inputs as stored).
template <class T, class Mask>
void reference(const Problem<T>& p, const Mask& mask, Tensor<double>& out, std::vector<double>& lse,
               float scale = 0.f) {
  ism::AttentionOptions o;
  o.q_offset = p.q_offset;
  o.scale = scale;
  lse.assign(size_t(p.heads * p.n_q), 0.0);
  ism::reference_attention_into<T, double, double>(p.q.cview(), p.k.cview(), p.v.cview(), out.view, mask, o,
                                                   lse.data());
}

inline double max_abs(const Tensor<double>& t) {
  double m = 0;
  for (index_t a = 0; a < t.view.tokens; ++a)
    for (index_t h = 0; h < t.view.heads; ++h)
      for (index_t d = 0; d < t.view.dim; ++d) m = std::max(m, std::abs(t.view(a, h, d)));
  return m;
}

template <class T>
double max_abs_input(const Tensor<T>& t) {
  double m = 0;
  for (index_t a = 0; a < t.view.tokens; ++a)
    for (index_t h = 0; h < t.view.heads; ++h)
      for (index_t d = 0; d < t.view.dim; ++d) m = std::max(m, std::abs(double(ism::to_float(t.view(a, h, d)))));
  return m;
}

// Largest |got - want| over all elements; NaN counts as infinite error.
template <class T>
double max_error(const Tensor<T>& got, const Tensor<double>& want) {
  double e = 0;
  for (index_t a = 0; a < want.view.tokens; ++a)
    for (index_t h = 0; h < want.view.heads; ++h)
      for (index_t d = 0; d < want.view.dim; ++d) {
        const double g = double(ism::to_float(got.view(a, h, d)));
        if (!std::isfinite(g)) return std::numeric_limits<double>::infinity();
        e = std::max(e, std::abs(g - want.view(a, h, d)));
      }
  return e;
}

}  // namespace ism_test
