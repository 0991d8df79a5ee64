// Exporters: every format, decoded back, is exactly ism::dense_mask<bool> of
// the same window, for random layouts, causal, prefix-LM and full masks.
#include "ism/mask/export.hpp"

#include <algorithm>
#include <cmath>
#include <string>

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
