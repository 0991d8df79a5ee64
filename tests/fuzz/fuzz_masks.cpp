// Fuzz target: bytes -> segment lists, boundaries, growth calls, windows,
// sliding windows and tiles. Every builder and materialiser must either throw
// ism::invalid_argument or agree with the mask rule of docs/DESIGN.md section 1,
// written here a second
// time, literally, from per-position document and segment ids.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fuzz/fuzz_input.hpp"
#include "ism/ism.hpp"
#include "ism/mask/export.hpp"

namespace {

using ism::Attend;
using ism::index_t;
using ism::Segment;
using ism_fuzz::Input;
using ism_fuzz::throws_invalid;

// Layouts and windows larger than this are valid but skipped: the brute-force
// checks are quadratic or cubic in the length and one input must stay fast.
constexpr index_t kMaxLength = 160;
constexpr index_t kMaxWindow = 48;

// The layout as the test understands it: spans of (length, mode, doc), doc -1
// for padding. Only this file's own code fills it.
struct Model {
  struct Span {
    index_t length;
    Attend attend;
    index_t doc;
  };
  std::vector<Span> spans;
  index_t docs = 0;
  // Position -> (doc, segment index, mode), recomputed on demand.
  std::vector<index_t> doc_of, seg_of;
  std::vector<Attend> mode_of;

  index_t length() const {
    index_t n = 0;
    for (const Span& s : spans) n += s.length;
    return n;
  }
  void index() {
    doc_of.clear();
    seg_of.clear();
    mode_of.clear();
    for (size_t s = 0; s < spans.size(); ++s)
      for (index_t i = 0; i < spans[s].length; ++i) {
        doc_of.push_back(spans[s].doc);
        seg_of.push_back(index_t(s));
        mode_of.push_back(spans[s].attend);
      }
  }
  bool allowed(index_t i, index_t j) const {
    const index_t n = index_t(doc_of.size());
    if (i < 0 || j < 0 || i >= n || j >= n) return false;
    const index_t di = doc_of[size_t(i)];
    if (di < 0 || di != doc_of[size_t(j)]) return false;
    return j <= i || (seg_of[size_t(i)] == seg_of[size_t(j)] && mode_of[size_t(i)] == Attend::Bidirectional);
  }
};

Attend mode(Input& in) { return in.coin() ? Attend::Causal : Attend::Bidirectional; }

std::vector<Segment> segments(Input& in, index_t max_count) {
  std::vector<Segment> s(size_t(in.small(0, max_count)));
  for (Segment& x : s) x = {in.size(1, 12), mode(in)};
  return s;
}

// Sum of lengths as the library must see it: -1 when a length is not positive,
// -2 when the total cannot be a layout length (overflow or above max_length).
index_t checked_total(index_t base, const std::vector<Segment>& segs) {
  index_t total = base;
  for (const Segment& s : segs) {
    if (s.length <= 0) return -1;
    if (__builtin_add_overflow(total, s.length, &total) || total > ism::SegmentMask::max_length()) return -2;
  }
  return total;
}

// --- materialisers, checked against brute(i, j) on absolute positions -----------

struct Window {
  index_t n_q, n_k, q_offset;
};

bool window_valid(const Window& w, index_t length) {
  index_t q_end = 0;
  if (w.n_q < 0 || w.n_k < 0 || w.q_offset < 0 || __builtin_add_overflow(w.q_offset, w.n_q, &q_end))
    return false;
  return length == ism::unbounded || (q_end <= length && w.n_k <= length);
}

// The export formats of mask/export.hpp, each decoded back and compared with
// the rule; block sizes and the row padding come from the bytes (hostile too).
template <class Mask, class Brute>
void check_exports(Input& in, const Mask& mask, const Window& w, bool valid, index_t block_q, index_t block_k,
                   const Brute& brute) {
  switch (in.byte() % 5) {
    case 0: {
      ism::FlashMaskIndices f;
      const bool threw = throws_invalid([&] { f = ism::flashmask_startend_row_indices(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      for (index_t r = 0; r < w.n_q; ++r)
        for (index_t j = 0; j < w.n_k; ++j) ISM_FUZZ_CHECK(!f.masked(r, j) == brute(w.q_offset + r, j), r, j);
      return;
    }
    case 1: {
      ism::FlexBlockMask f;
      const bool ok = valid && block_q > 0 && block_k > 0;
      const bool threw = throws_invalid([&] { f = ism::flex_block_mask(mask, w.n_q, w.n_k, w.q_offset, block_q, block_k); });
      ISM_FUZZ_CHECK(threw == !ok, block_q, block_k);
      if (threw) return;
      const index_t nqb = w.n_q / block_q + (w.n_q % block_q != 0), nkb = w.n_k / block_k + (w.n_k % block_k != 0);
      ISM_FUZZ_CHECK(f.num_q_blocks == nqb && f.num_kv_blocks == nkb, f.num_q_blocks, f.num_kv_blocks);
      for (index_t qb = 0; qb < nqb; ++qb) {
        std::vector<std::int32_t> partial, full;
        for (index_t kb = 0; kb < nkb; ++kb) {
          index_t seen = 0, all = 0;
          for (index_t r = qb * block_q; r < std::min(w.n_q, (qb + 1) * block_q); ++r)
            for (index_t j = kb * block_k; j < std::min(w.n_k, (kb + 1) * block_k); ++j, ++all)
              seen += brute(w.q_offset + r, j);
          if (seen == all) full.push_back(std::int32_t(kb));
          else if (seen > 0) partial.push_back(std::int32_t(kb));
        }
        ISM_FUZZ_CHECK(f.kv_num_blocks[size_t(qb)] == std::int32_t(partial.size()), qb);
        ISM_FUZZ_CHECK(f.full_kv_num_blocks[size_t(qb)] == std::int32_t(full.size()), qb);
        for (size_t i = 0; i < partial.size(); ++i) ISM_FUZZ_CHECK(f.kv_indices[size_t(qb * nkb) + i] == partial[i], qb);
        for (size_t i = 0; i < full.size(); ++i) ISM_FUZZ_CHECK(f.full_kv_indices[size_t(qb * nkb) + i] == full[i], qb);
      }
      return;
    }
    case 2: {
      ism::QueryKvRanges f;
      const bool threw = throws_invalid([&] { f = ism::query_kv_ranges(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      for (index_t r = 0; r < w.n_q; ++r) {
        ISM_FUZZ_CHECK(f.kv_begin[size_t(r)] <= f.kv_end[size_t(r)] && f.kv_end[size_t(r)] <= w.n_k, r);
        for (index_t j = 0; j < w.n_k; ++j)
          ISM_FUZZ_CHECK((f.kv_begin[size_t(r)] <= j && j < f.kv_end[size_t(r)]) == brute(w.q_offset + r, j), r, j);
      }
      return;
    }
    case 3: {
      std::vector<std::uint8_t> bits;
      const bool threw = throws_invalid([&] { bits = ism::flashinfer_packed_mask(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      ISM_FUZZ_CHECK(index_t(bits.size()) == (w.n_q * w.n_k + 7) / 8);
      for (index_t r = 0; r < w.n_q; ++r)
        for (index_t j = 0; j < w.n_k; ++j) {
          const index_t i = r * w.n_k + j;
          ISM_FUZZ_CHECK(bool((bits[size_t(i / 8)] >> (i % 8)) & 1) == brute(w.q_offset + r, j), r, j);
        }
      return;
    }
    default: {
      // The padded rows are allocated as asked: a valid but huge padding is
      // a legitimate request for memory, not something to fuzz.
      const index_t pad = block_q;
      if (pad > 64) return;
      ism::GgmlKqMask g;
      const bool threw = throws_invalid([&] { g = ism::ggml_kq_mask(mask, w.n_q, w.n_k, w.q_offset, pad); });
      ISM_FUZZ_CHECK(threw == !(valid && pad > 0), pad);
      if (threw) return;
      ISM_FUZZ_CHECK(g.n_batch_pad >= w.n_q && g.n_batch_pad % pad == 0 && g.n_batch_pad - w.n_q < pad, g.n_batch_pad);
      for (index_t r = 0; r < g.n_batch_pad; ++r)
        for (index_t j = 0; j < w.n_k; ++j) {
          const float x = float(g.at(r, j));
          const bool visible = r < w.n_q && brute(w.q_offset + r, j);
          ISM_FUZZ_CHECK(visible ? x == 0.f : (std::isinf(x) && x < 0), r, j);
        }
      return;
    }
  }
}

template <class Mask, class Brute>
void check_window(Input& in, const Mask& mask, index_t length, const Brute& brute) {
  const index_t pos_hi = length == ism::unbounded ? kMaxWindow : length;
  const Window w{in.size(0, kMaxWindow), in.size(0, kMaxWindow + 8), in.size(0, pos_hi)};
  const bool valid = window_valid(w, length);
  // Valid but too large for the brute-force checks: skip (the limits of the
  // library's own allocations are tested in tests/reliability).
  if (valid && (w.n_q > kMaxWindow || w.n_k > kMaxWindow + 8)) return;
  const index_t tq = in.size(1, 9), tk = in.size(1, 9);
  switch (in.byte() % 5) {
    case 0: {
      ism::DenseMask<bool> d;
      const bool threw = throws_invalid([&] { d = ism::dense_mask<bool>(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      ISM_FUZZ_CHECK(d.rows() == w.n_q && d.cols() == w.n_k);
      for (index_t r = 0; r < w.n_q; ++r)
        for (index_t c = 0; c < w.n_k; ++c) ISM_FUZZ_CHECK(d(r, c) == brute(w.q_offset + r, c), r, c);
      return;
    }
    case 1: {
      ism::DenseMask<float> d;
      const bool threw = throws_invalid([&] { d = ism::dense_mask<float>(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      for (index_t r = 0; r < w.n_q; ++r)
        for (index_t c = 0; c < w.n_k; ++c) {
          const float x = d(r, c);
          ISM_FUZZ_CHECK(brute(w.q_offset + r, c) ? x == 0.f : (std::isinf(x) && x < 0), r, c);
        }
      return;
    }
    case 2: {
      std::vector<ism::KeyRange> rb;
      const bool threw = throws_invalid([&] { rb = ism::row_bounds(mask, w.n_q, w.n_k, w.q_offset); });
      ISM_FUZZ_CHECK(threw == !valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      ISM_FUZZ_CHECK(index_t(rb.size()) == w.n_q);
      for (index_t r = 0; r < w.n_q; ++r) {
        const ism::KeyRange k = rb[size_t(r)];
        ISM_FUZZ_CHECK(k.empty() || (k.begin >= 0 && k.end <= w.n_k), r, k.begin, k.end);
        for (index_t c = 0; c < w.n_k; ++c) ISM_FUZZ_CHECK(k.contains(c) == brute(w.q_offset + r, c), r, c);
      }
      return;
    }
    case 3: {
      check_exports(in, mask, w, valid, tq, tk, brute);
      return;
    }
    default: {
      const bool tiles_valid = valid && tq > 0 && tk > 0;
      const ism::BlockMap* map = nullptr;
      std::vector<ism::BlockMap> holder;
      const bool threw = throws_invalid([&] { holder.emplace_back(mask, w.n_q, w.n_k, w.q_offset, tq, tk); });
      ISM_FUZZ_CHECK(threw == !tiles_valid, w.n_q, w.n_k, w.q_offset);
      if (threw) return;
      map = &holder.front();
      index_t visible = 0;
      for (index_t q = 0; q < w.n_q; ++q)
        for (index_t c = 0; c < w.n_k; ++c) visible += brute(w.q_offset + q, c);
      const ism::BlockMapStats& st = map->stats();
      ISM_FUZZ_CHECK(st.visible_pairs == visible, st.visible_pairs, visible);
      ISM_FUZZ_CHECK(st.total_pairs == w.n_q * w.n_k);
      ISM_FUZZ_CHECK(st.tiles == map->tile_rows() * map->tile_cols());
      ISM_FUZZ_CHECK(st.empty + st.partial + st.full == st.tiles);
      for (index_t r = 0; r < map->tile_rows(); ++r)
        for (index_t c = 0; c < map->tile_cols(); ++c) {
          const index_t q0 = r * tq, q1 = std::min(w.n_q, q0 + tq);
          const index_t k0 = c * tk, k1 = std::min(w.n_k, k0 + tk);
          index_t seen = 0;
          bool blind_row = false;  // a row that sees no key of [0, n_k)
          for (index_t q = q0; q < q1; ++q) {
            bool any = false;
            for (index_t k = 0; k < w.n_k; ++k) any = any || brute(w.q_offset + q, k);
            blind_row = blind_row || !any;
            for (index_t k = k0; k < k1; ++k) seen += brute(w.q_offset + q, k);
          }
          const index_t all = (q1 - q0) * (k1 - k0);
          const ism::TileKind kind = map->kind(r, c);
          // Full and Empty are exact; a tile crossing rows that see nothing may
          // be called Partial although no pair in it is visible (tiles.hpp).
          if (kind == ism::TileKind::Full) ISM_FUZZ_CHECK(seen == all, r, c);
          if (kind == ism::TileKind::Empty) ISM_FUZZ_CHECK(seen == 0, r, c);
          if (kind == ism::TileKind::Partial)
            ISM_FUZZ_CHECK((seen > 0 && seen < all) || (seen == 0 && blind_row), r, c, seen);
        }
      return;
    }
  }
}

// --- sliding windows ----------------------------------------------------------------
// One more window from the bytes (hostile values too): below 1 it must be
// refused; otherwise the mask within |i - j| < window goes through every
// materialiser, exporter and tile map (check_window, against brute && band),
// and safe splits and first_needed_key agree with their definitions. The bytes
// are read after everything else an input decodes to, so inputs of the corpus
// that predate windows decode as before.
template <class Mask, class Brute>
void check_sliding_window(Input& in, const Mask& mask, index_t length, const Brute& brute) {
  const index_t w = in.size(1, kMaxWindow);
  ism::SlidingWindowMask<Mask> m;
  const bool threw = throws_invalid([&] { m = ism::sliding_window(mask, w); });
  ISM_FUZZ_CHECK(threw == (w < 1), w);
  if (threw) return;
  const auto band = [&](index_t i, index_t j) { return brute(i, j) && (i > j ? i - j : j - i) < w; };
  check_window(in, m, length, band);
  // Positions to probe; rows and keys past a layout do not exist, and past
  // the horizon of a mask without one the band sees nothing new.
  const index_t horizon = length == ism::unbounded ? kMaxWindow : length;
  for (int probe = 0; probe < 3; ++probe) {
    const index_t p = in.size(0, horizon);
    const bool valid = p >= 0 && p <= length;
    bool safe = false;
    index_t first = -1;
    ISM_FUZZ_CHECK(throws_invalid([&] { safe = ism::is_safe_split(m, p); }) == !valid, p);
    ISM_FUZZ_CHECK(throws_invalid([&] { first = ism::first_needed_key(m, p); }) == !valid, p);
    if (!valid || p > horizon || (length == ism::unbounded && w > kMaxWindow)) continue;
    const index_t rows_end = length == ism::unbounded ? p + kMaxWindow : length;
    bool want = true;
    for (index_t i = std::max<index_t>(0, p - w); i < p; ++i)
      for (index_t j = p; j < (w > rows_end - i ? rows_end : i + w); ++j) want = want && !band(i, j);
    ISM_FUZZ_CHECK(safe == want, p, w);
    ISM_FUZZ_CHECK(first >= 0 && first <= p, first, p);
    for (index_t i = p; i < rows_end; ++i)
      for (index_t j = std::max<index_t>(0, i - w + 1); j < first; ++j) ISM_FUZZ_CHECK(!band(i, j), i, j, first);
    if (p < rows_end) {
      index_t seen = -1;  // the first key row p sees
      for (index_t j = std::max<index_t>(0, p - w + 1); j <= p + 1 && seen < 0; ++j)
        if (band(p, j)) seen = j;
      ISM_FUZZ_CHECK(seen < 0 || seen == first, seen, first, p);
    }
  }
}

// --- SegmentMask: the layout accessors and KV-reuse splits ----------------------

void check_segment_mask(Input& in, const ism::SegmentMask& m, Model& model) {
  model.index();
  const index_t n = model.length();
  ISM_FUZZ_CHECK(m.length() == n, m.length(), n);
  ISM_FUZZ_CHECK(m.num_documents() == model.docs, m.num_documents(), model.docs);
  ISM_FUZZ_CHECK(m.spans().size() == model.spans.size());
  index_t begin = 0;
  for (size_t s = 0; s < model.spans.size(); ++s) {
    const auto& got = m.spans()[s];
    const auto& want = model.spans[s];
    ISM_FUZZ_CHECK(got.begin == begin && got.end == begin + want.length, index_t(s), got.begin, got.end);
    ISM_FUZZ_CHECK(got.attend == want.attend && got.doc == want.doc, index_t(s));
    begin += want.length;
  }
  // Every pair of the layout, plus probes just outside it.
  for (index_t i = -1; i <= n; ++i)
    for (index_t j = -1; j <= n; ++j) {
      const bool want = model.allowed(i, j);
      ISM_FUZZ_CHECK(m.allowed(i, j) == want, i, j);
      ISM_FUZZ_CHECK(m.keys(i).contains(j) == want, i, j);
      ISM_FUZZ_CHECK(m.bounds().allowed(i, j) == want, i, j);
    }
  for (int probe = 0; probe < 4; ++probe) {
    const index_t p = in.size(0, n + 1);
    const bool valid = p >= 0 && p <= n;
    bool safe = false;
    ISM_FUZZ_CHECK(throws_invalid([&] { safe = m.is_safe_split(p); }) == !valid, p, n);
    if (valid) {
      bool want = true;
      for (index_t i = 0; i < p; ++i)
        for (index_t j = p; j < n; ++j) want = want && !model.allowed(i, j);
      ISM_FUZZ_CHECK(safe == want, p);
    }
    const bool in_layout = p >= 0 && p < n;
    index_t seg = -1, doc = -2;
    ISM_FUZZ_CHECK(throws_invalid([&] { seg = m.segment_of(p); }) == !in_layout, p, n);
    ISM_FUZZ_CHECK(throws_invalid([&] { doc = m.document_of(p); }) == !in_layout, p, n);
    if (in_layout) {
      ISM_FUZZ_CHECK(seg == model.seg_of[size_t(p)], p, seg);
      ISM_FUZZ_CHECK(doc == model.doc_of[size_t(p)], p, doc);
    }
  }
  if (n <= 64) {
    std::vector<index_t> want;
    for (index_t p = 0; p <= n; ++p) {
      bool ok = true;
      for (index_t i = 0; i < p; ++i)
        for (index_t j = p; j < n; ++j) ok = ok && !model.allowed(i, j);
      if (ok) want.push_back(p);
    }
    ISM_FUZZ_CHECK(m.safe_splits() == want);
  }
  const index_t windows = in.small(1, 3);
  for (index_t w = 0; w < windows; ++w)
    check_window(in, m, n, [&](index_t i, index_t j) { return model.allowed(i, j); });
  check_sliding_window(in, m, n, [&](index_t i, index_t j) { return model.allowed(i, j); });
}

// --- builders --------------------------------------------------------------------

void fuzz_segment_mask(Input& in) {
  const std::vector<Segment> segs = segments(in, 10);
  const index_t total = checked_total(0, segs);
  if (total > kMaxLength) return;
  ism::SegmentMask m;
  const bool threw = throws_invalid([&] { m = ism::segment_mask(segs); });
  ISM_FUZZ_CHECK(threw == (total < 0), total);
  if (threw) return;
  Model model;
  for (const Segment& s : segs) model.spans.push_back({s.length, s.attend, 0});
  model.docs = segs.empty() ? 0 : 1;
  check_segment_mask(in, m, model);
}

void fuzz_ism_mask(Input& in) {
  std::vector<index_t> b(size_t(in.small(0, 10)));
  // Boundaries as deltas, so that valid ones are common; hostile deltas make
  // them unsorted, repeated or overflowing.
  index_t at = in.coin() ? 0 : in.size(0, 3);
  for (index_t& x : b) {
    x = at;
    const index_t d = in.size(1, 12);
    if (__builtin_add_overflow(at, d, &at)) at = d;
  }
  const Attend first = mode(in);
  bool valid = b.size() >= 2 && b.front() == 0;
  for (size_t i = 1; valid && i < b.size(); ++i) valid = b[i] > b[i - 1];
  if (valid && b.back() > ism::SegmentMask::max_length()) valid = false;
  if (valid && b.back() > kMaxLength) return;
  ism::SegmentMask m;
  const bool threw = throws_invalid([&] { m = ism::ism_mask(b, first); });
  ISM_FUZZ_CHECK(threw == !valid, index_t(b.size()));
  if (threw) return;
  Model model;
  model.docs = 1;
  Attend a = first;
  for (size_t i = 1; i < b.size(); ++i) {
    model.spans.push_back({b[i] - b[i - 1], a, 0});
    a = a == Attend::Causal ? Attend::Bidirectional : Attend::Causal;
  }
  check_segment_mask(in, m, model);
}

void fuzz_packed_mask(Input& in) {
  std::vector<std::vector<Segment>> docs(size_t(in.small(0, 4)));
  for (auto& d : docs) d = segments(in, 4);
  const index_t padding = in.size(0, 8);
  index_t total = 0;
  bool invalid = padding < 0;
  for (const auto& d : docs) {
    invalid = invalid || d.empty();
    if (total >= 0) total = checked_total(total, d);
  }
  invalid = invalid || total < 0;
  if (!invalid && (__builtin_add_overflow(total, padding, &total) || total > ism::SegmentMask::max_length()))
    invalid = true;
  if (!invalid && total > kMaxLength) return;
  ism::SegmentMask m;
  const bool threw = throws_invalid([&] { m = ism::packed_mask(docs, padding); });
  ISM_FUZZ_CHECK(threw == invalid, total, padding);
  if (threw) return;
  Model model;
  for (const auto& d : docs) {
    for (const Segment& s : d) model.spans.push_back({s.length, s.attend, model.docs});
    ++model.docs;
  }
  if (padding > 0) model.spans.push_back({padding, Attend::Causal, -1});
  check_segment_mask(in, m, model);
}

// A dialogue grown (and cut back) call by call. A call that throws must leave
// the mask as it was (the model is not changed then, and the final comparison
// sees all).
void fuzz_growth(Input& in) {
  ism::SegmentMask m;
  Model model;
  const index_t calls = in.small(1, 12);
  for (index_t c = 0; c < calls; ++c) {
    const index_t n = model.length();
    const std::uint8_t op = in.byte() % 5;
    if (op == 0) {
      const Segment s{in.size(1, 12), mode(in)};
      const index_t total = checked_total(n, {s});
      if (total > kMaxLength) continue;
      const bool threw = throws_invalid([&] { m.append(s); });
      ISM_FUZZ_CHECK(threw == (total < 0), s.length);
      if (threw) continue;
      if (model.docs == 0 || model.spans.back().doc < 0) ++model.docs;
      model.spans.push_back({s.length, s.attend, model.docs - 1});
    } else if (op == 1) {
      const std::vector<Segment> segs = segments(in, 3);
      const index_t total = segs.empty() ? -1 : checked_total(n, segs);
      if (total > kMaxLength) continue;
      const bool threw = throws_invalid([&] { m.append_document(segs); });
      ISM_FUZZ_CHECK(threw == (total < 0), total);
      if (threw) continue;
      for (const Segment& s : segs) model.spans.push_back({s.length, s.attend, model.docs});
      ++model.docs;
    } else if (op == 2) {
      const index_t pad = in.size(1, 6);
      const index_t total = checked_total(n, {{pad, Attend::Causal}});
      if (total > kMaxLength) continue;
      const bool threw = throws_invalid([&] { m.append_padding(pad); });
      ISM_FUZZ_CHECK(threw == (total < 0), pad);
      if (threw) continue;
      model.spans.push_back({pad, Attend::Causal, -1});
    } else if (op == 4) {
      // truncate(n): the layout built to length n.
      const index_t cut = in.size(0, n);
      const bool threw = throws_invalid([&] { m.truncate(cut); });
      ISM_FUZZ_CHECK(threw == (cut < 0 || cut > n), cut, n);
      if (threw) continue;
      index_t pos = 0;
      size_t keep = 0;
      for (; keep < model.spans.size() && pos < cut; ++keep) {
        model.spans[keep].length = std::min(model.spans[keep].length, cut - pos);
        pos += model.spans[keep].length;
      }
      model.spans.resize(keep);
      model.docs = 0;
      for (const auto& s : model.spans)
        if (s.doc >= 0) model.docs = s.doc + 1;
    } else {
      const index_t grow = in.size(1, 6);
      index_t total = checked_total(n, {{grow, Attend::Causal}});
      if (model.spans.empty()) total = -1;
      if (total > kMaxLength) continue;
      const bool threw = throws_invalid([&] { m.extend_last(grow); });
      ISM_FUZZ_CHECK(threw == (total < 0), grow);
      if (threw) continue;
      model.spans.back().length += grow;
    }
  }
  check_segment_mask(in, m, model);
}

void fuzz_simple_masks(Input& in) {
  const std::uint8_t which = in.byte() % 3;
  if (which == 0) {
    const auto rule = [](index_t i, index_t j) { return j >= 0 && j <= i; };
    check_window(in, ism::causal_mask(), ism::unbounded, rule);
    check_sliding_window(in, ism::causal_mask(), ism::unbounded, rule);
    return;
  }
  if (which == 1) {
    const auto rule = [](index_t i, index_t j) { return i >= 0 && j >= 0; };
    check_window(in, ism::full_mask(), ism::unbounded, rule);
    check_sliding_window(in, ism::full_mask(), ism::unbounded, rule);
    return;
  }
  const index_t p = in.size(0, kMaxWindow);
  ism::PrefixMask m;
  const bool threw = throws_invalid([&] { m = ism::prefix_mask(p); });
  ISM_FUZZ_CHECK(threw == (p < 0), p);
  if (threw) return;
  // Bidirectional [0, P), then Causal: the literal rule with two segments.
  const auto rule = [p](index_t i, index_t j) {
    if (i < 0 || j < 0) return false;
    return j <= i || (i < p && j < p);
  };
  check_window(in, m, ism::unbounded, rule);
  check_sliding_window(in, m, ism::unbounded, rule);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  switch (in.byte() % 5) {
    case 0: fuzz_segment_mask(in); break;
    case 1: fuzz_ism_mask(in); break;
    case 2: fuzz_packed_mask(in); break;
    case 3: fuzz_growth(in); break;
    default: fuzz_simple_masks(in); break;
  }
  return 0;
}
