// Many caller threads calling ism::attention at once, on separate output
// buffers, get bit-identical results to the same calls made one at a time.
// The inputs and one SegmentMask are shared by const reference across all
// threads (masks are immutable values). .ci/steps/45-tsan.sh runs this binary
// under ThreadSanitizer, so a data race fails CI even when results match.
#include <cstring>
#include <thread>
#include <vector>

#include "reliability/reliability.hpp"

namespace {

using ism::index_t;
using ism_test::Rng;
using ism_test::Tensor;

// One attention problem: inputs shared by every thread, a mask of some kind.
template <class T>
struct Shared {
  index_t n_q, n_k, q_offset;
  Tensor<T> q, k, v;
  Shared(Rng& rng, index_t nq, index_t nk, index_t heads, index_t kv_heads, index_t dim)
      : n_q(nq), n_k(nk), q_offset(nk - nq), q(nq, heads, dim, rng.coin()), k(nk, kv_heads, dim, rng.coin(), 1),
        v(nk, kv_heads, dim) {
    q.fill_random(rng);
    k.fill_random(rng);
    v.fill_random(rng);
  }
  template <class Mask>
  Tensor<T> run(const Mask& mask, int threads) const {
    Tensor<T> out(n_q, q.view.heads, q.view.dim);
    ism::AttentionOptions opt;
    opt.threads = threads;
    ism::attention<T>(q.cview(), k.cview(), v.cview(), out.view, mask, opt);
    return out;
  }
};

template <class T>
bool bitwise_equal(const Tensor<T>& a, const Tensor<T>& b) {
  return a.buf.size() == b.buf.size() && std::memcmp(a.buf.data(), b.buf.data(), a.buf.size() * sizeof(T)) == 0;
}

// Callers x rounds concurrent calls per problem, each checked bitwise against
// the sequential result. `threads` is the per-call thread count: 1 keeps each
// call on its caller's thread; 2 makes the callers share the library's pool.
void hammer(std::uint64_t seed, int threads) {
  Rng rng(seed);
  // Prefill (several query tiles) and decode (the split-key path with its
  // merge), fp32 and bf16, one mask object shared by all of them.
  const index_t n = rng.uniform(150, 260);
  std::vector<index_t> b{0};
  while (b.back() < n) b.push_back(std::min(n, b.back() + rng.uniform(1, 60)));
  const ism::SegmentMask mask = ism::ism_mask(b);
  const auto causal = ism::causal_mask();
  const Shared<float> prefill(rng, n, n, 4, 2, 40);
  const Shared<float> decode(rng, 1, n, 2, 1, 64);
  const Shared<Eigen::bfloat16> chunk(rng, 70, n, 2, 2, 24);

  const auto want_prefill = prefill.run(mask, 1);
  const auto want_decode = decode.run(mask, 1);
  const auto want_chunk = chunk.run(mask, 1);
  const auto want_causal = prefill.run(causal, 1);

  constexpr int kCallers = 6, kRounds = 3;
  std::vector<int> mismatches(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c)
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r) {
        // Different callers start at different problems so that all of them
        // overlap with each other.
        for (int i = 0; i < 4; ++i) switch ((c + i) % 4) {
            case 0: mismatches[size_t(c)] += !bitwise_equal(prefill.run(mask, threads), want_prefill); break;
            case 1: mismatches[size_t(c)] += !bitwise_equal(decode.run(mask, threads), want_decode); break;
            case 2: mismatches[size_t(c)] += !bitwise_equal(chunk.run(mask, threads), want_chunk); break;
            default: mismatches[size_t(c)] += !bitwise_equal(prefill.run(causal, threads), want_causal); break;
          }
      }
    });
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(mismatches[size_t(c)], 0) << "caller " << c;

  // And the sequential result is the right one.
  Tensor<double> ref(n, 4, 40);
  ism::reference_attention_into<float, double, double>(prefill.q.cview(), prefill.k.cview(), prefill.v.cview(),
                                                       ref.view, mask, {}, nullptr);
  for (index_t t = 0; t < n; ++t)
    for (index_t h = 0; h < 4; ++h)
      for (index_t d = 0; d < 40; ++d) ASSERT_NEAR(want_prefill.view(t, h, d), ref.view(t, h, d), 1e-5);
}

TEST(Concurrency, ManyCallersOneThreadEach) {
  ISM_SEEDED_TEST_BODY(seed);
  hammer(seed, 1);
}

TEST(Concurrency, ManyCallersSharingThePool) {
  ISM_SEEDED_TEST_BODY(seed);
  hammer(seed, 2);
}

// A mask read by many threads at once while none writes it: every accessor
// gives the same answers as on one thread.
TEST(Concurrency, SharedMaskReads) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const auto layout = ism_test::random_layout(rng, 3, 8, 40);
  const ism::SegmentMask mask = layout.mask();
  const index_t n = mask.length();
  const auto want_rows = ism::row_bounds(mask, n, n);
  const auto want_splits = mask.safe_splits();
  const ism::BlockMap want_map(mask, n, n, 0, 16, 16);
  std::vector<int> bad(4, 0);
  std::vector<std::thread> readers;
  for (int c = 0; c < 4; ++c)
    readers.emplace_back([&, c] {
      for (int r = 0; r < 20; ++r) {
        const auto rows = ism::row_bounds(mask, n, n);
        for (index_t i = 0; i < n; ++i)
          bad[size_t(c)] += rows[size_t(i)].begin != want_rows[size_t(i)].begin ||
                            rows[size_t(i)].end != want_rows[size_t(i)].end;
        bad[size_t(c)] += mask.safe_splits() != want_splits;
        const ism::BlockMap map(mask, n, n, 0, 16, 16);
        for (index_t tr = 0; tr < map.tile_rows(); ++tr)
          for (index_t tc = 0; tc < map.tile_cols(); ++tc) bad[size_t(c)] += map.kind(tr, tc) != want_map.kind(tr, tc);
      }
    });
  for (auto& t : readers) t.join();
  for (int c = 0; c < 4; ++c) EXPECT_EQ(bad[size_t(c)], 0) << "reader " << c;
}

}  // namespace
