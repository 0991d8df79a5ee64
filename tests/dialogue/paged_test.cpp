// Paged KV caches: attention through a block table equals attention over the
// same keys stored contiguously, for every mask, GQA and offset, random page
// sizes and shuffled page tables; the owning cache allocates and frees pages
// correctly; bad arguments are named and write nothing.
#include "ism/kv/paged_cache.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "dialogue/dialogue_testing.hpp"
#include "ism/dialogue/dialogue.hpp"

namespace ism_test {

void attend_rows(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v, Tensor<float>& out,
                 const ism::SegmentMask& mask, index_t q_offset, index_t n_q, index_t n_k) {
  ism::AttentionOptions opt;
  opt.q_offset = q_offset;
  ism::attention<float>(rows(q.cview(), q_offset, n_q), rows(k.cview(), 0, n_k), rows(v.cview(), 0, n_k),
                        rows(out.view, q_offset, n_q), mask, opt);
}

}  // namespace ism_test

namespace {

using ism::index_t;
using namespace ism_test;

// A hand-built pool whose pages hold the tokens of k/v in a shuffled order,
// with `extra` unused pages around them.
template <class T>
struct ShuffledPool {
  std::vector<T> k, v;
  std::vector<index_t> table;
  index_t pages = 0;
  ShuffledPool(Rng& rng, const Tensor<T>& kt, const Tensor<T>& vt, index_t page_size, index_t extra) {
    const index_t n = kt.view.tokens, heads = kt.view.heads, dim = kt.view.dim;
    const index_t blocks = (n + page_size - 1) / page_size;
    pages = blocks + extra;
    std::vector<index_t> perm(static_cast<size_t>(pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen);
    table.assign(perm.begin(), perm.begin() + blocks);
    // Unused slots hold a huge value: reading one by mistake shows up at once.
    k.assign(size_t(pages * page_size * heads * dim), T(1e4f));
    v.assign(k.size(), T(1e4f));
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < heads; ++h)
        for (index_t d = 0; d < dim; ++d) {
          const size_t at = size_t(((table[size_t(t / page_size)] * page_size + t % page_size) * heads + h) * dim + d);
          k[at] = kt.view(t, h, d);
          v[at] = vt.view(t, h, d);
        }
  }
  ism::PagedKV<T> view(index_t page_size, index_t heads, index_t dim, index_t tokens) const {
    return ism::PagedKV<T>(k.data(), v.data(), pages, page_size, heads, dim, table.data(), tokens);
  }
};

// One random problem under `mask` (of length `len`, or unbounded masks with a
// chosen len): contiguous vs paged vs the fp64 reference.
template <class T, class Mask>
void check_paged_equals_contiguous(Rng& rng, const Mask& mask, index_t len) {
  const index_t n_k = rng.uniform(1, len);
  const index_t n_q = rng.uniform(1, len);
  const bool default_offset = n_q <= n_k && rng.coin(0.3);
  const index_t q_offset = default_offset ? n_k - n_q : rng.uniform(0, len - n_q);
  const index_t kv_heads = rng.uniform(1, 3), q_heads = kv_heads * rng.uniform(1, 4), dim = rng.uniform(1, 40);
  const index_t page_size = rng.uniform(1, 17);
  SCOPED_TRACE(::testing::Message() << "n_q=" << n_q << " n_k=" << n_k << " q_offset=" << q_offset
                                    << " heads=" << q_heads << "/" << kv_heads << " dim=" << dim
                                    << " page_size=" << page_size);
  Tensor<T> q(n_q, q_heads, dim, rng.coin()), k(n_k, kv_heads, dim, rng.coin(), rng.uniform(0, 3)),
      v(n_k, kv_heads, dim), out_c(n_q, q_heads, dim), out_p(n_q, q_heads, dim);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  const ShuffledPool<T> pool(rng, k, v, page_size, rng.uniform(0, 4));
  ism::AttentionOptions opt;
  opt.q_offset = default_offset ? -1 : q_offset;
  std::vector<float> lse_c(size_t(q_heads * n_q)), lse_p(lse_c.size());
  opt.lse = lse_c.data();
  ism::attention<T>(q.cview(), k.cview(), v.cview(), out_c.view, mask, opt);
  opt.lse = lse_p.data();
  ism::attention<T>(q.cview(), pool.view(page_size, kv_heads, dim, n_k), out_p.view, mask, opt);
  // The kernel reads rows through either source and does the same arithmetic.
  EXPECT_EQ(max_abs_diff(out_c, out_p, 0, n_q), 0.0);
  EXPECT_EQ(lse_c, lse_p);
  // And both are attention: the fp64 reference, to the element type's rounding.
  Tensor<double> ref(n_q, q_heads, dim);
  opt.lse = nullptr;
  ism::reference_attention_into<T, double, double>(q.cview(), k.cview(), v.cview(), ref.view, mask, opt, nullptr);
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-2;
  EXPECT_LE(max_abs_diff(out_p, ref, 0, n_q), tol);
}

template <class T>
void check_random_layouts(Rng& rng, int layouts) {
  for (int iter = 0; iter < layouts; ++iter) {
    const RandomLayout layout = random_layout(rng, 3, 6, 20);
    SCOPED_TRACE(layout.describe());
    const ism::SegmentMask mask = layout.mask();
    check_paged_equals_contiguous<T>(rng, mask, mask.length());
  }
}

TEST(PagedKV, EqualsContiguousForEveryMaskGqaAndOffset) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  check_random_layouts<float>(rng, 60);
  // Causal, prefix-LM and full attention as layouts (one Causal segment;
  // Bidirectional prefix then Causal; one Bidirectional segment): the paged
  // source is independent of the mask policy type, so one instantiation per
  // source keeps this binary's compile time down.
  using ism::Attend;
  for (int iter = 0; iter < 15; ++iter) {
    const index_t len = rng.uniform(2, 90), prefix = rng.uniform(1, len - 1);
    check_paged_equals_contiguous<float>(rng, ism::segment_mask({{len, Attend::Causal}}), len);
    check_paged_equals_contiguous<float>(
        rng, ism::segment_mask({{prefix, Attend::Bidirectional}, {len - prefix, Attend::Causal}}), len);
    check_paged_equals_contiguous<float>(rng, ism::segment_mask({{len, Attend::Bidirectional}}), len);
  }
}

TEST(PagedKV, EqualsContiguousInBfloat16) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  check_random_layouts<Eigen::bfloat16>(rng, 25);
}

TEST(PagedKVCache, InterleavedSequencesKeepTheirTokens) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t n = 40, heads = 2, dim = 5, page_size = rng.uniform(1, 9);
  const index_t pages = std::max<index_t>(20, 3 * ((n + page_size - 1) / page_size)) + 4;
  ism::PagedKVCache<float> cache(pages, page_size, heads, dim);
  // Scramble the free list: single-page sequences freed in random order.
  std::vector<index_t> scratch;
  for (int i = 0; i < 20; ++i) {
    scratch.push_back(cache.add_sequence());
    Tensor<float> one(1, heads, dim);
    cache.append(scratch.back(), one.cview(), one.cview());
  }
  std::shuffle(scratch.begin(), scratch.end(), rng.gen);
  for (index_t s : scratch) cache.free_sequence(s);
  EXPECT_EQ(cache.free_pages(), pages);

  // Three sequences grow in random interleaved chunks.
  std::vector<Tensor<float>> ks, vs;
  std::vector<index_t> ids, filled(3, 0);
  for (int s = 0; s < 3; ++s) {
    ks.emplace_back(n, heads, dim);
    vs.emplace_back(n, heads, dim);
    ks.back().fill_random(rng);
    vs.back().fill_random(rng);
    ids.push_back(cache.add_sequence());
  }
  while (filled[0] < n || filled[1] < n || filled[2] < n) {
    const size_t s = size_t(rng.uniform(0, 2));
    const index_t m = std::min(n - filled[s], rng.uniform(1, 7));
    if (m == 0) continue;
    cache.append(ids[s], rows(ks[s].cview(), filled[s], m), rows(vs[s].cview(), filled[s], m));
    filled[s] += m;
  }
  bool out_of_order = false;
  for (size_t s = 0; s < 3; ++s) {
    const auto& table = cache.block_table(ids[s]);
    EXPECT_EQ(index_t(table.size()), (n + page_size - 1) / page_size);
    out_of_order |= !std::is_sorted(table.begin(), table.end());
    const auto view = cache.view(ids[s]);
    ASSERT_EQ(view.tokens(), n);
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < heads; ++h)
        for (index_t d = 0; d < dim; ++d) {
          ASSERT_EQ(view.key(t, h)[d], ks[s].view(t, h, d)) << "seq " << s << " t " << t;
          ASSERT_EQ(view.value(t, h)[d], vs[s].view(t, h, d)) << "seq " << s << " t " << t;
        }
  }
  EXPECT_TRUE(out_of_order || page_size >= n);  // interleaving really scattered the pages
  EXPECT_EQ(cache.free_pages(), pages - 3 * ((n + page_size - 1) / page_size));

  // Truncation returns whole pages only.
  const index_t keep = rng.uniform(0, n);
  cache.truncate(ids[1], keep);
  EXPECT_EQ(cache.tokens(ids[1]), keep);
  EXPECT_EQ(index_t(cache.block_table(ids[1]).size()), (keep + page_size - 1) / page_size);
  cache.free_sequence(ids[0]);
  EXPECT_THROW(cache.tokens(ids[0]), ism::invalid_argument);
}

TEST(PagedKVCache, RunningOutOfPagesChangesNothing) {
  ism::PagedKVCache<float> cache(3, 4, 1, 2);
  const index_t s = cache.add_sequence();
  Tensor<float> k(13, 1, 2), v(13, 1, 2);
  try {
    cache.append(s, k.cview(), v.cview());
    FAIL() << "no exception";
  } catch (const ism::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("needs 4 more pages"), std::string::npos) << msg;
    EXPECT_NE(msg.find("only 3 of 3"), std::string::npos) << msg;
  }
  EXPECT_EQ(cache.tokens(s), 0);
  EXPECT_EQ(cache.free_pages(), 3);
  cache.append(s, rows(k.cview(), 0, 12), rows(v.cview(), 0, 12));
  EXPECT_EQ(cache.free_pages(), 0);
  EXPECT_THROW(cache.append(s, rows(k.cview(), 0, 1), rows(v.cview(), 0, 1)), ism::invalid_argument);
  EXPECT_THROW(ism::PagedKVCache<float>(0, 4, 1, 2), ism::invalid_argument);
  EXPECT_THROW(ism::PagedKVCache<float>(2, 0, 1, 2), ism::invalid_argument);
}

TEST(PagedKV, BadArgumentsAreNamedAndWriteNothing) {
  const index_t n = 10, heads = 2, dim = 4, ps = 4;
  Tensor<float> q(n, heads, dim), k(n, 1, dim), v(n, 1, dim), out(n, heads, dim);
  Rng rng(7);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  for (auto& x : out.buf) x = 42.f;
  ShuffledPool<float> pool(rng, k, v, ps, 1);
  const auto mask = ism::ism_mask({0, 4, 10});
  auto message_of = [&](const ism::PagedKV<float>& kv, ism::HeadsView<float> o) {
    try {
      ism::attention<float>(q.cview(), kv, o, mask);
    } catch (const ism::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  auto good = pool.view(ps, 1, dim, n);
  EXPECT_EQ(message_of(good, out.view), "no exception");
  for (auto& x : out.buf) x = 42.f;

  std::vector<index_t> bad_table = pool.table;
  bad_table[1] = 7;
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), pool.pages, ps, 1, dim, bad_table.data(), n),
                       out.view)
                .find("kv.block_table[1] = 7"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), pool.pages, 0, 1, dim, pool.table.data(), n),
                       out.view)
                .find("kv.page_size = 0"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), pool.pages, ps, 1, dim, nullptr, n), out.view)
                .find("kv.block_table is null"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), pool.pages, ps, 1, dim + 1, pool.table.data(), n),
                       out.view)
                .find("kv.dim = 5 differs from q.dim = 4"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), pool.pages, ps, 3, dim, pool.table.data(), n),
                       out.view)
                .find("q.heads = 2 is not a multiple of kv.heads = 3"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(pool.k.data(), pool.v.data(), 2, ps, 1, dim, pool.table.data(), n), out.view)
                .find("more than kv.num_pages = 2"),
            std::string::npos);
  EXPECT_NE(message_of(ism::PagedKV<float>(nullptr, pool.v.data(), pool.pages, ps, 1, dim, pool.table.data(), n),
                       out.view)
                .find("kv.k_pages.data is null"),
            std::string::npos);
  // Output written into the pool itself.
  ism::HeadsView<float> in_pool{pool.v.data(), n, heads, dim, heads * dim, dim};
  EXPECT_NE(message_of(good, in_pool).find("out overlaps"), std::string::npos);
  for (float x : out.buf) ASSERT_EQ(x, 42.f) << "a throwing call wrote to out";
}

// A conversation played through a paged cache, as an engine runs it: truncate
// to the valid prefix, append the new tokens' K/V, attend the new rows.
TEST(PagedKV, DialogueThroughAPagedCacheEqualsWholeConversation) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 12; ++iter) {
    for (ism::DialogueMask kind : {ism::DialogueMask::Ism, ism::DialogueMask::MultiTurnPrefixLM}) {
      SCOPED_TRACE(ism::to_string(kind));
      const index_t kv_heads = rng.uniform(1, 2), q_heads = kv_heads * rng.uniform(1, 3), dim = rng.uniform(1, 24);
      const index_t page_size = rng.uniform(1, 16);
      std::vector<index_t> turns;  // query, answer, query, answer, ...
      for (index_t r = rng.uniform(1, 3); r > 0; --r) {
        turns.push_back(rng.uniform(1, 20));
        turns.push_back(rng.uniform(1, 12));
      }
      const index_t n = std::accumulate(turns.begin(), turns.end(), index_t(0));
      Tensor<float> q(n, q_heads, dim), k(n, kv_heads, dim), v(n, kv_heads, dim), out(n, q_heads, dim),
          whole(n, q_heads, dim);
      q.fill_random(rng);
      k.fill_random(rng);
      v.fill_random(rng);
      ism::PagedKVCache<float> cache(2 * ((n + page_size - 1) / page_size) + 2, page_size, kv_heads, dim);
      // Another sequence in the same pool, so pages interleave.
      const index_t other = cache.add_sequence(), seq = cache.add_sequence();
      ism::Dialogue d(kind);
      auto step = [&] {
        const ism::DialogueStep s = d.pending();
        cache.truncate(seq, s.reused);
        cache.append(seq, rows(k.cview(), s.q_offset, s.n_q), rows(v.cview(), s.q_offset, s.n_q));
        if (cache.tokens(other) < n) cache.append(other, rows(k.cview(), 0, 1), rows(v.cview(), 0, 1));
        ism::attention<float>(rows(q.cview(), s.q_offset, s.n_q), cache.view(seq), rows(out.view, s.q_offset, s.n_q),
                              d.mask(), s.options());
        d.commit();
      };
      for (size_t i = 0; i < turns.size(); i += 2) {
        d.add_query(turns[i]);
        step();
        for (index_t a = 0; a < turns[i + 1]; ++a) {
          d.append_answer(1);
          step();
        }
      }
      ism::attention<float>(q.cview(), k.cview(), v.cview(), whole.view, d.mask());
      EXPECT_LE(max_abs_diff(out, whole, 0, n), 2e-6);
    }
  }
}

}  // namespace
