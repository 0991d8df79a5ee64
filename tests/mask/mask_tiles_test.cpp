// Tile classification from corner rows, checked against the dense mask.
#include "common/testing.hpp"

namespace {

using ism::index_t;
using ism::TileKind;
using ism_test::Rng;

// What the dense mask says of a tile: no pair visible, all, or some.
template <class Mask>
TileKind dense_kind(const Mask& m, index_t q0, index_t q1, index_t k0, index_t k1, index_t n_k) {
  index_t seen = 0;
  for (index_t q = q0; q < q1; ++q)
    for (index_t k = k0; k < k1; ++k) seen += ism::visible_keys(m, q, n_k).contains(k);
  if (seen == 0) return TileKind::Empty;
  if (seen == (q1 - q0) * (k1 - k0)) return TileKind::Full;
  return TileKind::Partial;
}

template <class Mask>
void check_random_tiles(Rng& rng, const Mask& m, index_t n, bool has_padding, int count) {
  for (int t = 0; t < count; ++t) {
    const index_t n_k = rng.uniform(1, n);
    const index_t q0 = rng.uniform(0, n - 1), q1 = rng.uniform(q0 + 1, std::min(n, q0 + 40));
    const index_t k0 = rng.uniform(0, n_k - 1), k1 = rng.uniform(k0 + 1, std::min(n_k, k0 + 40));
    const TileKind got = ism::classify_tile(m, q0, q1, k0, k1, n_k);
    const TileKind want = dense_kind(m, q0, q1, k0, k1, n_k);
    SCOPED_TRACE(::testing::Message() << "tile q[" << q0 << "," << q1 << ") k[" << k0 << "," << k1
                                      << ") n_k " << n_k);
    if (has_padding && got == TileKind::Partial) {
      // Across padding rows (which see nothing) Partial is conservative.
      ASSERT_NE(want, TileKind::Full);
    } else {
      ASSERT_EQ(ism::to_string(got), std::string(ism::to_string(want)));
    }
  }
}

TEST(Tiles, ClassificationMatchesDenseOnRandomLayouts) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 3, 8, 30);
    SCOPED_TRACE(layout.describe());
    const auto m = layout.mask();
    check_random_tiles(rng, m, m.length(), layout.padding > 0, 40);
  }
}

TEST(Tiles, ClassificationMatchesDenseForSimpleMasks) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t n = 200;
  check_random_tiles(rng, ism::causal_mask(), n, false, 2000);
  check_random_tiles(rng, ism::full_mask(), n, false, 500);
  check_random_tiles(rng, ism::prefix_mask(rng.uniform(0, n)), n, false, 2000);
}

TEST(Tiles, TilesStraddlingBoundaries) {
  // Query and answer segments of 10; a document boundary at 30.
  const auto m = ism::packed_mask({{{10, ism::Attend::Bidirectional}, {10, ism::Attend::Causal},
                                    {10, ism::Attend::Bidirectional}},
                                   {{10, ism::Attend::Causal}}});
  EXPECT_EQ(ism::classify_tile(m, 0, 10, 0, 10, 40), TileKind::Full);      // a whole query segment
  EXPECT_EQ(ism::classify_tile(m, 5, 15, 0, 10, 40), TileKind::Full);      // answer rows see the query
  EXPECT_EQ(ism::classify_tile(m, 5, 15, 5, 15, 40), TileKind::Partial);   // straddles the boundary
  EXPECT_EQ(ism::classify_tile(m, 0, 10, 10, 20, 40), TileKind::Empty);    // a later segment
  EXPECT_EQ(ism::classify_tile(m, 30, 40, 0, 30, 40), TileKind::Empty);    // another document
  EXPECT_EQ(ism::classify_tile(m, 25, 35, 25, 35, 40), TileKind::Partial); // straddles documents
}

TEST(Tiles, BlockMapCountsAndVisiblePairs) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 100; ++iter) {
    const auto layout = ism_test::random_layout(rng, 2, 8, 40, false);
    const auto m = layout.mask();
    const index_t n = m.length();
    const index_t off = rng.uniform(0, n - 1), n_q = rng.uniform(1, n - off), n_k = rng.uniform(off + n_q, n);
    const index_t tq = rng.uniform(1, 32), tk = rng.uniform(1, 32);
    const ism::BlockMap map(m, n_q, n_k, off, tq, tk);
    const auto dense = ism::dense_mask<bool>(m, n_q, n_k, off);
    ASSERT_EQ(map.stats().visible_pairs, index_t(dense.count()));
    ASSERT_EQ(map.stats().total_pairs, n_q * n_k);
    index_t e = 0, f = 0, p = 0;
    for (index_t r = 0; r < map.tile_rows(); ++r)
      for (index_t c = 0; c < map.tile_cols(); ++c) {
        const index_t q0 = r * tq, q1 = std::min(n_q, q0 + tq), k0 = c * tk, k1 = std::min(n_k, k0 + tk);
        const auto block = dense.block(q0, k0, q1 - q0, k1 - k0);
        const TileKind want = block.count() == 0 ? TileKind::Empty
                              : block.all()      ? TileKind::Full
                                                 : TileKind::Partial;
        ASSERT_EQ(map.kind(r, c), want) << "tile " << r << "," << c;
        (want == TileKind::Empty ? e : want == TileKind::Full ? f : p)++;
      }
    ASSERT_EQ(map.stats().empty, e);
    ASSERT_EQ(map.stats().full, f);
    ASSERT_EQ(map.stats().partial, p);
    ASSERT_EQ(map.stats().tiles, e + f + p);
  }
}

TEST(Tiles, RowBlockKeysCoverExactlyTheVisibleUnion) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int iter = 0; iter < 300; ++iter) {
    const auto layout = ism_test::random_layout(rng, 3, 8, 20, false);
    const auto m = layout.mask();
    const index_t n = m.length();
    const index_t q0 = rng.uniform(0, n - 1), q1 = rng.uniform(q0 + 1, n), n_k = rng.uniform(1, n);
    const auto rb = ism::row_block_keys(m, q0, q1, n_k);
    for (index_t k = 0; k < n_k; ++k) {
      bool any = false, all = true;
      for (index_t q = q0; q < q1; ++q) {
        const bool v = ism::visible_keys(m, q, n_k).contains(k);
        any |= v;
        all &= v;
      }
      ASSERT_EQ(rb.all.contains(k), all) << "key " << k;
      ASSERT_EQ(rb.any.contains(k), any) << "key " << k;  // no gaps without padding
    }
  }
}

TEST(Tiles, IsmSkipsAboutHalfLikeCausal) {
  const index_t n = 4096, seg = n / 16;
  std::vector<index_t> b;
  for (index_t i = 0; i <= 16; ++i) b.push_back(i * seg);
  const ism::BlockMap ism_map(ism::ism_mask(b), n, n, 0, 64, 64);
  const ism::BlockMap causal_map(ism::causal_mask(), n, n, 0, 64, 64);
  EXPECT_NEAR(ism_map.stats().density(), causal_map.stats().density(), 0.05);
  EXPECT_GT(ism_map.stats().skipped_fraction(), 0.4);
}

}  // namespace
