// Fuzz target: bytes -> one ism::attention_backward call on a small shape
// (zero or one token, dim 1, GQA, offsets, padded strides, every mask kind,
// fp32 / bf16 / fp16, softcap / ALiBi / sinks), after the forward that gives
// its out and LSE, checked against the fp64 reference backward; gradient
// padding between rows must never be written. One case in four breaks the
// call in one known way (sizes, shapes, null data, overlapping gradients or
// inputs, bad options): then it must throw ism::invalid_argument and write
// nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fuzz/fuzz_input.hpp"
#include "ism/attention/attention.hpp"
#include "ism/attention/backward.hpp"
#include "ism/ism.hpp"
#include "ism/reference_backward.hpp"

namespace {

using ism::Attend;
using ism::index_t;
using ism_fuzz::Input;

// A [tokens, heads, dim] buffer with padded strides, every element of it
// (padding included) initialised, so the test can see stray writes.
template <class T>
struct Buffer {
  std::vector<T> buf;
  ism::HeadsView<T> view;
  Buffer(index_t tokens, index_t heads, index_t dim, bool token_major, index_t pad, float fill) {
    index_t ts, hs;
    if (token_major) {
      hs = dim + pad;
      ts = heads * hs + pad;
    } else {
      ts = dim + pad;
      hs = tokens * ts + pad;
    }
    const index_t size = tokens == 0 ? 1 : (tokens - 1) * ts + (heads - 1) * hs + dim;
    buf.assign(size_t(size), T(fill));
    view = {buf.data(), tokens, heads, dim, ts, hs};
  }
  ism::HeadsView<const T> cview() const { return ism::as_const(view); }
};

template <class T>
double eps() {
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return 1.0 / 64;
  else if constexpr (std::is_same_v<T, Eigen::half>) return 1.0 / 512;
  else return 1e-5;
}

struct Shape {
  index_t n_q, n_k, kv_heads, group, dim, q_offset;
  int threads;
  float scale;
};

template <class T, class Mask>
void run_case(Input& in, const Mask& mask, const Shape& s, int hostile) {
  std::mt19937 gen(static_cast<std::uint32_t>(in.u64()));
  std::uniform_real_distribution<float> value(-2.f, 2.f);
  const index_t heads = s.kv_heads * s.group;
  Buffer<T> q(s.n_q, heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> k(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> v(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> out(s.n_q, heads, s.dim, in.coin(), in.small(0, 2), 0.f);
  Buffer<T> dout(s.n_q, heads, s.dim, in.coin(), in.small(0, 2), 0.f);
  Buffer<T> dq(s.n_q, heads, s.dim, in.coin(), in.small(0, 3), 42.f);
  Buffer<T> dk(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 42.f);
  Buffer<T> dv(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 42.f);
  for (auto* b : {&q, &k, &v, &dout})
    for (auto& x : b->buf) x = T(value(gen));
  std::vector<float> lse(size_t(heads * s.n_q) + 1, 0.f);
  std::vector<float> slopes(static_cast<size_t>(heads)), sinks(static_cast<size_t>(heads));
  for (auto& x : slopes) x = float(in.small(0, 50)) / 100.f;
  for (auto& x : sinks) x = in.coin() ? -std::numeric_limits<float>::infinity() : float(in.small(0, 60)) / 10.f - 3.f;

  ism::AttentionOptions opt;
  opt.q_offset = s.q_offset;
  opt.threads = s.threads;
  opt.scale = s.scale;
  const std::uint8_t mods = in.byte();
  if (mods & 1) opt.softcap = float(in.small(1, 300)) / 10.f;
  if (mods & 2) opt.alibi_slopes = slopes.data();
  if (mods & 4) opt.sinks = sinks.data();

  // The forward gives out and the LSE; a window it rejects is rejected by the
  // backward too (both check the same things first).
  ism::AttentionOptions fwd = opt;
  fwd.lse = lse.data();
  const bool fwd_threw =
      ism_fuzz::throws_invalid([&] { ism::attention<T>(q.cview(), k.cview(), v.cview(), out.view, mask, fwd); });

  ism::HeadsView<const T> qv = q.cview(), kv = k.cview(), vv = v.cview(), ov = out.cview(), dov = dout.cview();
  ism::HeadsView<T> dqv = dq.view, dkv = dk.view, dvv = dv.view;
  const float* lp = lse.data();
  std::vector<float> other_lse(lse.size(), 0.f);
  auto call = [&] { ism::attention_backward<T>(qv, kv, vv, ov, dov, lp, dqv, dkv, dvv, mask, opt); };
  const std::vector<T> dq0 = dq.buf, dk0 = dk.buf, dv0 = dv.buf;
  auto untouched = [&] {
    return std::memcmp(dq0.data(), dq.buf.data(), dq0.size() * sizeof(T)) == 0 &&
           std::memcmp(dk0.data(), dk.buf.data(), dk0.size() * sizeof(T)) == 0 &&
           std::memcmp(dv0.data(), dv.buf.data(), dv0.size() * sizeof(T)) == 0;
  };

  if (hostile >= 0) {
    if (fwd_threw) return;  // only breaks of an otherwise valid call
    switch (hostile % 12) {
      case 0: qv.tokens = -1 - in.small(0, 3); break;
      case 1: dov.dim = s.dim + 1 + in.small(0, 3); break;
      case 2:
        if (s.n_q == 0) return;
        lp = nullptr;
        break;
      case 3: dqv.tokens = s.n_q + 1 + in.small(0, 3); break;
      case 4:
        if (s.n_k == 0) return;
        dkv = dvv;
        break;
      case 5:
        if (s.n_q == 0) return;
        dqv.data = const_cast<T*>(qv.data) + in.small(0, 3) % s.dim;
        break;
      case 6: dvv.head_stride = -1 - in.small(0, 3); break;
      case 7: opt.lse = other_lse.data(); break;
      case 8: opt.threads = -1 - int(in.small(0, 3)); break;
      case 9:
        if (s.n_q == 0) return;
        dov.data = nullptr;
        break;
      case 10:
        if (s.n_q < 2) return;
        dqv.token_stride = 0;
        if (heads > 1) dqv.head_stride = 0;
        break;
      default:
        if (s.n_k == 0) return;
        dkv.data = const_cast<T*>(vv.data);
        break;
    }
    const bool threw = ism_fuzz::throws_invalid(call);
    ISM_FUZZ_CHECK(threw, hostile % 12);
    ISM_FUZZ_CHECK(untouched(), hostile % 12);
    return;
  }

  const bool threw = ism_fuzz::throws_invalid(call);
  ISM_FUZZ_CHECK(threw == fwd_threw, s.n_q, s.n_k, s.q_offset);
  if (threw) {
    ISM_FUZZ_CHECK(untouched());
    return;
  }

  // The fp64 reference; every gradient element within eps * (|want| + the
  // tensor's largest |want|) + floor, padding untouched. The floor: where the
  // true dS is 0 (a row with one visible key: dP = D exactly) the kernel's is
  // fp32 rounding of dot products of dim terms of size amp^2, summed over up
  // to n_q * group rows (dk) with weights P <= 1, times scale * amp.
  const double s_eff = s.scale != 0.f ? s.scale : 1.0 / std::sqrt(double(s.dim));
  // In bf16 / fp16 the out that D = dO . O is made of is rounded to T: D is
  // off by up to ulp(T) * sum |dO O|, and dS by P times that.
  const double ulp_t = std::is_same_v<T, float> ? 0.0 : std::is_same_v<T, Eigen::bfloat16> ? 0x1p-8 : 0x1p-11;
  double d_err = 0;
  for (index_t t = 0; t < s.n_q; ++t)
    for (index_t h = 0; h < heads; ++h) {
      double m = 0;
      for (index_t d = 0; d < s.dim; ++d) m += std::abs(double(float(dov(t, h, d))) * double(float(ov(t, h, d))));
      d_err = std::max(d_err, ulp_t * m);
    }
  const double floor =
      (16 * 6e-8 * s_eff * double(s.dim) * 8.0 + s_eff * d_err * 2.0) * double(1 + s.n_q * s.group);
  Buffer<double> rq(s.n_q, heads, s.dim, true, 0, 0.f), rk(s.n_k, s.kv_heads, s.dim, true, 0, 0.f),
      rv(s.n_k, s.kv_heads, s.dim, true, 0, 0.f);
  ism::reference_attention_backward_into<T, T, double>(qv, kv, vv, dov, rq.view, rk.view, rv.view, mask, opt);
  auto check = [&](const Buffer<T>& got, const Buffer<double>& want, const std::vector<T>& before) {
    double top = 0;
    for (double w : want.buf) top = std::max(top, std::abs(w));
    std::vector<char> written(got.buf.size(), 0);
    for (index_t t = 0; t < want.view.tokens; ++t)
      for (index_t h = 0; h < want.view.heads; ++h)
        for (index_t d = 0; d < want.view.dim; ++d) {
          const T* p = &got.view(t, h, d);
          written[size_t(p - got.buf.data())] = 1;
          const double g = double(float(*p)), w = want.view(t, h, d);
          ISM_FUZZ_CHECK(std::abs(g - w) <= eps<T>() * (std::abs(w) + top) + floor, t, h, d);
        }
    for (size_t i = 0; i < got.buf.size(); ++i)
      ISM_FUZZ_CHECK(written[i] || std::memcmp(&got.buf[i], &before[i], sizeof(T)) == 0, index_t(i));
  };
  check(dq, rq, dq0);
  check(dk, rk, dk0);
  check(dv, rv, dv0);
}

// The mask, then the call (the window decoded as fuzz_attention does).
template <class T>
void fuzz_one(Input& in, int hostile) {
  Shape s;
  static const index_t dims[] = {1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 64};
  s.kv_heads = in.small(1, 3);
  s.group = in.small(1, 3);
  s.n_k = in.coin() ? in.small(0, 90) : in.small(0, 12);
  s.n_q = in.coin() ? in.small(0, std::min<index_t>(70, std::max<index_t>(1, s.n_k))) : in.small(0, 3);
  s.dim = dims[in.byte() % (sizeof(dims) / sizeof(dims[0]))];
  if (s.n_q * s.n_k * s.kv_heads * s.group * s.dim > (index_t(1) << 19)) s.dim = dims[in.byte() % 6];
  s.q_offset = in.coin() ? -1 : in.small(0, s.n_k + 4);
  s.threads = int(in.small(0, 3));
  s.scale = in.coin() ? 0.f : float(in.small(1, 200)) / 100.f;
  const index_t window = std::max(s.n_k, (s.q_offset < 0 ? s.n_k - s.n_q : s.q_offset) + s.n_q);
  switch (in.byte() % 6) {
    case 0: run_case<T>(in, ism::causal_mask(), s, hostile); break;
    case 1: run_case<T>(in, ism::full_mask(), s, hostile); break;
    case 2: run_case<T>(in, ism::prefix_mask(in.small(0, window + 2)), s, hostile); break;
    default: {
      // ISM turns, packed documents, padding rows that see nothing.
      const index_t length = std::max<index_t>(1, window + in.small(0, 2) - (in.small(0, 7) == 0));
      std::vector<std::vector<ism::Segment>> docs(1);
      for (index_t at = 0; at < length;) {
        const index_t len = std::min(length - at, in.small(1, 30));
        if (at > 0 && in.small(0, 5) == 0) docs.emplace_back();
        docs.back().push_back({len, in.coin() ? Attend::Causal : Attend::Bidirectional});
        at += len;
      }
      index_t pad = 0;
      if (docs.size() > 1 && docs.back().size() == 1 && in.coin()) {
        pad = docs.back().front().length;
        docs.pop_back();
      }
      const ism::SegmentMask mask = ism::packed_mask(docs, pad);
      if (in.coin()) run_case<T>(in, mask, s, hostile);
      else run_case<T>(in, mask.bounds(), s, hostile);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  const std::uint8_t kind = in.byte() % 4;
  const int hostile = kind == 3 ? int(in.byte()) : -1;
  switch (kind == 3 ? in.byte() % 3 : kind) {
    case 0: fuzz_one<float>(in, hostile); break;
    case 1: fuzz_one<Eigen::bfloat16>(in, hostile); break;
    default: fuzz_one<Eigen::half>(in, hostile); break;
  }
  return 0;
}
