// Exporters: every format, decoded back, is exactly ism::dense_mask<bool> of
// the same window, for random layouts, causal, prefix-LM and full masks, with
// and without sliding windows; ggml's ALiBi distances, slopes and arithmetic.
#include "ism/mask/export.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/testing.hpp"

namespace {

using ism::index_t;
using namespace ism_test;

template <class Mask>
void check_exports(Rng& rng, const Mask& mask, index_t len) {
  const index_t n_k = rng.uniform(0, len), n_q = rng.uniform(0, len), q_offset = rng.uniform(0, len - n_q);
  SCOPED_TRACE(::testing::Message() << "n_q=" << n_q << " n_k=" << n_k << " q_offset=" << q_offset);
  const auto dense = ism::dense_mask<bool>(mask, n_q, n_k, q_offset);

  // FlashMask [LTS, UTE]: masked iff r >= LTS or r < UTE.
  const auto fm = ism::flashmask_startend_row_indices(mask, n_q, n_k, q_offset);
  ASSERT_EQ(fm.startend.size(), size_t(2 * n_k));
  for (index_t j = 0; j < n_k; ++j) {
    EXPECT_LE(fm.ute(j), fm.lts(j));
    EXPECT_LE(fm.lts(j), n_q);
    EXPECT_GE(fm.ute(j), 0);
    for (index_t r = 0; r < n_q; ++r) ASSERT_EQ(fm.masked(r, j), !dense(r, j)) << "row " << r << " col " << j;
  }

  // Per-query ranges.
  const auto qr = ism::query_kv_ranges(mask, n_q, n_k, q_offset);
  ASSERT_EQ(qr.kv_begin.size(), size_t(n_q));
  for (index_t r = 0; r < n_q; ++r) {
    EXPECT_LE(qr.kv_begin[size_t(r)], qr.kv_end[size_t(r)]);
    EXPECT_LE(qr.kv_end[size_t(r)], n_k);
    for (index_t j = 0; j < n_k; ++j)
      ASSERT_EQ(qr.kv_begin[size_t(r)] <= j && j < qr.kv_end[size_t(r)], dense(r, j)) << "row " << r << " col " << j;
  }

  // FlashInfer packed bits, little bit order.
  const auto packed = ism::flashinfer_packed_mask(mask, n_q, n_k, q_offset);
  ASSERT_EQ(packed.size(), size_t((n_q * n_k + 7) / 8));
  for (index_t i = 0; i < index_t(packed.size()) * 8; ++i) {
    const bool bit = (packed[size_t(i / 8)] >> (i % 8)) & 1u;
    ASSERT_EQ(bit, i < n_q * n_k && dense(i / std::max<index_t>(n_k, 1), i % std::max<index_t>(n_k, 1))) << "bit " << i;
  }

  // ggml: padded rows, 0 / -inf.
  const index_t pad = rng.coin() ? ism::ggml_kq_mask_pad : rng.uniform(1, 40);
  const auto gg = ism::ggml_kq_mask(mask, n_q, n_k, q_offset, pad);
  EXPECT_EQ(gg.n_batch_pad % pad, 0);
  EXPECT_GE(gg.n_batch_pad, n_q);
  EXPECT_LT(gg.n_batch_pad - n_q, pad);
  ASSERT_EQ(gg.data.size(), size_t(gg.n_batch_pad * n_k));
  for (index_t r = 0; r < gg.n_batch_pad; ++r)
    for (index_t j = 0; j < n_k; ++j) {
      const float x = float(gg.at(r, j));
      if (r < n_q && dense(r, j)) ASSERT_EQ(x, 0.f) << "row " << r << " col " << j;
      else ASSERT_TRUE(std::isinf(x) && x < 0) << "row " << r << " col " << j << " = " << x;
    }

  // FlexAttention block lists.
  const index_t qb = rng.uniform(1, 24), kb = rng.uniform(1, 24);
  const auto fx = ism::flex_block_mask(mask, n_q, n_k, q_offset, qb, kb);
  ASSERT_EQ(fx.num_q_blocks, (n_q + qb - 1) / qb);
  ASSERT_EQ(fx.num_kv_blocks, (n_k + kb - 1) / kb);
  const index_t nkb = fx.num_kv_blocks;
  for (index_t b = 0; b < fx.num_q_blocks; ++b) {
    const auto row = [&](const std::vector<std::int32_t>& v) {
      return std::vector<std::int32_t>(v.begin() + b * nkb, v.begin() + (b + 1) * nkb);
    };
    const auto part = row(fx.kv_indices), full = row(fx.full_kv_indices);
    const index_t np = fx.kv_num_blocks[size_t(b)], nf = fx.full_kv_num_blocks[size_t(b)];
    for (const auto* list : {&part, &full}) {  // a permutation: listed blocks, then the rest, each ascending
      auto sorted = *list;
      std::sort(sorted.begin(), sorted.end());
      for (index_t c = 0; c < nkb; ++c) ASSERT_EQ(sorted[size_t(c)], c);
    }
    EXPECT_TRUE(std::is_sorted(part.begin(), part.begin() + np) && std::is_sorted(part.begin() + np, part.end()));
    EXPECT_TRUE(std::is_sorted(full.begin(), full.begin() + nf) && std::is_sorted(full.begin() + nf, full.end()));
    for (index_t c = 0; c < nkb; ++c) {
      index_t visible = 0, total = 0;
      for (index_t r = b * qb; r < std::min(n_q, (b + 1) * qb); ++r)
        for (index_t j = c * kb; j < std::min(n_k, (c + 1) * kb); ++j, ++total) visible += dense(r, j);
      const bool in_part = std::find(part.begin(), part.begin() + np, c) != part.begin() + np;
      const bool in_full = std::find(full.begin(), full.begin() + nf, c) != full.begin() + nf;
      EXPECT_EQ(in_full, visible == total) << "q block " << b << " kv block " << c;
      EXPECT_EQ(in_part, visible > 0 && visible < total) << "q block " << b << " kv block " << c;
    }
  }
}

TEST(Export, EveryFormatDecodesToTheDenseMask) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 150; ++iter) {
    const RandomLayout layout = random_layout(rng, 3, 6, 16);
    SCOPED_TRACE(layout.describe());
    const auto mask = layout.mask();
    check_exports(rng, mask, mask.length());
  }
  for (int iter = 0; iter < 30; ++iter) {
    const index_t len = rng.uniform(1, 70);
    check_exports(rng, ism::causal_mask(), len);
    check_exports(rng, ism::prefix_mask(rng.uniform(0, len)), len);
    check_exports(rng, ism::full_mask(), len);
  }
}

// Sliding windows go through every format like any other policy: windows of
// 1, small, about the length, and beyond it, over layouts and simple masks.
TEST(Export, SlidingWindowsDecodeToTheDenseMask) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  auto window = [&](index_t len) {
    const index_t pick = rng.uniform(0, 3);
    return pick == 0 ? index_t(1) : pick == 1 ? rng.uniform(2, 6) : pick == 2 ? len : len + rng.uniform(1, 10);
  };
  for (int iter = 0; iter < 100; ++iter) {
    const RandomLayout layout = random_layout(rng, 3, 6, 16);
    const auto inner = layout.mask();
    const index_t w = window(inner.length());
    SCOPED_TRACE(layout.describe() + " window " + std::to_string(w));
    check_exports(rng, ism::sliding_window(inner, w), inner.length());
    check_exports(rng, ism::sliding_window(inner.bounds(), w), inner.length());
  }
  for (int iter = 0; iter < 30; ++iter) {
    const index_t len = rng.uniform(1, 70), w = window(len);
    SCOPED_TRACE("window " + std::to_string(w));
    check_exports(rng, ism::sliding_window(ism::causal_mask(), w), len);
    check_exports(rng, ism::sliding_window(ism::prefix_mask(rng.uniform(0, len)), w), len);
    check_exports(rng, ism::sliding_window(ism::full_mask(), w), len);
  }
}

// ggml's ALiBi reads -|i - j| from the mask where visible and scales it by the
// head's slope, which it derives from max_bias.
TEST(Export, GgmlAlibiDistancesAndSlopes) {
  const auto mask = ism::sliding_window(ism::ism_mask({0, 3, 6, 9}), 4);
  const index_t off = 2, n_q = 7, n_k = 9;
  const auto gg = ism::ggml_kq_mask(mask, n_q, n_k, off, 8, ism::GgmlKqValues::AlibiDistance);
  const auto dense = ism::dense_mask<bool>(mask, n_q, n_k, off);
  EXPECT_EQ(gg.n_batch_pad, 8);
  for (index_t r = 0; r < gg.n_batch_pad; ++r)
    for (index_t j = 0; j < n_k; ++j) {
      const float x = float(gg.at(r, j));
      if (r < n_q && dense(r, j)) {
        EXPECT_EQ(x, -float(std::abs(off + r - j))) << "row " << r << " col " << j;
      } else {
        EXPECT_TRUE(std::isinf(x) && x < 0) << "row " << r << " col " << j;
      }
    }
  // Distances F16 cannot hold are refused; a window keeps them small.
  expect_invalid([] { ism::ggml_kq_mask(ism::full_mask(), 1, 70000, 0, 1, ism::GgmlKqValues::AlibiDistance); },
                 {"ism::ggml_kq_mask", "distance 69999", "65504"});
  const auto far = ism::ggml_kq_mask(ism::sliding_window(ism::full_mask(), 3000), 1, 70000, 66000, 1,
                                     ism::GgmlKqValues::AlibiDistance);
  EXPECT_EQ(float(far.at(0, 66000 - 2999)), -3000.f);  // F16 steps by 2 above 2048 (ties to even)
  EXPECT_EQ(float(far.at(0, 66000 - 2048)), -2048.f);

  // slope_h: 2^-(8/n)(h+1) for the first n = 8 heads, then the odd powers of 2^-(4/n).
  const auto s8 = ism::ggml_alibi_slopes(8, 8.f);
  for (index_t h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s8[size_t(h)], std::ldexp(1.f, -int(h) - 1)) << h;
  const auto s12 = ism::ggml_alibi_slopes(12, 8.f);
  for (index_t h = 8; h < 12; ++h) EXPECT_FLOAT_EQ(s12[size_t(h)], std::exp2(-0.5f * float(2 * (h - 8) + 1))) << h;
  for (float s : ism::ggml_alibi_slopes(5, 0.f)) EXPECT_EQ(s, 1.f);
  expect_invalid([] { ism::ggml_alibi_slopes(0, 8.f); }, {"ism::ggml_alibi_slopes", "n_head = 0"});
  expect_invalid([] { ism::ggml_alibi_slopes(4, -1.f); }, {"max_bias = -1"});
  expect_invalid([] { ism::ggml_alibi_slopes(4, std::nanf("")); }, {"max_bias = nan"});
}

// The mapping export.hpp documents, checked end to end: ggml_flash_attn_ext's
// arithmetic (scale, softcap, + slope * mask value, sinks in the denominator)
// written out in fp64 on the exported mask and ggml's slopes, against the
// fp64 reference run with the matching AttentionOptions.
TEST(Export, GgmlArithmeticOnTheExportedMaskIsTheReference) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 40; ++iter) {
    const RandomLayout layout = random_layout(rng, 2, 5, 12);
    const auto inner = layout.mask();
    const index_t n = inner.length(), w = rng.uniform(1, n + 2);
    const auto mask = ism::sliding_window(inner, w);
    const index_t kv_heads = rng.uniform(1, 2), heads = kv_heads * rng.uniform(1, 3), dim = rng.uniform(1, 16);
    const index_t n_q = rng.uniform(1, n), off = rng.uniform(0, n - n_q), n_k = rng.uniform(off + n_q, n);
    const bool alibi = rng.coin(), sinks_on = rng.coin();
    const float max_bias = alibi && rng.coin() ? float(rng.uniform(1, 8)) : 0.f;
    const float softcap = rng.coin() ? float(rng.real(0.5, 5.0)) : 0.f, scale = float(rng.real(0.1, 2.0));
    SCOPED_TRACE(::testing::Message() << layout.describe() << " window " << w << " alibi " << alibi << " max_bias "
                                      << max_bias << " softcap " << softcap << " sinks " << sinks_on);
    Tensor<float> q(n_q, heads, dim), k(n_k, kv_heads, dim), v(n_k, kv_heads, dim);
    q.fill_random(rng, -2, 2);
    k.fill_random(rng, -2, 2);
    v.fill_random(rng);
    std::vector<float> sinks(static_cast<size_t>(heads));
    for (float& x : sinks) x = float(rng.real(-3, 3));
    const std::vector<float> slopes = ism::ggml_alibi_slopes(heads, max_bias);

    // ggml, as ops.cpp computes it (the mask holds distances only for ALiBi).
    const auto gg = ism::ggml_kq_mask(mask, n_q, n_k, off, 1,
                                      alibi ? ism::GgmlKqValues::AlibiDistance : ism::GgmlKqValues::Zero);
    Tensor<double> want(n_q, heads, dim);
    for (index_t h = 0; h < heads; ++h)
      for (index_t r = 0; r < n_q; ++r) {
        const double slope = max_bias > 0.f ? double(slopes[size_t(h)]) : 1.0;
        std::vector<double> s(size_t(n_k), -std::numeric_limits<double>::infinity());
        double m = sinks_on ? double(sinks[size_t(h)]) : -std::numeric_limits<double>::infinity();
        for (index_t j = 0; j < n_k; ++j) {
          const double mv = double(float(gg.at(r, j)));
          if (std::isinf(mv)) continue;
          double dot = 0;
          for (index_t d = 0; d < dim; ++d) dot += double(q.view(r, h, d)) * double(k.view(j, h / (heads / kv_heads), d));
          double x = double(scale) * dot;
          if (softcap != 0.f) x = double(softcap) * std::tanh(x / double(softcap));
          s[size_t(j)] = x + slope * mv;
          m = std::max(m, s[size_t(j)]);
        }
        if (std::isinf(m)) continue;  // no key and no sink: 0
        double sum = sinks_on ? std::exp(double(sinks[size_t(h)]) - m) : 0.0;
        for (index_t j = 0; j < n_k; ++j) sum += std::exp(s[size_t(j)] - m);
        for (index_t d = 0; d < dim; ++d) {
          double acc = 0;
          for (index_t j = 0; j < n_k; ++j) acc += std::exp(s[size_t(j)] - m) * double(v.view(j, h / (heads / kv_heads), d));
          want.view(r, h, d) = acc / sum;
        }
      }

    ism::AttentionOptions o;
    o.q_offset = off;
    o.scale = scale;
    o.softcap = softcap;
    o.sinks = sinks_on ? sinks.data() : nullptr;
    const std::vector<float> ones(size_t(heads), 1.f);
    o.alibi_slopes = alibi ? (max_bias > 0.f ? slopes.data() : ones.data()) : nullptr;
    Tensor<double> got(n_q, heads, dim);
    ism::reference_attention_into<float, double, double>(q.cview(), k.cview(), v.cview(), got.view, mask, o, nullptr);
    for (index_t r = 0; r < n_q; ++r)
      for (index_t h = 0; h < heads; ++h)
        for (index_t d = 0; d < dim; ++d)
          ASSERT_NEAR(got.view(r, h, d), want.view(r, h, d), 1e-12) << "row " << r << " head " << h << " d " << d;
  }
}

TEST(Export, KnownSmallCase) {
  // query [0,2) B, answer [2,4) C: rows see [0,2), [0,2), [0,3), [0,4).
  const auto mask = ism::ism_mask({0, 2, 4});
  const auto fm = ism::flashmask_startend_row_indices(mask, 4, 4);
  EXPECT_EQ(fm.startend, (std::vector<std::int32_t>{4, 0, 4, 0, 4, 2, 4, 3}));
  // Two documents and padding: columns nobody sees cut at their diagonal row.
  const auto packed = ism::packed_mask({{{2, ism::Attend::Causal}}, {{2, ism::Attend::Bidirectional}}}, 2);
  const auto fp = ism::flashmask_startend_row_indices(packed, 6, 6);
  EXPECT_EQ(fp.startend, (std::vector<std::int32_t>{2, 0, 2, 1, 4, 2, 4, 2, 4, 4, 5, 5}));
  const auto gg = ism::ggml_kq_mask(mask, 4, 4);
  EXPECT_EQ(gg.n_batch_pad, 64);
  const auto fx = ism::flex_block_mask(mask, 4, 4, 0, 2, 2);
  EXPECT_EQ(fx.full_kv_num_blocks, (std::vector<std::int32_t>{1, 1}));
  EXPECT_EQ(fx.kv_num_blocks, (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(fx.kv_indices, (std::vector<std::int32_t>{0, 1, 1, 0}));
}

// A policy whose intervals move backwards cannot be described column-wise.
struct BackwardsMask {
  ism::KeyRange keys(index_t q) const { return q == 1 ? ism::KeyRange{0, 1} : ism::KeyRange{0, q + 2}; }
  bool allowed(index_t q, index_t k) const { return keys(q).contains(k); }
  index_t length() const { return ism::unbounded; }
};

TEST(Export, RejectsWhatAFormatCannotHold) {
  try {
    ism::flashmask_startend_row_indices(BackwardsMask{}, 3, 4);
    FAIL() << "no exception";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row 1 sees keys [0, 1)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ism::flex_block_mask(ism::causal_mask(), 4, 4, 0, 0, 2), ism::invalid_argument);
  EXPECT_THROW(ism::ggml_kq_mask(ism::causal_mask(), 4, 4, 0, 0), ism::invalid_argument);
  EXPECT_THROW(ism::query_kv_ranges(ism::causal_mask(), 4, 4, -1), ism::invalid_argument);
}

}  // namespace
