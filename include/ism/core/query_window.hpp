#pragma once
// The window of one call: query rows [q_offset, q_offset + n_q) and keys
// [0, n_k), in absolute positions of the mask. It must lie inside the mask's
// layout (masks without a layout, such as causal, have length `unbounded`).
#include "ism/core/config.hpp"
#include "ism/core/errors.hpp"

namespace ism::detail {

template <class Mask>
void check_window(const char* where, const Mask& mask, index_t n_q, index_t n_k, index_t q_offset) {
  if (n_q < 0) fail(where, "n_q = ", n_q, " is negative");
  if (n_k < 0) fail(where, "n_k = ", n_k, " is negative");
  if (q_offset < 0) fail(where, "q_offset = ", q_offset, " is negative");
  index_t q_end = 0;
  if (add_overflows(q_offset, n_q, &q_end)) fail(where, "q_offset + n_q overflows: ", q_offset, " + ", n_q);
  if (mask.length() != unbounded) {
    if (q_end > mask.length())
      fail(where, "query rows [", q_offset, ", ", q_end, ") (q_offset = ", q_offset, ", n_q = ", n_q,
           ") exceed the layout length ", mask.length());
    if (n_k > mask.length()) fail(where, "n_k = ", n_k, " exceeds the layout length ", mask.length());
  }
}

}  // namespace ism::detail
