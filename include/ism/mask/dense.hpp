#pragma once
// Materialisers: a mask as a dense Eigen matrix (for tests, for frameworks that
// want an additive mask) and as compact per-row bounds.
#include <Eigen/Core>
#include <limits>
#include <type_traits>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/core/query_window.hpp"
#include "ism/mask/tile_kind.hpp"

namespace ism {

template <class Scalar>
using DenseMask = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Row r is query position q_offset + r, column c is key position c.
// bool: true where visible. Floating (float, double, Eigen::half,
// Eigen::bfloat16): 0 where visible, -infinity elsewhere (an additive mask).
template <class Scalar, class Mask>
DenseMask<Scalar> dense_mask(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0) {
  detail::check_window("ism::dense_mask", mask, n_q, n_k, q_offset);
  index_t bytes = 0;
  if (detail::mul_overflows(n_q, n_k, &bytes) || detail::mul_overflows(bytes, index_t(sizeof(Scalar)), &bytes))
    detail::fail("ism::dense_mask", "n_q * n_k = ", n_q, " * ", n_k, " elements overflow the address space");
  Scalar visible, hidden;
  if constexpr (std::is_same_v<Scalar, bool>) {
    visible = true;
    hidden = false;
  } else {
    visible = Scalar(0.0f);
    hidden = Scalar(-std::numeric_limits<float>::infinity());
  }
  DenseMask<Scalar> m(n_q, n_k);
  for (index_t r = 0; r < n_q; ++r) {
    const KeyRange keys = visible_keys(mask, q_offset + r, n_k);
    for (index_t c = 0; c < n_k; ++c) m(r, c) = keys.contains(c) ? visible : hidden;
  }
  return m;
}

// Compact export: the visible [begin, end) of each query row (empty rows are
// {x, x}). This is the O(N) form kernels and other libraries consume.
template <class Mask>
std::vector<KeyRange> row_bounds(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0) {
  detail::check_window("ism::row_bounds", mask, n_q, n_k, q_offset);
  std::vector<KeyRange> out(static_cast<size_t>(n_q));
  for (index_t r = 0; r < n_q; ++r) out[static_cast<size_t>(r)] = visible_keys(mask, q_offset + r, n_k);
  return out;
}

}  // namespace ism
