#pragma once
// The vocabulary of the mask model: what a segment is and what a row sees.
#include <cstdint>

#include "ism/core/config.hpp"

namespace ism {

// How tokens of a segment see their own segment. Earlier segments of the same
// document are always visible; later segments never are.
enum class Attend : std::uint8_t {
  Causal,         // an answer / assistant turn: key j visible iff j <= i
  Bidirectional,  // a query / user turn, a system prompt: the whole segment
};

struct Segment {
  index_t length;
  Attend attend;
};

// The keys one query row sees: [begin, end). Every mask in this library gives
// each row one contiguous interval, and both ends never decrease with the row.
struct KeyRange {
  index_t begin;
  index_t end;
  ISM_HOST_DEVICE index_t size() const { return end > begin ? end - begin : 0; }
  ISM_HOST_DEVICE bool empty() const { return end <= begin; }
  ISM_HOST_DEVICE bool contains(index_t k) const { return begin <= k && k < end; }
};

ISM_HOST_DEVICE KeyRange intersect(KeyRange a, KeyRange b) {
  KeyRange r{a.begin > b.begin ? a.begin : b.begin, a.end < b.end ? a.end : b.end};
  if (r.end < r.begin) r.end = r.begin;
  return r;
}

inline const char* to_string(Attend a) {
  return a == Attend::Causal ? "Causal" : "Bidirectional";
}

}  // namespace ism
