#pragma once
// Chunked prefill that respects the mask.
//
// Engines prefill long prompts in chunks of at most C tokens to bound memory and
// latency: chunk [b, e) runs attention for rows [b, e) against keys [0, e). That
// is only the whole-sequence result if no row before e sees a key at or after e,
// i.e. e is a safe split of the mask. Rows of a Bidirectional segment see its
// last token, so a chunk may never end inside one; a segment longer than C
// cannot be prefilled in chunks of C at all, and the planner says so (naming
// the segment) instead of producing attention that silently misses keys.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/dialogue/dialogue.hpp"
#include "ism/mask/kv_reuse.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/sliding_window.hpp"

namespace ism {

// Tokens [begin, end) of one prefill chunk (absolute positions).
struct Chunk {
  index_t begin = 0;
  index_t end = 0;
  index_t size() const { return end - begin; }
};

// Thrown when one Bidirectional segment inside the prefill is longer than the
// chunk limit. It is an ism::invalid_argument, and carries the numbers so that
// an engine can react (a larger chunk for this prompt, or reject it).
class oversized_segment : public invalid_argument {
 public:
  oversized_segment(index_t segment, index_t begin, index_t end, index_t max_chunk)
      : invalid_argument(message(segment, begin, end, max_chunk)),
        segment_(segment), begin_(begin), end_(end), max_chunk_(max_chunk) {}
  index_t segment() const { return segment_; }  // index into SegmentMask::spans()
  index_t begin() const { return begin_; }
  index_t end() const { return end_; }
  index_t length() const { return end_ - begin_; }
  index_t max_chunk() const { return max_chunk_; }

 private:
  static std::string message(index_t segment, index_t begin, index_t end, index_t max_chunk) {
    std::ostringstream os;
    os << "ism::plan_prefill: Bidirectional segment " << segment << " [" << begin << ", " << end
       << ") has length " << end - begin << " > max_chunk = " << max_chunk
       << "; its rows see its last token, so it cannot be split across chunks";
    return os.str();
  }
  index_t segment_, begin_, end_, max_chunk_;
};

namespace detail {

inline const SegmentMask* layout_of(const SegmentMask& mask) { return &mask; }
template <class Mask>
const SegmentMask* layout_of(const Mask&) {
  return nullptr;
}

// The planner over any policy. `layout`, when known, names the segment that
// blocks a split in the errors.
template <class Mask>
std::vector<Chunk> plan_chunks(const Mask& mask, const SegmentMask* layout, index_t start, index_t count,
                               index_t max_chunk) {
  const char* where = "ism::plan_prefill";
  if (max_chunk <= 0) detail::fail(where, "max_chunk = ", max_chunk, " must be positive");
  if (count < 0) detail::fail(where, "count = ", count, " is negative");
  const index_t length = mask.length();
  if (start < 0 || (length != unbounded && start > length))
    detail::fail(where, "start = ", start, " is outside [0, ", length, "]");
  index_t stop = 0;
  if (detail::add_overflows(start, count, &stop) || (length != unbounded && stop > length))
    detail::fail(where, "prefill [", start, ", ", start, " + ", count, ") runs past the layout length ", length);
  auto require_safe = [&](const char* what, index_t p, const char* why) {
    if (is_safe_split(mask, p)) return;
    if (layout == nullptr)
      detail::fail(where, what, " = ", p, " is not a safe split: row ", p - 1, " sees keys up to ",
                   mask.keys(p - 1).end, "; ", why);
    const index_t seg = layout->segment_of(p);
    const auto& s = layout->spans()[static_cast<size_t>(seg)];
    detail::fail(where, what, " = ", p, " lies inside Bidirectional segment ", seg, " [", s.begin, ", ", s.end,
                 "): ", why);
  };
  require_safe("start", start, "rows before it see keys after it");
  require_safe("start + count", stop, "its rows would miss their segment's later keys");
  std::vector<Chunk> chunks;
  index_t pos = start;
  while (pos < stop) {
    index_t end = std::min(stop, pos + max_chunk);
    while (end > pos && !is_safe_split(mask, end)) --end;
    if (end == pos) {
      if (layout == nullptr)
        detail::fail(where, "no safe split in (", pos, ", ", std::min(stop, pos + max_chunk),
                     "]: every row there sees keys past the next position (max_chunk = ", max_chunk, ")");
      // pos is a safe split, so pos + 1 is inside the Bidirectional segment that
      // starts at pos, and that segment reaches past pos + max_chunk (a window
      // only removes keys, so a split it blocks the layout blocks too).
      const index_t seg = layout->segment_of(pos);
      const auto& s = layout->spans()[static_cast<size_t>(seg)];
      throw oversized_segment(seg, s.begin, s.end, max_chunk);
    }
    chunks.push_back({pos, end});
    pos = end;
  }
  return chunks;
}

}  // namespace detail

// Cuts the prefill of positions [start, start + count) of `mask` into the fewest
// chunks of at most max_chunk tokens that all end at safe splits (greedy: each
// chunk ends at the furthest safe split in reach, which is optimal for covering
// a line with intervals). `start` must itself be a safe split (the cache before
// it is complete) and so must start + count (the prefill does not stop inside a
// Bidirectional segment).
inline std::vector<Chunk> plan_prefill(const SegmentMask& mask, index_t start, index_t count,
                                       index_t max_chunk) {
  return detail::plan_chunks(mask, &mask, start, count, max_chunk);
}

// The same under a sliding window (mask/sliding_window.hpp): splits follow the
// combined rule. Chunk [b, e) needs the keys from first_needed_key(mask, b)
// on (mask/kv_reuse.hpp); earlier ones may have left the cache.
template <class Mask>
std::vector<Chunk> plan_prefill(const SlidingWindowMask<Mask>& mask, index_t start, index_t count,
                                index_t max_chunk) {
  return detail::plan_chunks(mask, detail::layout_of(mask.inner), start, count, max_chunk);
}

// The pending step of a dialogue (everything not validly cached) in chunks,
// under its window if it has one.
inline std::vector<Chunk> plan_prefill(const Dialogue& dialogue, index_t max_chunk) {
  const DialogueStep step = dialogue.pending();
  return detail::plan_chunks(dialogue.attention_mask(), &dialogue.mask(), step.q_offset, step.n_q, max_chunk);
}

}  // namespace ism
