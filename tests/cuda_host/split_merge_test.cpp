// The one merge rule of ism/core/split_merge.hpp (CUDA splits, CUDA decode
// warps, CPU key chunks), checked on the host: against one softmax over all
// keys in fp64 for random splits, for chunks that saw nothing, for NaN scores
// (the row is NaN whatever the split), and for sinks (they join once).
#include "ism/core/split_merge.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/testing.hpp"

namespace {

using ism::index_t;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kLog2e = 1.4426950408889634;

// Chunk states of a row's scores (natural units) cut at random points, as the
// kernels leave them: m and l in log2 units, o unnormalised. An empty chunk
// has l = 0 and garbage in o (never read).
struct Chunks {
  std::vector<float> m, l, o;
};
Chunks make_chunks(const std::vector<double>& score, const std::vector<double>& value, int chunks,
                   ism_test::Rng& rng) {
  const index_t n = index_t(score.size());
  std::vector<index_t> cut{0, n};
  for (int c = 1; c < chunks; ++c) cut.push_back(rng.uniform(0, n));
  std::sort(cut.begin(), cut.end());
  Chunks ch;
  for (int c = 0; c < chunks; ++c) {
    float m = -kInf;
    for (index_t j = cut[size_t(c)]; j < cut[size_t(c) + 1]; ++j) m = std::fmax(m, float(score[size_t(j)] * kLog2e));
    const float base = m == -kInf ? 0.f : m;
    float l = 0.f, o = 0.f;
    for (index_t j = cut[size_t(c)]; j < cut[size_t(c) + 1]; ++j) {
      const float p = std::exp2(float(score[size_t(j)] * kLog2e) - base);
      l += p;
      o += p * float(value[size_t(j)]);
    }
    ch.m.push_back(m);
    ch.l.push_back(l);
    ch.o.push_back(l == 0.f ? std::numeric_limits<float>::quiet_NaN() : o);  // garbage when empty
  }
  return ch;
}

// Merged output and LSE of the chunks.
std::pair<float, float> merge(const Chunks& ch, float sink) {
  std::vector<float> w(ch.m.size());
  const ism::FinishedRow fin = ism::merge_chunks_row(ch.m.data(), ch.l.data(), index_t(ch.m.size()), 1,
                                                     sink == -kInf ? -kInf : sink * float(kLog2e), w.data());
  const float o = ism::merge_value(w.data(), ch.l.data(), 1, ch.o.data(), 1, index_t(ch.m.size()));
  return {o * fin.inv, fin.lse};
}

TEST(SplitMerge, EqualsOneSoftmaxWithAndWithoutSink) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  for (int iter = 0; iter < 500; ++iter) {
    const index_t n = rng.uniform(1, 200);
    const int chunks = int(rng.uniform(1, 12));
    const double sink = rng.coin() ? -HUGE_VAL : rng.real(-20, 40);
    std::vector<double> score(static_cast<size_t>(n)), value(static_cast<size_t>(n));
    for (index_t j = 0; j < n; ++j) {
      score[size_t(j)] = rng.real(-30, 30);
      value[size_t(j)] = rng.real(-1, 1);
    }
    double top = sink;
    for (double s : score) top = std::max(top, s);
    double sum = std::isinf(sink) ? 0 : std::exp(sink - top), acc = 0;
    for (index_t j = 0; j < n; ++j) {
      sum += std::exp(score[size_t(j)] - top);
      acc += std::exp(score[size_t(j)] - top) * value[size_t(j)];
    }
    const auto [out, lse] = merge(make_chunks(score, value, chunks, rng), float(sink));
    SCOPED_TRACE(::testing::Message() << "n " << n << " chunks " << chunks << " sink " << sink);
    ASSERT_NEAR(lse, top + std::log(sum), 1e-5 * (1 + std::abs(top)));
    ASSERT_NEAR(out, acc / sum, 1e-5);
  }
}

TEST(SplitMerge, ChunksThatSawNothingAreDropped) {
  const float m[3] = {-kInf, 2.5f, -kInf}, l[3] = {0.f, 1.f, 0.f};
  const float o[3] = {std::numeric_limits<float>::quiet_NaN(), 0.75f, kInf};  // garbage in the dropped ones
  float w[3];
  const ism::FinishedRow fin = ism::merge_chunks_row(m, l, 3, 1, -kInf, w);
  EXPECT_FLOAT_EQ(fin.lse, 2.5f * 0.6931471805599453f);
  EXPECT_FLOAT_EQ(ism::merge_value(w, l, 1, o, 1, 3) * fin.inv, 0.75f);
  // No chunk saw a key: output 0 and LSE -inf, or the sink.
  const float none_m[2] = {-kInf, -kInf}, none_l[2] = {0.f, 0.f}, none_o[2] = {kInf, kInf};
  const ism::FinishedRow empty = ism::merge_chunks_row(none_m, none_l, 2, 1, -kInf, w);
  EXPECT_EQ(empty.lse, -kInf);
  EXPECT_EQ(ism::merge_value(w, none_l, 1, none_o, 1, 2) * empty.inv, 0.f);
  const ism::FinishedRow sunk = ism::merge_chunks_row(none_m, none_l, 2, 1, 3.f, w);
  EXPECT_FLOAT_EQ(sunk.lse, 3.f * 0.6931471805599453f);
  EXPECT_EQ(sunk.inv, 0.f);
}

// Issue 16: a NaN score in one chunk made that chunk's l NaN, and the merge
// dropped it (a max that skips NaN, a test `l > 0`): a finite, wrong row. The
// row is NaN with a NaN LSE however the keys are split, sink or not, and
// whichever chunk holds the NaN.
TEST(SplitMerge, NanScoreMakesTheRowNanForAnySplit) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  for (int iter = 0; iter < 200; ++iter) {
    const index_t n = rng.uniform(1, 100);
    std::vector<double> score(static_cast<size_t>(n)), value(static_cast<size_t>(n));
    for (index_t j = 0; j < n; ++j) {
      score[size_t(j)] = rng.real(-10, 10);
      value[size_t(j)] = rng.real(-1, 1);
    }
    score[size_t(rng.uniform(0, n - 1))] = std::numeric_limits<double>::quiet_NaN();
    if (rng.coin(0.2)) std::fill(score.begin(), score.end(), std::numeric_limits<double>::quiet_NaN());
    const int chunks = int(rng.uniform(1, 9));
    const float sink = rng.coin() ? -kInf : float(rng.real(-5, 5));
    const auto [out, lse] = merge(make_chunks(score, value, chunks, rng), sink);
    ASSERT_TRUE(std::isnan(out)) << "n " << n << " chunks " << chunks << " out " << out;
    ASSERT_TRUE(std::isnan(lse)) << "n " << n << " chunks " << chunks << " lse " << lse;
  }
}

TEST(SplitMerge, FinishRowCornerCases) {
  // Sink far above the scores: the sink takes the mass, nothing overflows.
  const ism::FinishedRow a = ism::finish_row(0.f, 1.f, 100.f);
  EXPECT_GT(a.inv, 0.f);
  EXPECT_LT(a.inv, 1e-30f);  // 2^-100
  EXPECT_FLOAT_EQ(a.lse, 100.f * 0.6931471805599453f);
  // Scores far above the sink: the sink vanishes.
  const ism::FinishedRow b = ism::finish_row(200.f, 2.f, 0.f);
  EXPECT_FLOAT_EQ(b.inv, 0.5f);
  EXPECT_FLOAT_EQ(b.lse, (200.f + 1.f) * 0.6931471805599453f);
  const ism::FinishedRow c = ism::finish_row(1.f, std::numeric_limits<float>::quiet_NaN(), -kInf);
  EXPECT_TRUE(std::isnan(c.inv));
  EXPECT_TRUE(std::isnan(c.lse));
}

}  // namespace
