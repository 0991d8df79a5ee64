#pragma once
// HeadsView: a strided [tokens, heads, dim] window onto a caller's buffer.
// Element (t, h, d) lives at data[t * token_stride + h * head_stride + d], so both
// [tokens, heads, dim] and [heads, tokens, dim] buffers are views without copies.
#include <type_traits>

#include "ism/core/config.hpp"
#include "ism/core/errors.hpp"

namespace ism {

template <class T>
struct HeadsView {
  T* data = nullptr;
  index_t tokens = 0;
  index_t heads = 0;
  index_t dim = 0;
  index_t token_stride = 0;
  index_t head_stride = 0;

  ISM_HOST_DEVICE T* row(index_t t, index_t h) const {
    return data + t * token_stride + h * head_stride;
  }
  ISM_HOST_DEVICE T& operator()(index_t t, index_t h, index_t d) const { return row(t, h)[d]; }

  // A mutable view converts to a read-only one (conversion operators keep the
  // struct an aggregate, so `HeadsView<float>{p, n, h, d, s0, s1}` still works).
  template <class U = T, class = std::enable_if_t<!std::is_const_v<U>>>
  operator HeadsView<const U>() const {
    return {data, tokens, heads, dim, token_stride, head_stride};
  }
};

namespace detail {
// The stride a packed layout needs; a product that overflows would wrap into a
// small stride that passes validation, so it is rejected here.
inline index_t packed_stride(const char* where, const char* a_name, index_t a, index_t dim) {
  index_t s = 0;
  if (mul_overflows(a, dim, &s)) fail(where, a_name, " * dim overflows: ", a, " * ", dim);
  return s;
}
}  // namespace detail

// [tokens, heads, dim], densely packed (the layout most engines keep Q/K/V in).
template <class T>
HeadsView<T> token_major(T* data, index_t tokens, index_t heads, index_t dim) {
  return {data, tokens, heads, dim, detail::packed_stride("ism::token_major", "heads", heads, dim), dim};
}

// [heads, tokens, dim], densely packed (the layout of per-head caches).
template <class T>
HeadsView<T> head_major(T* data, index_t tokens, index_t heads, index_t dim) {
  return {data, tokens, heads, dim, dim, detail::packed_stride("ism::head_major", "tokens", tokens, dim)};
}

template <class T>
HeadsView<const T> as_const(HeadsView<T> v) {
  return {v.data, v.tokens, v.heads, v.dim, v.token_stride, v.head_stride};
}

namespace detail {
template <class T>
struct type_identity {
  using type = T;
};
template <class T>
using type_identity_t = typename type_identity<T>::type;
}  // namespace detail

}  // namespace ism
