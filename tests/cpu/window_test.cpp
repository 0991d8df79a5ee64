// Sliding windows through the fused CPU kernel, against the fp64 reference:
// every mask kind within a window, windows with softcap and sinks, ALiBi with
// GQA, split-key decode inside a window, contiguous and paged caches (pages
// dropped in front of the window),
// a plan mixing windowed and plain requests; windows of 1, of N and beyond;
// and the visit counter showing that no tile outside a window is touched.
// Compiled once per instruction set, like kernel_test.cpp.
#include <atomic>
#include <cmath>
#include <limits>

#include "cpu/kernel_test_util.hpp"  // first: it defines the kernel's visit hook

namespace ism_test {
namespace {

using ism::AttentionOptions;

constexpr double eps32 = 5.96e-8;  // 2^-24

index_t random_window(Rng& rng, index_t n) {
  switch (rng.uniform(0, 5)) {
    case 0: return 1;
    case 1: return rng.uniform(2, 16);
    case 2: return n;
    case 3: return n + rng.uniform(1, 50);
    default: return rng.uniform(1, std::max<index_t>(1, n));
  }
}

// The score modifiers of one call, with their own storage.
struct Mods {
  float softcap = 0.f;
  std::vector<float> sinks, slopes;
  void apply(AttentionOptions& o) const {
    o.softcap = softcap;
    o.sinks = sinks.empty() ? nullptr : sinks.data();
    o.alibi_slopes = slopes.empty() ? nullptr : slopes.data();
  }
};

// Sinks of every kind: ordinary, absent for a head (-inf), and dominant.
std::vector<float> random_sinks(Rng& rng, index_t heads) {
  std::vector<float> s(static_cast<size_t>(heads));
  for (float& x : s) {
    const index_t pick = rng.uniform(0, 5);
    x = pick == 0 ? -std::numeric_limits<float>::infinity() : pick == 1 ? float(rng.real(20, 60)) : float(rng.real(-4, 4));
  }
  return s;
}

// The fp32 bound of kernel_test.cpp, with the largest score the modifiers
// allow: a softcap bounds scores by the cap (its tanh is a few ulps of 1, times
// the cap), ALiBi adds slope * distance (one rounding of that product).
double tolerance(const Problem<float>& p, const Mods& m, index_t max_distance) {
  const double scale = 1.0 / std::sqrt(double(p.dim));
  double smax = scale * double(p.dim) * max_abs_input(p.q) * max_abs_input(p.k);
  if (m.softcap != 0.f) smax = std::min(smax, double(m.softcap)) + 8.0 * double(m.softcap);
  double slope = 0;
  for (float s : m.slopes) slope = std::max(slope, double(std::abs(s)));
  smax += slope * double(max_distance);
  const double vmax = std::max(1e-30, max_abs_input(p.v));
  return vmax * (eps32 * (8.0 + 2.0 * std::log2(double(p.n_k) + 1.0)) + 4.0 * eps32 * smax);
}

// Output and LSE of a run (in p.out, p.lse) against the fp64 reference.
template <class Mask>
void expect_reference(const Problem<float>& p, const Mask& mask, const Mods& m, double* worst) {
  AttentionOptions o;
  o.q_offset = p.q_offset;
  m.apply(o);
  Tensor<double> want(p.n_q, p.heads, p.dim);
  std::vector<double> want_lse(size_t(p.heads * p.n_q));
  ism::reference_attention_into<float, double, double>(p.q.cview(), p.k.cview(), p.v.cview(), want.view, mask, o,
                                                       want_lse.data());
  const double tol = tolerance(p, m, p.q_offset + p.n_q + p.n_k);
  const double err = max_error(p.out, want);
  EXPECT_LE(err, tol);
  *worst = std::max(*worst, err / tol);
  for (index_t h = 0; h < p.heads; ++h)
    for (index_t t = 0; t < p.n_q; ++t) {
      const double w = want_lse[size_t(h * p.n_q + t)];
      const float g = p.lse[size_t(h * p.n_q + t)];
      if (std::isinf(w)) {
        ASSERT_TRUE(std::isinf(g) && g < 0) << "row " << t << " head " << h << ": lse " << g;
      } else {
        ASSERT_NEAR(g, w, tol / std::max(1e-30, max_abs_input(p.v)) + 16 * eps32 * (1 + std::abs(w)))
            << "lse of row " << t << " head " << h;
      }
    }
}

struct Shape {
  index_t n_q, n_k, q_offset, heads, kv_heads, dim;
  int layout;
};

// Odd sizes, GQA 1..8, queries: the whole sequence, its tail, or a chunk
// before the end; decode rows often.
Shape random_shape(Rng& rng, index_t max_n = 300) {
  static const index_t ns[] = {1, 2, 63, 64, 65, 97, 130};
  static const index_t dims[] = {1, 8, 31, 64, 80, 128};
  Shape s;
  const index_t n = rng.coin(0.6) ? ns[rng.uniform(0, 6)] : rng.uniform(1, max_n);
  s.dim = dims[rng.uniform(0, 5)];
  s.kv_heads = rng.uniform(1, 2);
  s.heads = s.kv_heads * (index_t(1) << rng.uniform(0, 3));
  s.n_k = n;
  const int shape = int(rng.uniform(0, 3));
  s.n_q = shape == 0 ? n : shape == 1 ? std::min<index_t>(n, rng.uniform(1, 2)) : rng.uniform(1, n);
  s.q_offset = shape == 3 ? rng.uniform(0, n - s.n_q) : n - s.n_q;
  s.layout = int(rng.uniform(0, 2));
  return s;
}

template <class Mask>
void run_and_check(const Shape& s, const Mask& mask, const Mods& m, Rng& rng, double* worst) {
  Problem<float> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, s.layout);
  p.q.fill_random(rng, -2, 2);
  p.k.fill_random(rng, -2, 2);
  p.v.fill_random(rng);
  AttentionOptions o = p.options();
  o.threads = int(rng.uniform(1, 3));
  m.apply(o);
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, mask, o);
  expect_reference(p, mask, m, worst);
}

#define ISM_WINDOW_TRACE(desc, s, w)                                                                             \
  SCOPED_TRACE(::testing::Message() << desc << " window " << w << " n_q=" << s.n_q << " n_k=" << s.n_k         \
                                    << " q_offset=" << s.q_offset << " heads=" << s.heads << "/" << s.kv_heads \
                                    << " dim=" << s.dim << " layout=" << s.layout)

TEST(CpuWindow, EveryMaskKindWithinAWindow) {
  EXPECT_STREQ(ISM_SIMD_NAME, ISM_TEST_EXPECT_SIMD);  // the binary runs the ISA it is named for
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int kind = 0; kind < 6; ++kind)
    for (int it = 0; it < 6; ++it) {
      const Shape s = random_shape(rng);
      std::string desc;
      const AnyMask inner = make_mask(MaskKind(kind), s.n_k, rng, &desc);
      const index_t w = random_window(rng, s.n_k);
      ISM_WINDOW_TRACE(desc, s, w);
      std::visit([&](const auto& m) { run_and_check(s, ism::sliding_window(m, w), Mods{}, rng, &worst); }, inner);
      if (HasFatalFailure()) return;
    }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

TEST(CpuWindow, SoftcapAndSinksWithinAWindow) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 24; ++it) {
    const Shape s = random_shape(rng);
    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(1, 5)), s.n_k, rng, &desc);
    const index_t w = random_window(rng, s.n_k);
    Mods m;
    m.softcap = rng.coin(0.8) ? float(rng.real(0.5, 50)) : 0.f;
    if (rng.coin(0.8)) m.sinks = random_sinks(rng, s.heads);
    ISM_WINDOW_TRACE(desc << " softcap " << m.softcap << " sinks " << m.sinks.size(), s, w);
    std::visit([&](const auto& mk) { run_and_check(s, ism::sliding_window(mk, w), m, rng, &worst); }, inner);
    if (HasFatalFailure()) return;
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

TEST(CpuWindow, AlibiWithGqaWithinAWindow) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 24; ++it) {
    Shape s = random_shape(rng);
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * (index_t(2) << rng.uniform(0, 2));  // groups of 2, 4, 8
    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(1, 5)), s.n_k, rng, &desc);
    const index_t w = random_window(rng, s.n_k);
    Mods m;
    if (rng.coin()) {
      m.slopes = ism::ggml_alibi_slopes(s.heads, 8.f);  // BLOOM / MPT style
    } else {
      for (index_t h = 0; h < s.heads; ++h) m.slopes.push_back(float(rng.real(0, 1)));
    }
    if (rng.coin(0.3)) m.softcap = float(rng.real(1, 30));
    if (rng.coin(0.3)) m.sinks = random_sinks(rng, s.heads);
    ISM_WINDOW_TRACE(desc << " alibi, softcap " << m.softcap << " sinks " << m.sinks.size(), s, w);
    std::visit([&](const auto& mk) { run_and_check(s, ism::sliding_window(mk, w), m, rng, &worst); }, inner);
    if (HasFatalFailure()) return;
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// Decode rows whose window still spans 16 key tiles and more: the split-key
// path (key chunks of the window only, merged by LSE, sinks joining at the
// merge), with every modifier on or off.
TEST(CpuWindow, SplitKeyDecodeWithinAWindow) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 8; ++it) {
    Shape s;
    s.n_k = rng.uniform(1100, 2100);
    s.n_q = rng.uniform(1, 2);
    s.q_offset = s.n_k - s.n_q;
    s.kv_heads = rng.uniform(1, 2);
    s.heads = s.kv_heads * (index_t(1) << rng.uniform(0, 3));
    s.dim = rng.coin() ? 8 : 16;
    s.layout = int(rng.uniform(0, 2));
    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(1, 4)), s.n_k, rng, &desc);
    const index_t w = rng.coin(0.7) ? rng.uniform(16 * ism::cpu::tile_k, s.n_k + 10) : random_window(rng, s.n_k);
    Mods m;
    if (rng.coin()) m.softcap = float(rng.real(1, 30));
    if (rng.coin()) m.sinks = random_sinks(rng, s.heads);
    if (rng.coin()) m.slopes = ism::ggml_alibi_slopes(s.heads, 8.f);
    ISM_WINDOW_TRACE(desc << " softcap " << m.softcap << " sinks " << m.sinks.size() << " alibi " << m.slopes.size(),
                     s, w);
    std::visit([&](const auto& mk) { run_and_check(s, ism::sliding_window(mk, w), m, rng, &worst); }, inner);
    if (HasFatalFailure()) return;
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// Window 1: a row sees its own key alone, so its output is that key's value
// exactly (one weight of exp2(0) = 1) and its LSE is its own score. Windows of
// N and beyond change no row's keys, so the result is the inner mask's, bit
// for bit.
TEST(CpuWindow, WindowOfOneAndWindowsOfNAndBeyond) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 8; ++it) {
    const Shape s = random_shape(rng);
    ISM_WINDOW_TRACE("causal", s, 1);
    Problem<float> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, s.layout);
    p.q.fill_random(rng, -2, 2);
    p.k.fill_random(rng, -2, 2);
    p.v.fill_random(rng);
    ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view,
                          ism::sliding_window(ism::causal_mask(), 1), p.options());
    const index_t group = s.heads / s.kv_heads;
    for (index_t t = 0; t < s.n_q; ++t)
      for (index_t h = 0; h < s.heads; ++h)
        for (index_t d = 0; d < s.dim; ++d)
          ASSERT_EQ(p.out.view(t, h, d), p.v.view(s.q_offset + t, h / group, d)) << "row " << t << " head " << h;

    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(0, 5)), s.n_k, rng, &desc);
    std::visit(
        [&](const auto& m) {
          const auto plain = [&](const auto& mask) {
            Tensor<float> out(s.n_q, s.heads, s.dim);
            std::vector<float> lse(size_t(s.heads * s.n_q));
            AttentionOptions o;
            o.q_offset = s.q_offset;
            o.lse = lse.data();
            ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), out.view, mask, o);
            out.buf.insert(out.buf.end(), lse.begin(), lse.end());
            return out.buf;
          };
          const auto want = plain(m);
          for (index_t w : {s.n_k + s.q_offset + s.n_q, s.n_k + s.q_offset + s.n_q + 7, ism::unbounded})
            EXPECT_EQ(plain(ism::sliding_window(m, w)), want) << desc << " window " << w;
        },
        inner);
  }
}

// The visit counter: with a window, the kernel's (query tile, key tile) steps
// per query head are exactly the block map's non-empty tiles, and each of
// those meets the band |i - j| < w; a long sequence under a narrow window
// visits O(N w) tiles, not O(N^2).
template <class Mask>
void expect_visits_in_band(const Mask& inner, index_t w, Problem<float>& p, index_t* visited_out) {
  using ism::cpu::tile_k;
  using ism::cpu::tile_q;
  const auto m = ism::sliding_window(inner, w);
  const index_t n_q = p.n_q, n_k = p.n_k, off = p.q_offset;
  const ism::BlockMap map(m, n_q, n_k, off, tile_q, tile_k);
  const std::vector<ism::KeyRange> rows = ism::row_bounds(m, n_q, n_k, off);
  bool empty_row = false;
  for (const ism::KeyRange& k : rows) empty_row = empty_row || k.empty();
  index_t in_band = 0;
  for (index_t r = 0; r < map.tile_rows(); ++r)
    for (index_t c = 0; c < map.tile_cols(); ++c) {
      const index_t q0 = off + r * tile_q, q1 = off + std::min(n_q, (r + 1) * tile_q);
      const index_t k0 = c * tile_k, k1 = std::min(n_k, k0 + tile_k);
      // Some pair (i, j) of the tile has |i - j| < w.
      const bool meets = k0 < q1 - 1 + w && q0 - w + 1 < k1;
      in_band += meets;
      if (map.kind(r, c) != ism::TileKind::Empty) {
        ASSERT_TRUE(meets) << "tile " << r << "," << c;
      }
    }
  std::atomic<index_t> visited{0};
  visited_tiles = &visited;
  ism::attention<float>(p.q.cview(), p.k.cview(), p.v.cview(), p.out.view, m, p.options());
  visited_tiles = nullptr;
  const auto& st = map.stats();
  const index_t heads = p.out.view.heads;
  SCOPED_TRACE(::testing::Message() << "block map: full " << st.full << " partial " << st.partial << " empty "
                                    << st.empty << "; tiles meeting the band " << in_band);
  EXPECT_LE(visited.load(), (st.full + st.partial) * heads);
  EXPECT_LE(visited.load(), in_band * heads);
  if (!empty_row) {
    EXPECT_EQ(visited.load(), (st.full + st.partial) * heads);
  }
  *visited_out = visited.load() / heads;
}

TEST(CpuWindow, TilesOutsideTheWindowAreNeverVisited) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < 12; ++it) {
    const index_t n_k = rng.uniform(1, 1500);
    const index_t n_q = it % 3 == 0 ? rng.uniform(1, std::min<index_t>(8, n_k)) : rng.uniform(1, n_k);
    const index_t off = rng.uniform(0, n_k - n_q), group = it % 2 ? 4 : 1, w = random_window(rng, n_k);
    Problem<float> p(n_q, n_k, 2 * group, 2, 16, off, 0);
    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(0, 5)), n_k, rng, &desc);
    SCOPED_TRACE(::testing::Message() << desc << " window " << w << " n_q=" << n_q << " n_k=" << n_k << " off=" << off);
    index_t visited = 0;
    std::visit([&](const auto& m) { expect_visits_in_band(m, w, p, &visited); }, inner);
    if (HasFatalFailure()) return;
  }
  // 2000 rows, a causal window of 100: a query tile's rows see tile_q + 99
  // keys, so it meets a handful of key tiles, not the ~N / (2 tile_k) of
  // causal attention.
  Problem<float> p(2000, 2000, 1, 1, 16, 0, 0);
  index_t visited = 0;
  expect_visits_in_band(ism::causal_mask(), 100, p, &visited);
  const index_t q_tiles = (2000 + ism::cpu::tile_q - 1) / ism::cpu::tile_q;
  const index_t per_tile = (ism::cpu::tile_q + 99 + ism::cpu::tile_k - 1) / ism::cpu::tile_k + 1;
  EXPECT_LE(visited, q_tiles * per_tile);
}

// A paged cache that gave back the pages in front of the window
// (PagedKVCache::drop_front) and another sequence rewrote with NaN: decode
// and chunked prefill rows against it equal the reference on the whole cache.
TEST(CpuWindow, PagedCacheWithDroppedPages) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  double worst = 0;
  for (int it = 0; it < 12; ++it) {
    Shape s = random_shape(rng, 400);
    s.layout = 0;
    std::string desc;
    const AnyMask inner = make_mask(MaskKind(rng.uniform(0, 5)), s.n_k, rng, &desc);
    const index_t w = random_window(rng, s.n_k), page_size = rng.uniform(1, 40);
    Mods m;
    if (rng.coin()) m.softcap = float(rng.real(1, 30));
    if (rng.coin()) m.sinks = random_sinks(rng, s.heads);
    if (rng.coin()) m.slopes = ism::ggml_alibi_slopes(s.heads, 4.f);
    ISM_WINDOW_TRACE(desc << " page_size " << page_size, s, w);
    Problem<float> p(s.n_q, s.n_k, s.heads, s.kv_heads, s.dim, s.q_offset, 0);
    p.q.fill_random(rng, -2, 2);
    p.k.fill_random(rng, -2, 2);
    p.v.fill_random(rng);
    const index_t pages = 2 * ((s.n_k + page_size - 1) / page_size) + 1;
    ism::PagedKVCache<float> cache(pages, page_size, s.kv_heads, s.dim);
    const index_t seq = cache.add_sequence(), other = cache.add_sequence();
    cache.append(seq, p.k.cview(), p.v.cview());
    std::visit(
        [&](const auto& mk) {
          const auto mask = ism::sliding_window(mk, w);
          cache.drop_front(seq, ism::first_needed_key(mask, s.q_offset));
          if (cache.free_pages() > 0) {
            Tensor<float> nan(cache.free_pages() * page_size, s.kv_heads, s.dim);
            for (float& x : nan.buf) x = std::numeric_limits<float>::quiet_NaN();
            cache.append(other, nan.cview(), nan.cview());
          }
          AttentionOptions o = p.options();
          o.threads = int(rng.uniform(1, 2));
          m.apply(o);
          ism::attention<float>(p.q.cview(), cache.view(seq), p.out.view, mask, o);
          expect_reference(p, mask, m, &worst);
        },
        inner);
    if (HasFatalFailure()) return;
  }
  std::printf("worst error / tolerance: %.3f\n", worst);
}

// One plan over windowed and plain requests sharing a page pool (a decode
// row, a prefill chunk, a whole prefill), with softcap and sinks on.
TEST(CpuWindow, PlanMixingWindowedAndPlainRequests) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t kv_heads = 2, heads = 4, dim = 40, page_size = 16;
  std::vector<Problem<float>> ps;
  ps.reserve(3);
  ps.emplace_back(1, 333, heads, kv_heads, dim, 332, 0);
  ps.emplace_back(70, 250, heads, kv_heads, dim, 150, 0);
  ps.emplace_back(97, 97, heads, kv_heads, dim, 0, 0);
  ism::PagedKVCache<float> cache(64, page_size, kv_heads, dim);
  std::vector<index_t> seqs;
  for (auto& p : ps) {
    p.q.fill_random(rng, -2, 2);
    p.k.fill_random(rng, -2, 2);
    p.v.fill_random(rng);
    seqs.push_back(cache.add_sequence());
    cache.append(seqs.back(), p.k.cview(), p.v.cview());
  }
  const auto w0 = ism::sliding_window(ism::ism_mask({0, 100, 200, 333}), 50);
  const auto w2 = ism::sliding_window(ism::causal_mask(), 10);
  const auto plain = ism::ism_mask({0, 120, 250});
  cache.drop_front(seqs[0], ism::first_needed_key(w0, 332));
  Mods m;
  m.softcap = 20.f;
  m.sinks = random_sinks(rng, heads);
  std::vector<ism::PlanRequest> reqs;
  reqs.push_back(ism::plan_request({1, 333, heads, kv_heads, dim, 332}, w0));
  reqs.push_back(ism::plan_request({70, 250, heads, kv_heads, dim, 150}, plain));
  reqs.push_back(ism::plan_request({97, 97, heads, kv_heads, dim, 0}, w2));
  ism::AttentionPlan plan(std::move(reqs));
  std::vector<ism::RequestBuffers<float, ism::PagedKV<float>>> bufs;
  for (size_t i = 0; i < ps.size(); ++i)
    bufs.push_back({ps[i].q.cview(), cache.view(seqs[i]), ps[i].out.view, ps[i].lse.data()});
  AttentionOptions o;
  o.threads = 2;
  m.apply(o);
  plan.run(bufs, o);
  double worst = 0;
  expect_reference(ps[0], w0, m, &worst);
  expect_reference(ps[1], plain, m, &worst);
  expect_reference(ps[2], w2, m, &worst);
}

}  // namespace
}  // namespace ism_test
