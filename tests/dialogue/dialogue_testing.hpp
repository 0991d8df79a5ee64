#pragma once
// Helpers for the dialogue tests: attention over a window of rows of
// whole-conversation buffers, the way an engine runs one incremental step.
#include <cmath>
#include <vector>

#include "common/testing.hpp"

namespace ism_test {

// Rows [first, first + n) of a strided view (a sub-window of tokens).
template <class T>
ism::HeadsView<T> rows(ism::HeadsView<T> v, index_t first, index_t n) {
  v.data = v.tokens == 0 ? v.data : v.data + first * v.token_stride;
  v.tokens = n;
  return v;
}

// One incremental step through the fused kernel: rows [q_offset, q_offset + n_q)
// of q/out against keys [0, n_k) of k/v, evaluated on absolute positions.
// Defined once, in paged_test.cpp, so that a single translation unit of this
// binary instantiates the kernel for contiguous fp32 caches.
void attend_rows(const Tensor<float>& q, const Tensor<float>& k, const Tensor<float>& v, Tensor<float>& out,
                 const ism::SegmentMask& mask, index_t q_offset, index_t n_q, index_t n_k);

// A deep copy (Tensor's own copy keeps pointing at the source's buffer).
template <class T>
Tensor<T> snapshot(const Tensor<T>& src) {
  Tensor<T> dst(src.view.tokens, src.view.heads, src.view.dim);
  for (index_t t = 0; t < src.view.tokens; ++t)
    for (index_t h = 0; h < src.view.heads; ++h)
      for (index_t d = 0; d < src.view.dim; ++d) dst.view(t, h, d) = src.view(t, h, d);
  return dst;
}

// Largest |a - b| over rows [first, first + n) of two same-shaped tensors
// (b may be the fp64 reference).
template <class A, class B>
double max_abs_diff(const Tensor<A>& a, const Tensor<B>& b, index_t first, index_t n) {
  double m = 0;
  for (index_t t = first; t < first + n; ++t)
    for (index_t h = 0; h < a.view.heads; ++h)
      for (index_t d = 0; d < a.view.dim; ++d)
        m = std::max(m, std::abs(double(a.view(t, h, d)) - double(b.view(t, h, d))));
  return m;
}

}  // namespace ism_test
