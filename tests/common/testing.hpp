#pragma once
// Shared test helpers: seeded randomness (the seed is printed on failure and can
// be replayed with ISM_SEED=...), random layouts, random tensors, and the mask
// rule written out the slow, literal way.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ism/ism.hpp"

namespace ism_test {

using ism::index_t;

// A fresh seed per test unless ISM_SEED is set; SCOPED_TRACE it so every
// failure message carries it.
inline std::uint64_t test_seed() {
  if (const char* s = std::getenv("ISM_SEED")) return std::strtoull(s, nullptr, 10);
  return (std::uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(std::uint64_t seed) : gen(seed) {}
  index_t uniform(index_t lo, index_t hi) {  // inclusive
    return std::uniform_int_distribution<index_t>(lo, hi)(gen);
  }
  double real(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  bool coin(double p = 0.5) { return std::bernoulli_distribution(p)(gen); }
};

// f must throw ism::invalid_argument (hence std::invalid_argument) whose
// message contains every needle: the argument's name and its value.
template <class F>
void expect_invalid(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const ism::invalid_argument& e) {
    for (const char* n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message \"" << e.what() << "\" does not mention \"" << n << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type (not ism::invalid_argument): " << e.what();
  }
}

#define ISM_SEEDED_TEST_BODY(seed_var) \
  const std::uint64_t seed_var = ::ism_test::test_seed(); \
  SCOPED_TRACE(::testing::Message() << "seed = " << seed_var << " (replay with ISM_SEED=" << seed_var << ")")

// A random packed layout: 1..max_docs documents of 1..max_segs segments with
// lengths 1..max_len, random modes, and optional trailing padding.
struct RandomLayout {
  std::vector<std::vector<ism::Segment>> docs;
  index_t padding = 0;
  ism::SegmentMask mask() const { return ism::packed_mask(docs, padding); }
  std::string describe() const {
    std::ostringstream os;
    for (size_t d = 0; d < docs.size(); ++d) {
      os << "doc" << d << "[";
      for (const auto& s : docs[d]) os << (s.attend == ism::Attend::Causal ? "C" : "B") << s.length << " ";
      os << "] ";
    }
    if (padding) os << "pad" << padding;
    return os.str();
  }
};

inline RandomLayout random_layout(Rng& rng, int max_docs = 3, int max_segs = 8, index_t max_len = 40,
                                  bool allow_padding = true) {
  RandomLayout l;
  const index_t n_docs = rng.uniform(1, max_docs);
  for (index_t d = 0; d < n_docs; ++d) {
    std::vector<ism::Segment> segs;
    const index_t n = rng.uniform(1, max_segs);
    for (index_t s = 0; s < n; ++s)
      segs.push_back({rng.uniform(1, max_len), rng.coin() ? ism::Attend::Causal : ism::Attend::Bidirectional});
    l.docs.push_back(segs);
  }
  if (allow_padding && rng.coin(0.25)) l.padding = rng.uniform(1, max_len);
  return l;
}

// The rule of docs/DESIGN.md section 1, literally: per-position doc and segment ids.
struct BruteForceRule {
  std::vector<index_t> doc, seg;
  std::vector<ism::Attend> mode;
  explicit BruteForceRule(const RandomLayout& l) {
    index_t seg_id = 0;
    for (size_t d = 0; d < l.docs.size(); ++d)
      for (const auto& s : l.docs[d]) {
        for (index_t i = 0; i < s.length; ++i) {
          doc.push_back(index_t(d));
          seg.push_back(seg_id);
          mode.push_back(s.attend);
        }
        ++seg_id;
      }
    for (index_t i = 0; i < l.padding; ++i) {
      doc.push_back(-1);
      seg.push_back(-1);
      mode.push_back(ism::Attend::Causal);
    }
  }
  index_t length() const { return index_t(doc.size()); }
  bool allowed(index_t i, index_t j) const {
    if (i < 0 || j < 0 || i >= length() || j >= length()) return false;
    if (doc[size_t(i)] < 0 || doc[size_t(i)] != doc[size_t(j)]) return false;
    return j <= i || (seg[size_t(i)] == seg[size_t(j)] && mode[size_t(i)] == ism::Attend::Bidirectional);
  }
};

// Owning buffer for one [tokens, heads, dim] tensor with arbitrary strides.
template <class T>
struct Tensor {
  std::vector<T> buf;
  ism::HeadsView<T> view;
  // token_major: [t, h, d]; otherwise [h, t, d]; `pad` extra elements per row
  // and per head make the strides irregular.
  Tensor(index_t tokens, index_t heads, index_t dim, bool token_major = true, index_t pad = 0) {
    const index_t row = dim + pad;
    index_t ts, hs;
    if (token_major) {
      hs = row;
      ts = heads * row + pad;
    } else {
      ts = row;
      hs = tokens * row + pad;
    }
    const index_t size = tokens == 0 ? 1 : (tokens - 1) * ts + (heads - 1) * hs + dim;
    buf.assign(size_t(size), T(0.0f));
    view = {buf.data(), tokens, heads, dim, ts, hs};
  }
  // Copies own their data: the copy's view points at the copy's buffer.
  Tensor(const Tensor& o) : buf(o.buf), view(o.view) { view.data = buf.data(); }
  Tensor& operator=(const Tensor& o) {
    buf = o.buf;
    view = o.view;
    view.data = buf.data();
    return *this;
  }
  Tensor(Tensor&&) noexcept = default;  // a moved vector keeps its storage
  Tensor& operator=(Tensor&&) noexcept = default;
  ism::HeadsView<const T> cview() const { return ism::as_const(view); }
  void fill_random(Rng& rng, double lo = -1, double hi = 1) {
    for (index_t t = 0; t < view.tokens; ++t)
      for (index_t h = 0; h < view.heads; ++h)
        for (index_t d = 0; d < view.dim; ++d) view(t, h, d) = T(float(rng.real(lo, hi)));
  }
};

}  // namespace ism_test
