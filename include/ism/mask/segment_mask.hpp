#pragma once
// SegmentMask: the mask of a layout of turn segments, possibly several packed
// documents. This is the mask rule of the library:
//
//   query i may attend key j  iff  doc(i) == doc(j) and
//                                  (j <= i, or seg(i) == seg(j) and seg(i) is Bidirectional)
//
// Row i therefore sees the single interval [lo(i), hi(i)) with lo(i) = start of
// doc(i) and hi(i) = end of seg(i) (Bidirectional) or i + 1 (Causal). The mask
// stores these two O(N) arrays, so keys(i) is two loads and a tile is classified
// from its corner rows (see tile_kind.hpp). Padding positions belong to no document:
// they see nothing and nobody sees them.
//
// A SegmentMask is an immutable value once built, except through the explicit
// growth and truncate calls below; concurrent reads from many threads are safe.
#include <algorithm>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/core/isa.hpp"
#include "ism/mask/segment.hpp"

namespace ism {

// Trivially copyable view of a SegmentMask's row bounds, for kernels (the CUDA
// kernel keeps `lo` and `hi` in device memory and uses this same type).
struct RowBoundsMask {
  const index_t* lo = nullptr;
  const index_t* hi = nullptr;
  index_t n = 0;
  ISM_HOST_DEVICE KeyRange keys(index_t q) const {
    if (q < 0 || q >= n) return {0, 0};
    return {lo[q], hi[q]};
  }
  ISM_HOST_DEVICE bool allowed(index_t q, index_t k) const { return keys(q).contains(k); }
  ISM_HOST_DEVICE index_t length() const { return n; }
};

class SegmentMask {
 public:
  // One segment of the layout in absolute positions. doc == -1 marks padding.
  struct Span {
    index_t begin;
    index_t end;
    Attend attend;
    index_t doc;
    index_t length() const { return end - begin; }
    bool is_padding() const { return doc < 0; }
  };

  SegmentMask() = default;

  // --- the mask policy ---------------------------------------------------
  index_t length() const { return static_cast<index_t>(lo_.size()); }
  KeyRange keys(index_t q) const {
    if (q < 0 || q >= length()) return {0, 0};
    return {lo_[static_cast<size_t>(q)], hi_[static_cast<size_t>(q)]};
  }
  bool allowed(index_t q, index_t k) const { return keys(q).contains(k); }
  RowBoundsMask bounds() const { return {lo_.data(), hi_.data(), length()}; }

  // --- the layout ----------------------------------------------------------
  const std::vector<Span>& spans() const { return spans_; }
  index_t num_documents() const { return docs_; }
  // Index into spans() of the segment holding position p (binary search).
  index_t segment_of(index_t p) const {
    check_position("ism::SegmentMask::segment_of", "p", p);
    auto it = std::upper_bound(spans_.begin(), spans_.end(), p,
                               [](index_t x, const Span& s) { return x < s.end; });
    return static_cast<index_t>(it - spans_.begin());
  }
  // Document of position p, or -1 for padding.
  index_t document_of(index_t p) const { return spans_[static_cast<size_t>(segment_of(p))].doc; }

  // --- growth (dialogues grow at the end only) -----------------------------
  // Every call checks its arguments and reserves its memory before it changes
  // anything, so a call that throws (ism::invalid_argument or std::bad_alloc)
  // leaves the mask as it was.

  // New segment in the current document (a new document if there is none yet or
  // the layout ends in padding).
  SegmentMask& append(Segment s) {
    const char* where = "ism::SegmentMask::append";
    check_length(where, "segment.length", s.length);
    prepare(where, s.length, 1);
    if (docs_ == 0 || spans_.back().is_padding()) ++docs_;
    push(s.length, s.attend, docs_ - 1);
    return *this;
  }
  // The segments start a new document that sees nothing before it.
  SegmentMask& append_document(const std::vector<Segment>& segments) {
    const char* where = "ism::SegmentMask::append_document";
    if (segments.empty()) detail::fail(where, "segments is empty");
    index_t total = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      if (segments[i].length <= 0)
        detail::fail(where, "segments[", i, "].length = ", segments[i].length, " must be positive");
      if (detail::add_overflows(total, segments[i].length, &total))
        detail::fail(where, "the segments' total length overflows at segments[", i, "].length = ",
                     segments[i].length);
    }
    prepare(where, total, segments.size());
    ++docs_;
    for (const Segment& s : segments) push(s.length, s.attend, docs_ - 1);
    return *this;
  }
  // Tokens that belong to no document (the tail of a packed row).
  SegmentMask& append_padding(index_t n) {
    const char* where = "ism::SegmentMask::append_padding";
    check_length(where, "n", n);
    prepare(where, n, 1);
    push(n, Attend::Causal, -1);
    return *this;
  }
  // Grow the last segment by n tokens (decoded answer tokens). Extending a
  // Bidirectional segment widens what its earlier rows see: that breaks KV
  // reuse of those rows, which is the caller's choice to make.
  SegmentMask& extend_last(index_t n) {
    const char* where = "ism::SegmentMask::extend_last";
    check_length(where, "n", n);
    if (spans_.empty()) detail::fail(where, "the layout has no segment to extend");
    prepare(where, n, 0);
    Span& last = spans_.back();
    const index_t begin = length(), end = begin + n;
    const index_t doc_begin = last.doc < 0 ? -1 : lo_[static_cast<size_t>(last.begin)];
    last.end = end;
    // Only a Bidirectional segment's earlier rows change (they now see the new
    // tokens); a causal answer grows in O(n), which keeps decoding linear.
    if (last.doc >= 0 && last.attend == Attend::Bidirectional)
      for (index_t i = last.begin; i < begin; ++i) hi_[static_cast<size_t>(i)] = end;
    push_rows(begin, end, last.attend, doc_begin, last.doc < 0);
    return *this;
  }

  // --- taking tokens back -------------------------------------------------
  // Drops every position at or after n (a rejected speculative token, an
  // answer to regenerate): the layout becomes the one built to length n.
  // Segments and documents past n go, the segment holding n - 1 ends at n,
  // and if that segment is Bidirectional its rows now see keys up to n only
  // (they saw its old end). O(dropped segments + the cut segment's rows);
  // nothing is allocated, so only a bad n throws, and then nothing changed.
  SegmentMask& truncate(index_t n) {
    if (n < 0 || n > length())
      detail::fail("ism::SegmentMask::truncate", "n = ", n, " is outside [0, ", length(), "]");
    while (!spans_.empty() && spans_.back().begin >= n) spans_.pop_back();
    lo_.resize(static_cast<size_t>(n));
    hi_.resize(static_cast<size_t>(n));
    if (!spans_.empty() && spans_.back().end > n) {
      Span& last = spans_.back();
      last.end = n;
      if (!last.is_padding() && last.attend == Attend::Bidirectional)
        for (index_t i = last.begin; i < n; ++i) hi_[static_cast<size_t>(i)] = n;
    }
    // Documents are numbered in order: the last one left names the count.
    docs_ = 0;
    for (auto s = spans_.rbegin(); s != spans_.rend(); ++s)
      if (!s->is_padding()) {
        docs_ = s->doc + 1;
        break;
      }
    return *this;
  }

  // The longest layout a SegmentMask can describe (its row bounds must fit in a
  // std::vector); longer layouts are rejected with ism::invalid_argument before
  // anything is allocated.
  static index_t max_length() { return static_cast<index_t>(std::vector<index_t>().max_size()); }

  // --- KV-cache reuse ------------------------------------------------------
  // True iff no row before p sees a key at or after p: tokens [0, p) can be
  // computed (and cached) before tokens [p, N) exist. hi never decreases, so
  // the last row before p decides.
  bool is_safe_split(index_t p) const {
    if (p < 0 || p > length())
      detail::fail("ism::SegmentMask::is_safe_split", "p = ", p, " is outside [0, ", length(), "]");
    return p == 0 || hi_[static_cast<size_t>(p - 1)] <= p;
  }
  std::vector<index_t> safe_splits() const {
    std::vector<index_t> out;
    for (index_t p = 0; p <= length(); ++p)
      if (is_safe_split(p)) out.push_back(p);
    return out;
  }

 private:
  // Checks that `extra` more positions fit and reserves room for them and for
  // `new_spans` spans (growing geometrically, so that appending token by token
  // stays amortised O(1)). Nothing is modified before this returns.
  void prepare(const char* where, index_t extra, size_t new_spans) {
    index_t end = 0;
    if (detail::add_overflows(length(), extra, &end) || end > max_length())
      detail::fail(where, "the layout length ", length(), " + ", extra, " exceeds the maximum ", max_length());
    const auto grow = [](auto& v, size_t need) {
      if (need > v.capacity()) v.reserve(std::max(need, 2 * v.capacity()));
    };
    grow(lo_, static_cast<size_t>(end));
    grow(hi_, static_cast<size_t>(end));
    grow(spans_, spans_.size() + new_spans);
  }
  // Appends a span of n positions; prepare() has checked and reserved.
  void push(index_t n, Attend attend, index_t doc) {
    const index_t begin = length(), end = begin + n;
    // lo: the document's first position (the padding row's own position, for
    // an empty interval that keeps lo and hi non-decreasing).
    index_t doc_begin = begin;
    if (doc >= 0 && !spans_.empty() && spans_.back().doc == doc)
      doc_begin = lo_[static_cast<size_t>(spans_.back().begin)];
    spans_.push_back({begin, end, attend, doc});
    push_rows(begin, end, attend, doc_begin, doc < 0);
  }
  void push_rows(index_t begin, index_t end, Attend attend, index_t doc_begin, bool padding) {
    const index_t seg_end = spans_.back().end;
    for (index_t i = begin; i < end; ++i) {
      if (padding) {
        lo_.push_back(i);
        hi_.push_back(i);
      } else {
        lo_.push_back(doc_begin);
        hi_.push_back(attend == Attend::Bidirectional ? seg_end : i + 1);
      }
    }
  }
  static void check_length(const char* where, const char* arg, index_t n) {
    if (n <= 0) detail::fail(where, arg, " = ", n, " must be positive");
  }
  void check_position(const char* where, const char* arg, index_t p) const {
    if (p < 0 || p >= length())
      detail::fail(where, arg, " = ", p, " is outside [0, ", length(), ")");
  }

  std::vector<Span> spans_;
  std::vector<index_t> lo_, hi_;
  index_t docs_ = 0;
};

// --- builders ----------------------------------------------------------------
// In the per-instruction-set namespace (core/isa.hpp): an engine builds masks
// in each of its instruction sets' units, and these bodies compile to vector
// code (AVX-512 in an -mavx512f unit) that must stay that unit's own.
inline namespace ISM_SIMD_NAMESPACE {

// Explicit segments of one document.
inline SegmentMask segment_mask(const std::vector<Segment>& segments) {
  SegmentMask m;
  if (segments.empty()) return m;
  for (size_t i = 0; i < segments.size(); ++i)
    if (segments[i].length <= 0)
      detail::fail("ism::segment_mask", "segments[", i, "].length = ", segments[i].length,
                   " must be positive");
  m.append_document(segments);
  return m;
}

// ISM from turn boundaries {0, b1, ..., N}: segments alternate, starting with
// `first` (Bidirectional: query, answer, query, ...).
inline SegmentMask ism_mask(const std::vector<index_t>& boundaries,
                            Attend first = Attend::Bidirectional) {
  const char* where = "ism::ism_mask";
  if (boundaries.size() < 2)
    detail::fail(where, "boundaries has ", boundaries.size(), " entries; need {0, ..., N} with at least 2");
  if (boundaries.front() != 0) detail::fail(where, "boundaries[0] = ", boundaries.front(), " must be 0");
  std::vector<Segment> segs;
  segs.reserve(boundaries.size() - 1);
  Attend mode = first;
  for (size_t i = 1; i < boundaries.size(); ++i) {
    if (boundaries[i] <= boundaries[i - 1])
      detail::fail(where, "boundaries[", i, "] = ", boundaries[i], " is not greater than boundaries[",
                   i - 1, "] = ", boundaries[i - 1], " (boundaries must be strictly increasing)");
    segs.push_back({boundaries[i] - boundaries[i - 1], mode});
    mode = mode == Attend::Bidirectional ? Attend::Causal : Attend::Bidirectional;
  }
  return segment_mask(segs);
}

// Several documents packed back to back in one row, then `padding` tokens that
// belong to none. Documents never see each other.
inline SegmentMask packed_mask(const std::vector<std::vector<Segment>>& documents,
                               index_t padding = 0) {
  if (padding < 0) detail::fail("ism::packed_mask", "padding = ", padding, " is negative");
  // Everything is checked before the first document is built, so that a huge
  // total is rejected before anything is allocated.
  index_t total = padding;
  for (size_t d = 0; d < documents.size(); ++d) {
    if (documents[d].empty()) detail::fail("ism::packed_mask", "documents[", d, "] has no segment");
    for (size_t i = 0; i < documents[d].size(); ++i) {
      if (documents[d][i].length <= 0)
        detail::fail("ism::packed_mask", "documents[", d, "][", i, "].length = ",
                     documents[d][i].length, " must be positive");
      if (detail::add_overflows(total, documents[d][i].length, &total) || total > SegmentMask::max_length())
        detail::fail("ism::packed_mask", "the total length exceeds the maximum ", SegmentMask::max_length(),
                     " at documents[", d, "][", i, "].length = ", documents[d][i].length);
    }
  }
  SegmentMask m;
  for (const auto& doc : documents) m.append_document(doc);
  if (padding > 0) m.append_padding(padding);
  return m;
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
