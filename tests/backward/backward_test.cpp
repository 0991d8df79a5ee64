// The fused CPU backward pass against the fp64 reference backward, the fp64
// reference against finite differences of the fp64 forward, and the kernel's
// own contract (zero gradients where nothing is seen, NaN containment, thread
// counts, tile visits, bad input). Compiled once per instruction set
// (tests/backward/CMakeLists.txt); ISM_TEST_EXPECT_SIMD names the path the
// binary must have selected.
#include <atomic>
#include <cmath>
#include <cstring>
#include <set>

#include "ism/core/config.hpp"

// The backward kernel's test hook (cpu/backward.hpp): count every visited
// (query head, query tile, key tile) step. Defined before any kernel header.
namespace ism_test {
inline std::atomic<ism::index_t>* backward_visits = nullptr;
}
#define ISM_CPU_ON_BACKWARD_TILE_VISIT() \
  (::ism_test::backward_visits ? (void)::ism_test::backward_visits->fetch_add(1) : (void)0)

#include "backward/backward_test_util.hpp"

namespace ism_test {
namespace {

using ism::AttentionOptions;

// Two runs of the same gradients whose dK/dV sums may be cut into chunks
// differently (so rounded differently): equal within a few ulps of the
// tensor's scale.
template <class A, class B>
void expect_close(const Tensor<A>& got, const Tensor<B>& want, index_t tokens, const char* name) {
  double scale = 0;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < want.view.heads; ++h)
      for (index_t d = 0; d < want.view.dim; ++d) scale = std::max(scale, std::abs(double(want.view(t, h, d))));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t h = 0; h < want.view.heads; ++h)
      for (index_t d = 0; d < want.view.dim; ++d)
        ASSERT_NEAR(got.view(t, h, d), want.view(t, h, d), 1e-5 * scale) << name << " token " << t;
}

TEST(Backward, SelectedInstructionSet) {
  EXPECT_STREQ(ISM_SIMD_NAME, ISM_TEST_EXPECT_SIMD);
}

// Random sizes: odd and tile-edge lengths, odd dims and the fast ones, GQA
// 1/2/4, query windows (the whole sequence, its tail, one ending early),
// capped in work so the fp64 reference stays fast.
BwdSizes random_sizes(Rng& rng, index_t work_cap) {
  static const index_t ns[] = {1, 2, 63, 64, 65, 97, 130, 200};
  // 255: one query tile per key-tile visit (group_tiles), the others 2-4.
  static const index_t dims[] = {1, 5, 8, 16, 31, 64, 72, 128, 255};
  for (;;) {
    BwdSizes s;
    const index_t n = rng.coin(0.7) ? ns[rng.uniform(0, 7)] : rng.uniform(1, 260);
    s.dim = dims[rng.uniform(0, 8)];
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * (index_t(1) << rng.uniform(0, 2));
    s.n_k = n;
    const int shape = int(rng.uniform(0, 2));
    if (shape == 0 || n == 1) {
      s.n_q = n;
      s.q_offset = 0;
    } else if (shape == 1) {
      s.n_q = rng.uniform(1, n);
      s.q_offset = n - s.n_q;
    } else {
      s.n_q = rng.uniform(1, n);
      s.q_offset = rng.uniform(0, n - s.n_q);
    }
    s.layout = int(rng.uniform(0, 2));
    if (s.n_q * s.n_k * s.dim * s.heads <= work_cap) return s;
  }
}

template <class T>
double random_case(Rng& rng, MaskKind kind, index_t work_cap, bool modifiers) {
  const BwdSizes s = random_sizes(rng, work_cap);
  std::string desc;
  const AnyMask mask = make_mask(kind, s.n_k, rng, &desc);
  BwdProblem<T> p(s);
  p.fill(rng);
  std::vector<float> slopes(size_t(s.heads)), sinks(size_t(s.heads));
  if (modifiers) {
    if (rng.coin()) p.opt.softcap = float(rng.real(1, 20));
    if (rng.coin()) {
      for (auto& x : slopes) x = float(rng.real(0, 0.5));
      p.opt.alibi_slopes = slopes.data();
    }
    if (rng.coin()) {
      for (auto& x : sinks) x = rng.coin(0.2) ? -std::numeric_limits<float>::infinity() : float(rng.real(-3, 3));
      p.opt.sinks = sinks.data();
    }
    if (rng.coin()) p.opt.scale = float(rng.real(0.05, 0.5));
  }
  SCOPED_TRACE(::testing::Message() << ism::type_name<T>() << " " << desc << " " << s.describe() << " softcap "
                                    << p.opt.softcap << (p.opt.alibi_slopes ? " alibi" : "")
                                    << (p.opt.sinks ? " sinks" : "") << " scale " << p.opt.scale);
  double worst = 0;
  std::visit(
      [&](const auto& m) {
        p.run(m, int(rng.uniform(1, 3)));
        worst = check_against_reference(p, m);
      },
      mask);
  return worst;
}

TEST(Backward, Fp32MatchesReferenceOnEveryMaskKind) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int kind = 0; kind < 6; ++kind)
    for (int it = 0; it < 6; ++it) {
      worst = std::max(worst, random_case<float>(rng, MaskKind(kind), 1'500'000, false));
      if (HasFailure()) return;
    }
  std::printf("worst error / bound: %.3f\n", worst);
}

TEST(Backward, Fp32WithSoftcapAlibiSinksAndScale) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 24; ++it) {
    worst = std::max(worst, random_case<float>(rng, MaskKind(rng.uniform(0, 5)), 1'000'000, true));
    if (HasFailure()) return;
  }
  std::printf("worst error / bound: %.3f\n", worst);
}

TEST(Backward, Bf16AndFp16MatchReference) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 16; ++it) {
    const MaskKind kind = MaskKind(rng.uniform(0, 5));
    worst = std::max(worst, it % 2 ? random_case<Eigen::bfloat16>(rng, kind, 600'000, it % 4 == 1)
                                   : random_case<Eigen::half>(rng, kind, 600'000, it % 4 == 0));
    if (HasFailure()) return;
  }
  std::printf("worst error / bound: %.3f\n", worst);
}

// Longer rows with the fast dims: several key tiles per query tile, Full and
// Partial steps, GQA, a query window that ends before the cache does.
TEST(Backward, Fp32LongSequences) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (index_t dim : {64, 128, 80}) {
    BwdSizes s{dim == 80 ? 70 : 130, 401, 0, 4, 2, dim, int(rng.uniform(0, 2))};
    s.q_offset = rng.uniform(0, s.n_k - s.n_q);
    std::string desc;
    const AnyMask mask = make_mask(dim == 64 ? MaskKind::Ism : dim == 128 ? MaskKind::Packed : MaskKind::Causal, s.n_k,
                                   rng, &desc);
    SCOPED_TRACE(desc + " " + s.describe());
    BwdProblem<float> p(s);
    p.fill(rng);
    std::visit(
        [&](const auto& m) {
          p.run(m, 2);
          worst = std::max(worst, check_against_reference(p, m));
        },
        mask);
  }
  std::printf("worst error / bound: %.3f\n", worst);
}

// The loss L = sum(dout * out) of the fp64 forward, for finite differences.
template <class Mask>
double loss64(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v, const Tensor<double>& dout,
              const Mask& mask, const AttentionOptions& opt) {
  Tensor<double> out(q.view.tokens, q.view.heads, q.view.dim);
  ism::reference_attention_forward64<double, double>(q.cview(), k.cview(), v.cview(), out.view, mask, opt);
  double l = 0;
  for (index_t t = 0; t < out.view.tokens; ++t)
    for (index_t h = 0; h < out.view.heads; ++h)
      for (index_t d = 0; d < out.view.dim; ++d) l += out.view(t, h, d) * dout.view(t, h, d);
  return l;
}

template <class T>
Tensor<double> to64(const Tensor<T>& x) {
  Tensor<double> y(x.view.tokens, x.view.heads, x.view.dim);
  for (index_t t = 0; t < x.view.tokens; ++t)
    for (index_t h = 0; h < x.view.heads; ++h)
      for (index_t d = 0; d < x.view.dim; ++d) y.view(t, h, d) = double(ism::to_float(x.view(t, h, d)));
  return y;
}

// Central differences of the fp64 forward along random directions (one per
// input, and single coordinates) against the fp64 reference backward (to
// 1e-7 relative: fp64 differences with h = 1e-5 are good to ~1e-9) and the
// fp32 kernel (within its error bound summed along the direction).
TEST(Backward, GradientsMatchFiniteDifferences) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 18; ++it) {
    BwdSizes s;
    s.n_k = rng.uniform(1, 24);
    s.n_q = rng.uniform(1, s.n_k);
    s.q_offset = rng.uniform(0, s.n_k - s.n_q);
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * rng.uniform(1, 2);
    s.dim = rng.uniform(1, 9);
    s.layout = int(rng.uniform(0, 2));
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(it % 6), s.n_k, rng, &desc);
    BwdProblem<float> p(s);
    p.fill(rng);
    std::vector<float> slopes(size_t(s.heads)), sinks(size_t(s.heads));
    if (it % 3 == 1) p.opt.softcap = float(rng.real(0.5, 4));
    if (it % 4 == 2) {
      for (auto& x : slopes) x = float(rng.real(0, 0.3));
      p.opt.alibi_slopes = slopes.data();
    }
    if (it % 5 == 3) {
      for (auto& x : sinks) x = float(rng.real(-2, 2));
      p.opt.sinks = sinks.data();
    }
    SCOPED_TRACE(::testing::Message() << desc << " " << s.describe() << " softcap " << p.opt.softcap);
    std::visit(
        [&](const auto& m) {
          p.run(m, 1);
          const Grads64 ref = reference_grads(p, m);
          const Magnitudes mg = magnitudes(p, m);
          const double f = error_factor<float>(s, mg, p.opt.softcap);
          Tensor<double> q = to64(p.q), k = to64(p.k), v = to64(p.v), dout = to64(p.dout);
          Tensor<double>* inputs[3] = {&q, &k, &v};
          const Tensor<float>* kernel[3] = {&p.dq, &p.dk, &p.dv};
          const Tensor<double>* want[3] = {&ref.dq, &ref.dk, &ref.dv};
          const Tensor<double>* mag[3] = {&mg.m.dq, &mg.m.dk, &mg.m.dv};
          const double h = 1e-5;
          for (int which = 0; which < 3; ++which) {
            Tensor<double>& x = *inputs[which];
            for (int dir = 0; dir < 4; ++dir) {
              // Directions: random over all elements, then single coordinates.
              Tensor<double> u(x.view.tokens, x.view.heads, x.view.dim);
              if (dir == 0) {
                u.fill_random(rng);
              } else if (x.view.tokens > 0) {
                u.view(rng.uniform(0, x.view.tokens - 1), rng.uniform(0, x.view.heads - 1),
                       rng.uniform(0, x.view.dim - 1)) = 1.0;
              }
              const Tensor<double> x0 = x;
              auto shift = [&](double by) {
                for (index_t t = 0; t < x.view.tokens; ++t)
                  for (index_t hh = 0; hh < x.view.heads; ++hh)
                    for (index_t d = 0; d < x.view.dim; ++d) x.view(t, hh, d) = x0.view(t, hh, d) + by * u.view(t, hh, d);
              };
              shift(h);
              const double lp = loss64(q, k, v, dout, m, p.opt);
              shift(-h);
              const double lm = loss64(q, k, v, dout, m, p.opt);
              x = x0;
              const double fd = (lp - lm) / (2 * h);
              double ref_dot = 0, kernel_dot = 0, bound = 0, scale = 0;
              for (index_t t = 0; t < x.view.tokens; ++t)
                for (index_t hh = 0; hh < x.view.heads; ++hh)
                  for (index_t d = 0; d < x.view.dim; ++d) {
                    const double w = u.view(t, hh, d);
                    ref_dot += w * want[which]->view(t, hh, d);
                    kernel_dot += w * double(kernel[which]->view(t, hh, d));
                    bound += std::abs(w) * f * mag[which]->view(t, hh, d);
                    scale += std::abs(w) * std::abs(want[which]->view(t, hh, d));
                  }
              const char* name = which == 0 ? "q" : which == 1 ? "k" : "v";
              EXPECT_NEAR(ref_dot, fd, 1e-7 * (1 + scale)) << "reference d/d" << name << " direction " << dir;
              EXPECT_NEAR(kernel_dot, fd, bound + 1e-7 * (1 + scale)) << "kernel d/d" << name << " direction " << dir;
            }
          }
        },
        mask);
    if (HasFailure()) return;
  }
}

// Padding rows see nothing: their dq is 0 whatever their q, out and dout hold
// (NaN here), and they reach no dk or dv; padding keys (seen by nobody) get
// dk = dv = 0.
TEST(Backward, PaddingRowsAndUnseenKeysGetZeroGradients) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t docs = 150, pad = 70, n = docs + pad;
  const ism::SegmentMask mask = ism::packed_mask(
      {{{40, ism::Attend::Bidirectional}, {50, ism::Attend::Causal}}, {{60, ism::Attend::Bidirectional}}}, pad);
  BwdProblem<float> p({n, n, 0, 4, 2, 64, int(rng.uniform(0, 2))});
  p.fill(rng);
  ism::AttentionOptions o = p.opt;
  o.lse = p.lse.data();
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, o);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (index_t t = docs; t < n; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 64; ++d) p.q.view(t, h, d) = p.out.view(t, h, d) = p.dout.view(t, h, d) = nan;
  for (index_t t = docs; t < n; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 64; ++d) p.k.view(t, h, d) = p.v.view(t, h, d) = nan;
  for (auto* g : {&p.dq, &p.dk, &p.dv}) std::fill(g->buf.begin(), g->buf.end(), 7.f);
  p.backward(mask, 2);
  for (index_t t = docs; t < n; ++t) {
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 64; ++d) ASSERT_EQ(p.dq.view(t, h, d), 0.f) << "padding row " << t;
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 64; ++d) {
        ASSERT_EQ(p.dk.view(t, h, d), 0.f) << "padding key " << t;
        ASSERT_EQ(p.dv.view(t, h, d), 0.f) << "padding key " << t;
      }
  }
  // The document rows against the reference on the documents alone.
  BwdProblem<float> d({docs, docs, 0, 4, 2, 64, 0});
  for (index_t t = 0; t < docs; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t e = 0; e < 64; ++e) {
        d.q.view(t, h, e) = p.q.view(t, h, e);
        d.dout.view(t, h, e) = p.dout.view(t, h, e);
        if (h < 2) {
          d.k.view(t, h, e) = p.k.view(t, h, e);
          d.v.view(t, h, e) = p.v.view(t, h, e);
        }
      }
  const ism::SegmentMask doc_mask =
      ism::packed_mask({{{40, ism::Attend::Bidirectional}, {50, ism::Attend::Causal}}, {{60, ism::Attend::Bidirectional}}});
  d.run(doc_mask, 1);
  expect_close(p.dq, d.dq, docs, "dq");
  expect_close(p.dk, d.dk, docs, "dk");
  expect_close(p.dv, d.dv, docs, "dv");
  check_against_reference(d, doc_mask);
}

// NaN in K and V of keys some rows cannot see: a gradient that does not
// depend on such a key (dq of rows that do not see it; dk, dv of keys no row
// sees together with it; dk, dv of keys nobody sees) is bit-identical to a
// run with the key zeroed, which itself matches the reference.
TEST(Backward, NanInMaskedKeysNeverReachesGradients) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 8; ++it) {
    const index_t n = rng.uniform(70, 300);
    BwdSizes s{n, n, 0, 2 * (it % 2 + 1), 2, it % 3 == 0 ? 64 : 24, int(rng.uniform(0, 2))};
    if (it % 2) {
      s.n_q = rng.uniform(1, n);
      s.q_offset = rng.uniform(0, n - s.n_q);
    }
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(1 + it % 5), n, rng, &desc);
    SCOPED_TRACE(desc + " " + s.describe());
    std::visit(
        [&](const auto& m) {
          BwdProblem<float> p(s);
          p.fill(rng);
          std::vector<index_t> poisoned;
          for (int c = 0; c < 3; ++c) poisoned.push_back(rng.uniform(0, n - 1));
          for (index_t j : poisoned)
            for (index_t h = 0; h < s.kv_heads; ++h)
              for (index_t d = 0; d < s.dim; ++d) p.k.view(j, h, d) = p.v.view(j, h, d) = 0.f;
          BwdProblem<float> clean = p;
          clean.run(m, 1);
          check_against_reference(clean, m);
          for (index_t j : poisoned)
            for (index_t h = 0; h < s.kv_heads; ++h)
              for (index_t d = 0; d < s.dim; ++d)
                p.k.view(j, h, d) = p.v.view(j, h, d) = std::numeric_limits<float>::quiet_NaN();
          p.run(m, 2);
          auto sees = [&](index_t t, index_t j) { return ism::visible_keys(m, s.q_offset + t, n).contains(j); };
          auto row_poisoned = [&](index_t t) {
            for (index_t j : poisoned)
              if (sees(t, j)) return true;
            return false;
          };
          auto same = [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; };
          for (index_t t = 0; t < s.n_q; ++t) {
            if (row_poisoned(t)) continue;
            for (index_t h = 0; h < s.heads; ++h)
              for (index_t d = 0; d < s.dim; ++d)
                ASSERT_TRUE(same(p.dq.view(t, h, d), clean.dq.view(t, h, d)))
                    << "dq row " << t << ": " << p.dq.view(t, h, d) << " vs " << clean.dq.view(t, h, d);
          }
          for (index_t j = 0; j < n; ++j) {
            bool depends = false;
            for (index_t t = 0; t < s.n_q && !depends; ++t) depends = sees(t, j) && row_poisoned(t);
            if (depends) continue;
            for (index_t h = 0; h < s.kv_heads; ++h)
              for (index_t d = 0; d < s.dim; ++d) {
                ASSERT_TRUE(same(p.dk.view(j, h, d), clean.dk.view(j, h, d)))
                    << "dk key " << j << ": " << p.dk.view(j, h, d) << " vs " << clean.dk.view(j, h, d);
                ASSERT_TRUE(same(p.dv.view(j, h, d), clean.dv.view(j, h, d)))
                    << "dv key " << j << ": " << p.dv.view(j, h, d) << " vs " << clean.dv.view(j, h, d);
              }
          }
        },
        mask);
    if (HasFailure()) return;
  }
}

// The plan depends on shapes only: gradients are identical bit for bit for
// 1..4 threads and through a caller's parallel-for running tasks in reverse,
// with one chunk per KV head (8 KV heads) and several (1 KV head).
TEST(Backward, ThreadCountsAgreeBitForBit) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (index_t kv : {index_t(1), index_t(8)}) {
    BwdProblem<float> p({200, 230, 30, kv == 1 ? 4 : 8, kv, 24, 0});
    p.fill(rng);
    const auto mask = ism::ism_mask({0, 50, 110, 111, 180, 230});
    p.run(mask, 1);
    const auto dq = p.dq.buf, dk = p.dk.buf, dv = p.dv.buf;
    for (int t = 2; t <= 4; ++t) {
      p.backward(mask, t);
      EXPECT_TRUE(dq == p.dq.buf && dk == p.dk.buf && dv == p.dv.buf) << t << " threads, kv heads " << kv;
    }
    std::atomic<int> calls{0};
    const ism::ParallelFor reverse = [&](index_t n, const std::function<void(index_t)>& body) {
      ++calls;
      for (index_t i = n - 1; i >= 0; --i) body(i);
    };
    p.backward(mask, 1, reverse);
    EXPECT_TRUE(dq == p.dq.buf && dk == p.dk.buf && dv == p.dv.buf) << "caller's parallel-for, kv heads " << kv;
    EXPECT_GE(calls.load(), 1);
  }
}

// Steps taken per query head against the block map: never an Empty tile, and
// every tile that holds a visible pair (equal counts when no row is empty).
TEST(Backward, EmptyTilesAreNeverVisited) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  using ism::cpu::tile_k;
  using ism::cpu::tile_q;
  for (int it = 0; it < 10; ++it) {
    const index_t n_k = rng.uniform(1, 700), n_q = rng.uniform(1, n_k), off = rng.uniform(0, n_k - n_q);
    const index_t group = it % 2 ? 2 : 1;
    std::string desc;
    const AnyMask mask = make_mask(MaskKind(rng.uniform(0, 5)), n_k, rng, &desc);
    SCOPED_TRACE(::testing::Message() << desc << " n_q=" << n_q << " n_k=" << n_k << " off=" << off);
    std::visit(
        [&](const auto& m) {
          BwdProblem<float> p({n_q, n_k, off, 2 * group, 2, 16, 0});
          p.fill(rng);
          ism::AttentionOptions o = p.opt;
          o.lse = p.lse.data();
          ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, m, o);
          const ism::BlockMap map(m, n_q, n_k, off, tile_q, tile_k);
          index_t needed = 0;
          bool empty_row = false;
          for (index_t t0 = 0; t0 < n_q; t0 += tile_q)
            for (index_t c = 0; c * tile_k < n_k; ++c) {
              bool seen = false;
              for (index_t r = t0; r < std::min(n_q, t0 + tile_q); ++r) {
                const ism::KeyRange k = ism::visible_keys(m, off + r, n_k);
                empty_row = empty_row || k.empty();
                seen = seen || (!k.empty() && k.begin < (c + 1) * tile_k && c * tile_k < k.end);
              }
              needed += seen;
            }
          std::atomic<index_t> visited{0};
          backward_visits = &visited;
          p.backward(m, 2);
          backward_visits = nullptr;
          const auto& st = map.stats();
          const index_t heads = 2 * group;
          EXPECT_LE(visited.load(), (st.full + st.partial) * heads);
          EXPECT_GE(visited.load(), needed * heads);
          if (!empty_row) {
            EXPECT_EQ(visited.load(), (st.full + st.partial) * heads);
          }
        },
        mask);
  }
}

// ISM's training property at the gradient level: with a loss on round t's
// answer only, the gradients over the whole dialogue equal those of the
// dialogue cut after round t (zero beyond it): no later round leaks in.
TEST(Backward, LaterRoundsDoNotChangeEarlierGradients) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  std::vector<index_t> b{0};
  for (int r = 0; r < 6; ++r) b.push_back(b.back() + rng.uniform(5, 60));  // query, answer, query, ...
  const index_t n = b.back(), cut = b[4];                                   // after round 2's answer
  BwdProblem<float> full({n, n, 0, 4, 2, 32, 0});
  full.fill(rng);
  for (index_t t = 0; t < n; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 32; ++d)
        if (t < b[3] || t >= cut) full.dout.view(t, h, d) = 0.f;  // loss on round 2's answer only
  full.run(ism::ism_mask(b), 2);
  BwdProblem<float> part({cut, cut, 0, 4, 2, 32, 0});
  for (index_t t = 0; t < cut; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 32; ++d) {
        part.q.view(t, h, d) = full.q.view(t, h, d);
        part.dout.view(t, h, d) = full.dout.view(t, h, d);
        if (h < 2) {
          part.k.view(t, h, d) = full.k.view(t, h, d);
          part.v.view(t, h, d) = full.v.view(t, h, d);
        }
      }
  part.run(ism::ism_mask({b.begin(), b.begin() + 5}), 1);
  // dq of a row is summed in one task in key order whatever the chunks: the
  // same bits. dK/dV may be cut into chunks differently: close. Past the cut
  // every gradient is exactly 0.
  for (index_t t = 0; t < n; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 32; ++d) {
        ASSERT_EQ(full.dq.view(t, h, d), t < cut ? part.dq.view(t, h, d) : 0.f) << t;
        if (h < 2 && t >= cut) {
          ASSERT_EQ(full.dk.view(t, h, d), 0.f) << t;
          ASSERT_EQ(full.dv.view(t, h, d), 0.f) << t;
        }
      }
  expect_close(full.dk, part.dk, cut, "dk");
  expect_close(full.dv, part.dv, cut, "dv");
}

// Bad input throws ism::invalid_argument naming the argument, and writes
// nothing.
TEST(Backward, BadInputThrowsAndWritesNothing) {
  Rng rng(1);
  BwdProblem<float> p({6, 8, 2, 4, 2, 8, 0});
  p.fill(rng);
  const auto mask = ism::causal_mask();
  p.run(mask, 1);
  for (auto* g : {&p.dq, &p.dk, &p.dv}) std::fill(g->buf.begin(), g->buf.end(), 7.f);
  auto untouched = [&] {
    for (auto* g : {&p.dq, &p.dk, &p.dv})
      for (float x : g->buf) ASSERT_EQ(x, 7.f);
  };
  using View = ism::HeadsView<const float>;
  using Out = ism::HeadsView<float>;
  struct Args {
    View q, k, v, out, dout;
    const float* lse;
    Out dq, dk, dv;
    AttentionOptions opt;
  };
  const Args good{p.q.cview(), p.k.cview(), p.v.cview(), p.out.cview(), p.dout.cview(), p.lse.data(),
                  p.dq.view,   p.dk.view,   p.dv.view,   p.opt};
  auto call = [&](const Args& a) {
    ism::attention_backward<float>(a.q, a.k, a.v, a.out, a.dout, a.lse, a.dq, a.dk, a.dv, mask, a.opt);
  };
  std::vector<float> other_lse(64, 0.f);
  struct Case {
    void (*breaks)(Args&, float*);
    std::initializer_list<const char*> needles;
  };
  const Case cases[] = {
      {[](Args& a, float*) { a.q.dim = 9; }, {"k.dim", "q.dim"}},
      {[](Args& a, float*) { a.k.heads = 3; }, {"v.heads"}},
      {[](Args& a, float*) { a.out.tokens = 5; }, {"out.tokens"}},
      {[](Args& a, float*) { a.dout.tokens = 5; }, {"dout.tokens = 5"}},
      {[](Args& a, float*) { a.dout.dim = 7; }, {"dout.dim = 7"}},
      {[](Args& a, float*) { a.dout.data = nullptr; }, {"dout.data is null"}},
      {[](Args& a, float*) { a.lse = nullptr; }, {"lse is null"}},
      {[](Args& a, float*) { a.dq.tokens = 7; }, {"dq.tokens = 7"}},
      {[](Args& a, float*) { a.dk.heads = 1; }, {"dk.heads = 1"}},
      {[](Args& a, float*) { a.dv.dim = 4; }, {"dv.dim = 4"}},
      {[](Args& a, float*) { a.dv.head_stride = -1; }, {"dv.head_stride"}},
      {[](Args& a, float*) { a.dq.token_stride = 0; a.dq.head_stride = 0; }, {"dq rows overlap"}},
      {[](Args& a, float*) { a.dk = a.dv; }, {"dk overlaps dv"}},
      {[](Args& a, float*) { a.dq.data = const_cast<float*>(a.q.data); }, {"dq overlaps q"}},
      {[](Args& a, float*) { a.dv.data = const_cast<float*>(a.dout.data); }, {"dv overlaps dout"}},
      {[](Args& a, float*) { a.dq.data = const_cast<float*>(a.lse); }, {"dq overlaps lse"}},
      {[](Args& a, float* l) { a.opt.lse = l; }, {"options.lse"}},
      {[](Args& a, float*) { a.opt.threads = -2; }, {"options.threads = -2"}},
      {[](Args& a, float*) { a.opt.softcap = -1.f; }, {"options.softcap = -1"}},
  };
  for (const Case& c : cases) {
    Args a = good;
    c.breaks(a, other_lse.data());
    expect_invalid([&] { call(a); }, c.needles);
    untouched();
  }
  // A query window past the layout.
  Args a = good;
  a.opt.q_offset = 3;
  const ism::SegmentMask seg = ism::ism_mask({0, 4, 8});
  expect_invalid([&] { ism::attention_backward<float>(a.q, a.k, a.v, a.out, a.dout, a.lse, a.dq, a.dk, a.dv, seg, a.opt); },
                 {"q_offset", "exceed"});
  untouched();
  // The spelling of docs/DESIGN.md 2b with the element type deduced from
  // the gradients (mutable views convert to the const inputs).
  EXPECT_NO_THROW(ism::attention_backward(p.q.view, p.k.view, p.v.view, p.out.view, p.dout.view, p.lse.data(),
                                          p.dq.view, p.dk.view, p.dv.view, mask, p.opt));
  for (auto* g : {&p.dq, &p.dk, &p.dv}) std::fill(g->buf.begin(), g->buf.end(), 7.f);
  // options.lse equal to the lse argument is the forward's options passed on.
  Args same = good;
  same.opt.lse = const_cast<float*>(same.lse);
  EXPECT_NO_THROW(call(same));
  // Empty problems: nothing to do, nothing thrown.
  BwdProblem<float> e({0, 0, 0, 2, 2, 8, 0});
  EXPECT_NO_THROW(e.backward(mask));
}

}  // namespace
}  // namespace ism_test
