#pragma once
// Helpers of the plan tests: random engine steps (requests of mixed masks,
// lengths, offsets and shapes, with the score modifiers on or off), their
// buffers, a page pool shared by all requests, every way of running a plan,
// and the fp64 reference with its error bound.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "cpu/kernel_test_util.hpp"

namespace ism_test {

// One request of an engine step. shape.q_offset is what the caller passes
// (-1: the cache's tail); q_offset is the resolved position of row 0.
struct RequestSpec {
  ism::RequestShape shape;
  index_t q_offset = 0;
  AnyMask mask;
  std::string desc;
};

// The score modifiers and scale of a step (AttentionOptions fields).
struct Modifiers {
  float scale = 0.f, softcap = 0.f;
  std::vector<float> sinks, slopes;  // empty: off
  ism::AttentionOptions options() const {
    ism::AttentionOptions o;
    o.scale = scale;
    o.softcap = softcap;
    o.sinks = sinks.empty() ? nullptr : sinks.data();
    o.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
    return o;
  }
  std::string describe() const {
    std::string s = "scale " + std::to_string(scale) + " softcap " + std::to_string(softcap);
    if (!sinks.empty()) s += " sinks";
    if (!slopes.empty()) s += " alibi";
    return s;
  }
};

struct Step {
  std::vector<RequestSpec> requests;
  Modifiers mods;
  std::string describe() const {
    std::string s = mods.describe() + "; requests:";
    for (size_t i = 0; i < requests.size(); ++i) {
      const ism::RequestShape& r = requests[i].shape;
      s += " [" + std::to_string(i) + "] n_q=" + std::to_string(r.n_q) + " n_k=" + std::to_string(r.n_k) +
           " off=" + std::to_string(requests[i].q_offset) + (r.q_offset < 0 ? "(default)" : "") +
           " heads=" + std::to_string(r.q_heads) + "/" + std::to_string(r.kv_heads) +
           " dim=" + std::to_string(r.dim) + " " + requests[i].desc + ";";
    }
    return s;
  }
};

// The shape and window of one random request: decode rows, a prefill chunk
// after a cached prefix, a whole sequence, a window whose rows may reach past
// the cache, or nothing to do.
inline RequestSpec random_request(Rng& rng, index_t kv_heads, index_t group, index_t dim) {
  RequestSpec q;
  ism::RequestShape& s = q.shape;
  s.q_heads = kv_heads * group;
  s.kv_heads = kv_heads;
  s.dim = dim;
  bool explicit_offset = rng.coin();
  switch (rng.uniform(0, 5)) {
    case 0:
    case 1:  // decode: a few rows at the cache's tail, long caches split their keys
      s.n_k = rng.coin(0.4) ? rng.uniform(1030, 1500) : rng.uniform(1, 400);
      s.n_q = std::min(s.n_k, rng.uniform(1, 3));
      q.q_offset = s.n_k - s.n_q;
      break;
    case 2:
      s.n_q = rng.uniform(2, 150);
      q.q_offset = rng.uniform(0, 200);
      s.n_k = q.q_offset + s.n_q;
      break;
    case 3:
      s.n_q = s.n_k = rng.uniform(1, 200);
      q.q_offset = 0;
      break;
    case 4:
      s.n_k = rng.uniform(1, 300);
      s.n_q = rng.uniform(1, 100);
      q.q_offset = rng.uniform(0, s.n_k + 20);
      explicit_offset = true;
      break;
    default:
      if (rng.coin()) {
        s.n_q = 0;
        s.n_k = rng.uniform(0, 50);
        q.q_offset = s.n_k;
      } else {
        s.n_q = rng.uniform(1, 5);
        s.n_k = 0;
        q.q_offset = rng.uniform(0, 10);
        explicit_offset = true;
      }
      break;
  }
  if (explicit_offset || q.q_offset != s.n_k - s.n_q) s.q_offset = q.q_offset;
  return q;
}

// A random engine step of 1 to 6 requests of every mask kind, with the
// score modifiers on or off. `uniform` gives all requests one KV shape (what
// a shared page pool needs). Requests are redrawn until n_q * n_k * heads *
// dim <= work_cap, so that the fp64 reference stays fast (also under the
// sanitizers).
inline Step random_step(Rng& rng, bool uniform, index_t work_cap = 2'000'000) {
  static const index_t dims[] = {8, 17, 32, 64, 128};
  Step st;
  index_t kv_heads = rng.uniform(1, 3), group = index_t(1) << rng.uniform(0, 3), dim = dims[rng.uniform(0, 4)];
  uniform = uniform || rng.coin(0.6);
  const index_t n = rng.uniform(1, 6);
  index_t max_heads = 0;
  for (index_t r = 0; r < n; ++r) {
    RequestSpec q;
    do {
      if (!uniform) {
        kv_heads = rng.uniform(1, 3);
        group = index_t(1) << rng.uniform(0, 3);
        dim = dims[rng.uniform(0, 4)];
      }
      q = random_request(rng, kv_heads, group, dim);
    } while (q.shape.n_q * q.shape.n_k * q.shape.q_heads * dim > work_cap);
    max_heads = std::max(max_heads, q.shape.q_heads);
    const index_t len = std::max<index_t>({1, q.shape.n_k, q.q_offset + q.shape.n_q});
    q.mask = make_mask(MaskKind(rng.uniform(0, 5)), len, rng, &q.desc);
    st.requests.push_back(std::move(q));
  }
  Modifiers& m = st.mods;
  if (rng.coin(0.3)) m.scale = float(rng.real(0.05, 0.5));
  if (rng.coin(0.3)) m.softcap = float(rng.real(2.0, 30.0));
  if (rng.coin(0.3)) {
    for (index_t h = 0; h < max_heads; ++h)
      m.sinks.push_back(rng.coin(0.2) ? -std::numeric_limits<float>::infinity() : float(rng.real(-3.0, 3.0)));
  }
  if (rng.coin(0.3)) {
    for (index_t h = 0; h < max_heads; ++h) m.slopes.push_back(float(std::exp2(-rng.real(0.0, 8.0))));
  }
  return st;
}

// The buffers of one step for one layer: per request Q, K, V, out and LSE, in
// token-major, head-major or padded layouts.
template <class TQ, class TK>
struct StepData {
  std::vector<Tensor<TQ>> q, out;
  std::vector<Tensor<TK>> k, v;
  std::vector<std::vector<float>> lse;

  StepData(const Step& st, Rng& rng) {
    for (const RequestSpec& r : st.requests) {
      const ism::RequestShape& s = r.shape;
      const int layout = int(rng.uniform(0, 2));
      q.emplace_back(s.n_q, s.q_heads, s.dim, layout != 1, layout == 2 ? 3 : 0);
      out.emplace_back(s.n_q, s.q_heads, s.dim, layout == 0, layout == 2 ? 1 : 0);
      k.emplace_back(s.n_k, s.kv_heads, s.dim, layout != 1, layout == 2 ? 5 : 0);
      v.emplace_back(s.n_k, s.kv_heads, s.dim, layout == 0, layout == 2 ? 2 : 0);
      q.back().fill_random(rng, -2, 2);
      k.back().fill_random(rng, -2, 2);
      v.back().fill_random(rng, -1, 1);
      lse.emplace_back(size_t(s.q_heads * s.n_q));
    }
    poison();
  }
  // Outputs (padding included) and LSEs set to NaN, so that a row a run
  // forgot to write shows.
  void poison() {
    for (auto& o : out) std::fill(o.buf.begin(), o.buf.end(), TQ(std::numeric_limits<float>::quiet_NaN()));
    for (auto& l : lse) std::fill(l.begin(), l.end(), std::numeric_limits<float>::quiet_NaN());
  }
  // Every byte a run may write, for bitwise comparisons.
  std::vector<unsigned char> bits() const {
    std::vector<unsigned char> b;
    auto add = [&](const void* p, size_t n) {
      const auto* c = static_cast<const unsigned char*>(p);
      b.insert(b.end(), c, c + n);
    };
    for (const auto& o : out) add(o.buf.data(), o.buf.size() * sizeof(TQ));
    for (const auto& l : lse) add(l.data(), l.size() * sizeof(float));
    return b;
  }
  std::vector<ism::RequestBuffers<TQ, ism::ContiguousKV<TK>>> contiguous() {
    std::vector<ism::RequestBuffers<TQ, ism::ContiguousKV<TK>>> b;
    for (size_t i = 0; i < q.size(); ++i)
      b.push_back({q[i].cview(), {k[i].cview(), v[i].cview()}, out[i].view, lse[i].data()});
    return b;
  }
};

// The K/V of every request of a step in one pool of pages, as an engine keeps
// them: pages in shuffled order, spare pages, a block table of index type I
// per request.
template <class TK, class I>
struct SharedPool {
  index_t page_size = 1, num_pages = 0, heads = 1, dim = 1;
  std::vector<TK> kp, vp;
  std::vector<std::vector<I>> tables;

  SharedPool(const std::vector<Tensor<TK>>& k, const std::vector<Tensor<TK>>& v, index_t heads_, index_t dim_,
             Rng& rng)
      : page_size(rng.uniform(1, 40)), heads(heads_), dim(dim_) {
    index_t blocks = 0;
    for (const auto& t : k) blocks += ism::detail::ceil_div(t.view.tokens, page_size);
    num_pages = blocks + rng.uniform(0, 3);
    std::vector<I> order(static_cast<size_t>(num_pages));
    std::iota(order.begin(), order.end(), I(0));
    std::shuffle(order.begin(), order.end(), rng.gen);
    const size_t pool = size_t(std::max<index_t>(1, num_pages * page_size * heads * dim));
    kp.assign(pool, TK(0.f));
    vp.assign(pool, TK(0.f));
    size_t next = 0;
    for (size_t r = 0; r < k.size(); ++r) {
      std::vector<I> table;
      for (index_t t = 0; t < k[r].view.tokens; ++t) {
        if (t % page_size == 0) table.push_back(order[next++]);
        for (index_t h = 0; h < heads; ++h)
          for (index_t d = 0; d < dim; ++d) {
            const size_t at = size_t(((table.back() * page_size + t % page_size) * heads + h) * dim + d);
            kp[at] = k[r].view(t, h, d);
            vp[at] = v[r].view(t, h, d);
          }
      }
      tables.push_back(std::move(table));
    }
  }
  ism::PagedKV<TK, I> view(size_t r, index_t tokens) const {
    return {kp.data(), vp.data(), num_pages, page_size, heads, dim, tables[r].data(), tokens};
  }
  template <class TQ>
  std::vector<ism::RequestBuffers<TQ, ism::PagedKV<TK, I>>> buffers(StepData<TQ, TK>& d) const {
    std::vector<ism::RequestBuffers<TQ, ism::PagedKV<TK, I>>> b;
    for (size_t i = 0; i < d.q.size(); ++i)
      b.push_back({d.q[i].cview(), view(i, d.k[i].view.tokens), d.out[i].view, d.lse[i].data()});
    return b;
  }
};

// Runs f(ith) on nth std::threads (the caller's own workers) and rethrows the
// first exception after all have joined.
template <class F>
void on_threads(index_t nth, F&& f) {
  std::vector<std::thread> ts;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nth));
  for (index_t ith = 0; ith < nth; ++ith)
    ts.emplace_back([&, ith] {
      try {
        f(ith);
      } catch (...) {
        errors[size_t(ith)] = std::current_exception();
      }
    });
  for (auto& t : ts) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// A caller's parallel-for on `threads` std::threads of its own, handing out
// indices from a counter (an engine's task system, in small).
inline ism::ParallelFor threaded_parallel_for(index_t threads) {
  return [threads](index_t n, const std::function<void(index_t)>& body) {
    std::atomic<index_t> next{0};
    on_threads(threads, [&](index_t) {
      for (index_t i = next++; i < n; i = next++) body(i);
    });
  };
}

// Every way to run a plan. Each must give the bits of single calls.
inline constexpr int run_modes = 12;
inline std::string mode_name(int mode) {
  if (mode < 4) return "plan.run on the pool with " + std::to_string(mode + 1) + " threads";
  if (mode == 4) return "plan.run through a caller's serial parallel_for, last index first";
  if (mode == 5) return "plan.run through a caller's parallel_for on 3 std::threads";
  if (mode < 10) return "plan.run(ith, nth) from nth = " + std::to_string(mode - 5) + " std::threads";
  if (mode == 10) return "bind().run_task(i) in shuffled order";
  return "bind().run_task(i) in shuffled order from 3 std::threads";
}

template <class TQ, class KV>
void run_plan(int mode, ism::AttentionPlan& plan, const std::vector<ism::RequestBuffers<TQ, KV>>& b,
              ism::AttentionOptions o, Rng& rng) {
  if (mode < 4) {
    o.threads = mode + 1;
    plan.run(b, o);
  } else if (mode == 4) {
    o.parallel_for = [](index_t n, const std::function<void(index_t)>& body) {
      for (index_t i = n - 1; i >= 0; --i) body(i);
    };
    plan.run(b, o);
  } else if (mode == 5) {
    o.parallel_for = threaded_parallel_for(3);
    plan.run(b, o);
  } else if (mode < 10) {
    const index_t nth = mode - 5;
    on_threads(nth, [&](index_t ith) { plan.run(b, o, ith, nth); });
  } else {
    const auto run = plan.bind(b, o);
    std::vector<index_t> order(size_t(run.tasks()));
    std::iota(order.begin(), order.end(), index_t(0));
    std::shuffle(order.begin(), order.end(), rng.gen);
    if (mode == 10) {
      for (index_t i : order) run.run_task(i);
    } else {
      std::atomic<size_t> next{0};
      on_threads(3, [&](index_t) {
        for (size_t i = next++; i < order.size(); i = next++) run.run_task(order[i]);
      });
    }
  }
}

// A mask of any kind behind one policy type, so that attention_batch (one
// mask type per call) can take a step's mixed masks.
struct AnyMaskRef {
  const AnyMask* mask;
  ism::KeyRange keys(index_t q) const {
    return std::visit([q](const auto& m) { return m.keys(q); }, *mask);
  }
  bool allowed(index_t q, index_t k) const { return keys(q).contains(k); }
  index_t length() const {
    return std::visit([](const auto& m) { return m.length(); }, *mask);
  }
};

// The fp64 reference of one layer's step, and the error bound of the fused
// kernel's result against it.
struct StepReference {
  std::vector<Tensor<double>> out;
  std::vector<std::vector<double>> lse;
  std::vector<double> tol, lse_tol;
};

template <class TQ, class TK>
StepReference reference(const Step& st, const StepData<TQ, TK>& d) {
  constexpr double eps = 5.96e-8;  // fp32 unit roundoff
  StepReference ref;
  const ism::AttentionOptions mods = st.mods.options();
  double max_slope = 0;
  for (float s : st.mods.slopes) max_slope = std::max(max_slope, double(s));
  for (size_t i = 0; i < st.requests.size(); ++i) {
    const RequestSpec& r = st.requests[i];
    const ism::RequestShape& s = r.shape;
    ism::AttentionOptions o = mods;
    o.q_offset = r.q_offset;
    ref.out.emplace_back(s.n_q, s.q_heads, s.dim);
    ref.lse.emplace_back(size_t(s.q_heads * s.n_q));
    std::visit(
        [&](const auto& m) {
          ism::reference_attention_into<TQ, double, double, std::decay_t<decltype(m)>, TK>(
              d.q[i].cview(), d.k[i].cview(), d.v[i].cview(), ref.out.back().view, m, o, ref.lse.back().data());
        },
        r.mask);
    // As in tests/cpu/kernel_test.cpp: a score error e moves the output by
    // about 2 e max|v|; fp32 dot products err by sqrt(D) eps times the score
    // scale. The softcap's tanh errs by a few ulps of the cap, ALiBi's bias by
    // an ulp of slope * distance. A 16-bit output adds its rounding.
    const double scale = mods.scale != 0.f ? mods.scale : 1.0 / std::sqrt(double(s.dim));
    const double score = scale * std::sqrt(double(s.dim)) * max_abs_input(d.q[i]) * max_abs_input(d.k[i]);
    const double dist = double(std::max(s.n_k, r.q_offset + s.n_q));
    const double score_err = std::sqrt(double(s.dim)) * eps * score + 8 * eps * double(st.mods.softcap) +
                             4 * eps * max_slope * dist;
    const double vmax = std::max(1e-30, max_abs_input(d.v[i]));
    const double out_ulp = std::is_same_v<TQ, float> ? 0.0 : std::is_same_v<TQ, Eigen::half> ? 0x1p-11 : 0x1p-8;
    ref.tol.push_back(vmax * (eps * (8.0 + 2.0 * std::log2(double(s.n_k) + 1.0)) + 4.0 * score_err + out_ulp));
    ref.lse_tol.push_back(4.0 * score_err + 16 * eps * (1 + dist * max_slope + score));
  }
  return ref;
}

// The run's outputs against the reference: errors within the bound, rows that
// see nothing (and no sink) 0 with LSE -infinity.
template <class TQ, class TK>
void expect_close(const Step& st, const StepData<TQ, TK>& d, const StepReference& ref, const std::string& what) {
  for (size_t i = 0; i < st.requests.size(); ++i) {
    const double err = max_error(d.out[i], ref.out[i]);
    EXPECT_LE(err, ref.tol[i]) << what << ": request " << i;
    for (size_t j = 0; j < ref.lse[i].size(); ++j) {
      const double w = ref.lse[i][j];
      const float g = d.lse[i][j];
      if (std::isinf(w)) {
        ASSERT_TRUE(std::isinf(g) && g < 0) << what << ": request " << i << " lse[" << j << "] = " << g;
      } else {
        ASSERT_NEAR(g, w, ref.lse_tol[i]) << what << ": request " << i << " lse[" << j << "]";
      }
    }
  }
}

}  // namespace ism_test
