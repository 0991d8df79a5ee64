// Fuzz target: bytes -> one ism::attention call on a small shape (zero or one
// token, dim 1, GQA, offsets, padded strides, every mask kind, fp32 / bf16 /
// fp16, with or without LSE, with or without softcap, sinks and ALiBi,
// with or without a sliding window),
// checked against the fp64 reference; the same call through a paged cache,
// through an AttentionPlan (two requests, run on the pool, by ith/nth shares
// or task by task in reverse), and (16-bit caches) with fp32 Q/out must agree.
// One case in four breaks the call in one known way (negative or zero sizes,
// heads that do not divide, null data, strides whose extent overflows,
// overlapping outputs, bad options or modifiers): then it must throw
// ism::invalid_argument and write nothing. Output padding between rows must
// never be written either.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fuzz/fuzz_input.hpp"
#include "ism/attention/attention.hpp"
#include "ism/ism.hpp"
#include "ism/kv/paged_cache.hpp"

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

struct Shape {
  index_t n_q, n_k, kv_heads, group, dim, q_offset;  // q_offset -1: the default
  int threads;
  float scale;
  bool lse;
};

template <class T>
float eps() {
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) return 1.f / 256;
  else if constexpr (std::is_same_v<T, Eigen::half>) return 1.f / 2048;
  else return 2e-6f;
}

// The same call through a paged cache (pages in shuffled order, spare pages
// in the pool) must give the contiguous call's result bit for bit.
template <class T, class Mask>
void check_paged(Input& in, std::mt19937& gen, ism::HeadsView<const T> q, ism::HeadsView<const T> k,
                 ism::HeadsView<const T> v, ism::HeadsView<T> out, const Mask& mask, const ism::AttentionOptions& opt) {
  const index_t page = in.small(1, 20), heads = k.heads, dim = k.dim;
  const index_t blocks = (k.tokens + page - 1) / page, pages = blocks + in.small(0, 3);
  std::vector<index_t> order(static_cast<size_t>(pages));
  for (index_t i = 0; i < pages; ++i) order[size_t(i)] = i;
  std::shuffle(order.begin(), order.end(), gen);
  const index_t row = heads * dim, pool = std::max<index_t>(1, pages * page * row);
  std::vector<T> kp(size_t(pool), T(0.f)), vp(size_t(pool), T(0.f));
  for (index_t t = 0; t < k.tokens; ++t)
    for (index_t h = 0; h < heads; ++h)
      for (index_t d = 0; d < dim; ++d) {
        const index_t at = (order[size_t(t / page)] * page + t % page) * row + h * dim + d;
        kp[size_t(at)] = k(t, h, d);
        vp[size_t(at)] = v(t, h, d);
      }
  const ism::PagedKV<T> paged(kp.data(), vp.data(), pages, page, heads, dim, order.data(), k.tokens);
  std::vector<T> buf(size_t(std::max<index_t>(1, out.tokens * out.heads * dim)), T(42.f));
  const ism::HeadsView<T> out2{buf.data(), out.tokens, out.heads, dim, out.heads * dim, dim};
  std::vector<float> lse2(size_t(out.heads * out.tokens) + 1, 7.f);
  ism::AttentionOptions o = opt;
  if (o.lse) o.lse = lse2.data();
  ism::attention<T>(q, paged, out2, mask, o);
  for (index_t t = 0; t < out.tokens; ++t)
    for (index_t h = 0; h < out.heads; ++h)
      for (index_t d = 0; d < dim; ++d)
        ISM_FUZZ_CHECK(std::memcmp(&out(t, h, d), &out2(t, h, d), sizeof(T)) == 0, t, h, d);
  for (index_t i = 0; o.lse && i < out.heads * out.tokens; ++i)
    ISM_FUZZ_CHECK(std::memcmp(&opt.lse[i], &lse2[size_t(i)], sizeof(float)) == 0, i);
}

// The same call planned (ism::AttentionPlan) as two requests of one batch,
// run on the pool, by (ith, nth) shares or task by task in reverse, must give
// its bits in both outputs.
template <class T, class Mask>
void check_planned(Input& in, ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                   ism::HeadsView<T> out, const Mask& mask, const ism::AttentionOptions& opt) {
  const ism::RequestShape shape{q.tokens, k.tokens, q.heads, k.heads, q.dim, opt.q_offset};
  std::vector<ism::PlanRequest> reqs;
  reqs.push_back(ism::plan_request(shape, mask));
  reqs.push_back(ism::plan_request(shape, mask));
  ism::HostExecution budget;
  budget.threads = int(in.small(1, 3));
  ism::AttentionPlan plan(std::move(reqs), budget);
  const size_t n = size_t(std::max<index_t>(1, out.tokens * out.heads * out.dim));
  std::vector<T> buf[2] = {std::vector<T>(n, T(42.f)), std::vector<T>(n, T(42.f))};
  std::vector<float> lse[2] = {std::vector<float>(size_t(out.heads * out.tokens) + 1, 7.f),
                               std::vector<float>(size_t(out.heads * out.tokens) + 1, 7.f)};
  std::vector<ism::RequestBuffers<T, ism::ContiguousKV<T>>> b;
  for (int r = 0; r < 2; ++r)
    b.push_back({q, {k, v}, ism::token_major(buf[r].data(), out.tokens, out.heads, out.dim),
                 opt.lse ? lse[r].data() : nullptr});
  ism::AttentionOptions o = opt;
  o.q_offset = -1;
  o.lse = nullptr;
  const std::uint8_t how = in.byte() % 3;
  if (how == 0) {
    plan.run(b, o);
  } else if (how == 1) {
    const index_t nth = in.small(1, 4);
    for (index_t ith = 0; ith < nth; ++ith) plan.run(b, o, ith, nth);
  } else {
    const auto run = plan.bind(b, o);
    for (index_t i = run.tasks() - 1; i >= 0; --i) run.run_task(i);
  }
  for (int r = 0; r < 2; ++r) {
    const ism::HeadsView<T> got = b[size_t(r)].out;
    for (index_t t = 0; t < out.tokens; ++t)
      for (index_t h = 0; h < out.heads; ++h)
        for (index_t d = 0; d < out.dim; ++d)
          ISM_FUZZ_CHECK(std::memcmp(&out(t, h, d), &got(t, h, d), sizeof(T)) == 0, r, t, d);
    for (index_t i = 0; opt.lse && i < out.heads * out.tokens; ++i)
      ISM_FUZZ_CHECK(std::memcmp(&opt.lse[i], &lse[r][size_t(i)], sizeof(float)) == 0, r, i);
  }
}

// fp32 Q/out over the 16-bit K/V: within fp32 accuracy of the fp64
// reference on the same (16-bit) keys and values.
template <class T, class Mask>
void check_mixed(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v,
                 ism::HeadsView<T> out, const Mask& mask, const ism::AttentionOptions& opt, float amp) {
  const index_t n = std::max<index_t>(1, q.tokens * q.heads * q.dim);
  std::vector<float> qf(static_cast<size_t>(n)), of(static_cast<size_t>(n), 42.f);
  const ism::HeadsView<float> q32{qf.data(), q.tokens, q.heads, q.dim, q.heads * q.dim, q.dim};
  const ism::HeadsView<float> o32{of.data(), q.tokens, q.heads, q.dim, q.heads * q.dim, q.dim};
  for (index_t t = 0; t < q.tokens; ++t)
    for (index_t h = 0; h < q.heads; ++h)
      for (index_t d = 0; d < q.dim; ++d) q32(t, h, d) = float(q(t, h, d));
  ism::AttentionOptions o = opt;
  o.lse = nullptr;
  ism::attention(ism::as_const(q32), k, v, o32, mask, o);
  std::vector<double> ref_buf(static_cast<size_t>(n));
  const ism::HeadsView<double> ref{ref_buf.data(), q.tokens, q.heads, q.dim, q.heads * q.dim, q.dim};
  ism::reference_attention_into<float, double, double>(ism::as_const(q32), k, v, ref, mask, o, (double*)nullptr);
  for (index_t t = 0; t < q.tokens; ++t)
    for (index_t h = 0; h < q.heads; ++h)
      for (index_t d = 0; d < q.dim; ++d)
        ISM_FUZZ_CHECK(std::abs(double(o32(t, h, d)) - ref(t, h, d)) <= 1e-4 * amp * (1 + 0.05 * o.softcap), t, h, d);
  (void)out;
}

template <class T, class Mask>
void run_case(Input& in, const Mask& mask, const Shape& s, int hostile) {
  std::mt19937 gen(static_cast<std::uint32_t>(in.u64()));
  const float amp = in.coin() ? 1.f : 4.f;
  std::uniform_real_distribution<float> value(-amp, amp);
  const index_t heads = s.kv_heads * s.group;
  Buffer<T> q(s.n_q, heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> k(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> v(s.n_k, s.kv_heads, s.dim, in.coin(), in.small(0, 3), 0.f);
  Buffer<T> out(s.n_q, heads, s.dim, in.coin(), in.small(0, 3), 42.f);
  for (auto* b : {&q, &k, &v})
    for (auto& x : b->buf) x = T(value(gen));
  std::vector<float> lse(size_t(heads * s.n_q) + 1, 7.f);

  ism::HeadsView<const T> qv = q.cview(), kv = k.cview(), vv = v.cview();
  ism::HeadsView<T> ov = out.view;
  ism::AttentionOptions opt;
  opt.q_offset = s.q_offset;
  opt.threads = s.threads;
  opt.scale = s.scale;
  opt.lse = s.lse ? lse.data() : nullptr;
  // Score modifiers in one case in three.
  std::vector<float> sinks(static_cast<size_t>(heads)), slopes(static_cast<size_t>(heads));
  const int mods = in.small(0, 2) == 0 ? int(in.small(1, 7)) : 0;
  if (mods & 1) opt.softcap = float(in.small(1, 500)) / 10.f;
  if (mods & 2) {
    for (auto& x : sinks) x = in.small(0, 7) == 0 ? -std::numeric_limits<float>::infinity() : float(in.small(0, 60)) / 10.f - 3.f;
    opt.sinks = sinks.data();
  }
  if (mods & 4) {
    for (auto& x : slopes) x = float(in.small(0, 100)) / 100.f;
    opt.alibi_slopes = slopes.data();
  }

  if (hostile >= 0) {
    // Each break applies only where it is sure to make the call invalid.
    switch (hostile % 16) {
      case 0: qv.tokens = -1 - in.small(0, 3); break;
      case 1: kv.heads = vv.heads = 0; break;
      case 2:
        if (s.kv_heads < 2) return;
        qv.heads = ov.heads = heads + 1;
        break;
      case 3: vv.dim = s.dim + 1 + in.small(0, 3); break;
      case 4:
        if (s.n_k == 0) return;
        (in.coin() ? kv : vv).data = nullptr;
        break;
      case 5:
        if (s.n_k < 2) return;
        kv.token_stride = std::numeric_limits<index_t>::max() / 2 + in.small(0, 255);
        break;
      case 6: ov.head_stride = -1 - in.small(0, 3); break;
      case 7:
        if (s.n_q == 0) return;
        qv.data = ov.data + in.small(0, 3) % s.dim;
        break;
      case 8: opt.threads = -1 - int(in.small(0, 3)); break;
      case 9: opt.scale = in.coin() ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity(); break;
      case 10: opt.q_offset = -2 - in.small(0, 3); break;
      case 11:
        if (s.n_q < 2) return;
        ov.token_stride = 0;
        if (heads > 1) ov.head_stride = 0;
        break;
      case 13: opt.softcap = in.coin() ? -1.f : std::numeric_limits<float>::quiet_NaN(); break;
      case 14:
        sinks[size_t(in.small(0, heads - 1))] = in.coin() ? std::numeric_limits<float>::quiet_NaN()
                                                         : std::numeric_limits<float>::infinity();
        opt.sinks = sinks.data();
        break;
      case 15:
        slopes[size_t(in.small(0, heads - 1))] = std::numeric_limits<float>::infinity();
        opt.alibi_slopes = slopes.data();
        break;
      default:
        if (s.n_q == 0) return;
        opt.lse = reinterpret_cast<float*>(out.buf.data());
        break;
    }
    const std::vector<T> before = out.buf;
    const std::vector<float> lse_before = lse;
    const bool threw = ism_fuzz::throws_invalid([&] { ism::attention<T>(qv, kv, vv, ov, mask, opt); });
    ISM_FUZZ_CHECK(threw, hostile % 16);
    ISM_FUZZ_CHECK(std::memcmp(before.data(), out.buf.data(), before.size() * sizeof(T)) == 0, hostile % 16);
    ISM_FUZZ_CHECK(lse_before == lse, hostile % 16);
    return;
  }

  // Window validity, decided here independently of the library.
  index_t off = s.q_offset == -1 ? s.n_k - s.n_q : s.q_offset;
  bool valid = off >= 0;
  if (valid && mask.length() != ism::unbounded) valid = off + s.n_q <= mask.length() && s.n_k <= mask.length();
  const bool threw = ism_fuzz::throws_invalid([&] { ism::attention<T>(qv, kv, vv, ov, mask, opt); });
  ISM_FUZZ_CHECK(threw == !valid, s.n_q, s.n_k, s.q_offset);
  if (threw) {
    ISM_FUZZ_CHECK(std::all_of(out.buf.begin(), out.buf.end(), [](T x) { return float(x) == 42.f; }));
    return;
  }

  std::vector<double> ref_buf(size_t(std::max<index_t>(1, s.n_q * heads * s.dim)));
  const ism::HeadsView<double> ref{ref_buf.data(), s.n_q, heads, s.dim, heads * s.dim, s.dim};
  std::vector<double> ref_lse(size_t(heads * s.n_q) + 1);
  ism::AttentionOptions ropt = opt;
  ropt.lse = nullptr;
  ism::reference_attention_into<T, double, double>(qv, kv, vv, ref, mask, ropt, ref_lse.data());

  std::vector<char> written(out.buf.size(), 0);
  for (index_t t = 0; t < s.n_q; ++t)
    for (index_t h = 0; h < heads; ++h)
      for (index_t d = 0; d < s.dim; ++d) {
        const T* p = &ov(t, h, d);
        written[size_t(p - out.buf.data())] = 1;
        const double got = double(float(*p)), want = ref(t, h, d);
        const double tol = eps<T>() * std::abs(want) + 1e-4 * amp + 4e-6 * opt.softcap * amp;
        ISM_FUZZ_CHECK(std::abs(got - want) <= tol, t, h, d);
      }
  for (size_t i = 0; i < out.buf.size(); ++i)
    ISM_FUZZ_CHECK(written[i] || float(out.buf[i]) == 42.f, index_t(i));  // padding untouched
  if (s.lse) {
    for (index_t i = 0; i < heads * s.n_q; ++i) {
      const double got = lse[size_t(i)], want = ref_lse[size_t(i)];
      if (std::isinf(want)) ISM_FUZZ_CHECK(got == want, i);
      else ISM_FUZZ_CHECK(std::abs(got - want) <= 1e-4 * (1 + std::abs(want)), i);
    }
    ISM_FUZZ_CHECK(lse[size_t(heads * s.n_q)] == 7.f);  // one past the end
  }
  if (in.coin()) check_paged(in, gen, qv, kv, vv, ov, mask, opt);
  if (in.coin()) check_planned(in, qv, kv, vv, ov, mask, opt);
  if constexpr (!std::is_same_v<T, float>)
    if (in.coin()) check_mixed(qv, kv, vv, ov, mask, opt, amp);
}

// The mask, then the call. Layout lengths cover the window unless the bytes
// ask for a window that does not fit (which must then be rejected).
template <class T>
void fuzz_one(Input& in, int hostile) {
  Shape s;
  static const index_t dims[] = {1, 2, 3, 5, 8, 15, 16, 17, 31, 33, 64, 80, 96, 100, 128};
  const index_t n_dims = sizeof(dims) / sizeof(dims[0]);
  s.kv_heads = in.small(1, 3);
  s.group = in.small(1, 3);
  if (in.small(0, 7) == 0) {
    // Decode over a cache long enough (>= 16 key tiles) for the split-key path
    // and its merge; small dims keep the reference cheap.
    s.n_k = in.small(1024, 2100);
    s.n_q = in.small(1, 2);
    s.dim = dims[in.byte() % 7];
  } else {
    s.n_k = in.coin() ? in.small(0, 140) : in.small(0, 12);
    s.n_q = in.coin() ? in.small(0, std::min<index_t>(40, std::max<index_t>(1, s.n_k))) : in.small(0, 3);
    s.dim = dims[in.byte() % n_dims];
    // Keep one input to a few million multiply-adds in the reference.
    if (s.n_q * s.n_k * s.kv_heads * s.group * s.dim > (index_t(1) << 21)) s.dim = dims[in.byte() % 7];
  }
  s.q_offset = in.coin() ? -1 : in.small(0, s.n_k + 4);
  s.threads = int(in.small(0, 2));
  s.scale = in.coin() ? 0.f : float(in.small(1, 200)) / 100.f;
  s.lse = in.coin();
  const index_t window = std::max(s.n_k, (s.q_offset < 0 ? s.n_k - s.n_q : s.q_offset) + s.n_q);
  switch (in.byte() % 6) {
    case 0:
      // Mistral-style: a sliding window over causal attention, one case in four.
      if (in.small(0, 3) == 0) run_case<T>(in, ism::sliding_window(ism::causal_mask(), in.small(1, 40)), s, hostile);
      else run_case<T>(in, ism::causal_mask(), s, hostile);
      break;
    case 1: run_case<T>(in, ism::full_mask(), s, hostile); break;
    case 2: run_case<T>(in, ism::prefix_mask(in.small(0, window + 2)), s, hostile); break;
    default: {
      // A layout of window (+-1) tokens: ISM turns, packed documents with
      // padding, or the mask's raw row bounds (the kernels' own view of it).
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
      else if (in.small(0, 2) == 0) run_case<T>(in, ism::sliding_window(mask.bounds(), in.small(1, 60)), s, hostile);
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
