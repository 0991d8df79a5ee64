#pragma once
// The decode path's second half: combine the partial results of key chunks.
// Chunk c left, per row, an unnormalised output o_c, a max m_c (log2 units) and
// a sum l_c relative to it. With M = max over chunks that saw a key,
//   out = sum_c 2^(m_c - M) o_c / sum_c 2^(m_c - M) l_c,
//   lse = (M + log2(sum_c 2^(m_c - M) l_c)) * ln 2.
// Chunks that saw nothing (l_c = 0) are left out, so a row that saw no key in
// any chunk gets 0 and -inf, as in the one-pass kernel. A NaN l_c (a NaN
// score in that chunk) is kept and makes the row NaN.
#include <cmath>
#include <limits>
#include <vector>

#include "ism/cpu/kernel.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// Partial state of `chunks` chunks for `nrows` rows: o[c][r][dim], m[c][r],
// l[c][r]. Off the hot path (rows x chunks x dim flops), so plain scalar code;
// std::exp2 keeps the chunk weights exact to 1/2 ulp.
template <class T>
void merge_chunks(const TileRow<T>* rows, index_t nrows, index_t dim, index_t chunks, const float* o,
                  const float* m, const float* l) {
  std::vector<float> w(static_cast<size_t>(chunks));
  for (index_t r = 0; r < nrows; ++r) {
    float mx = -std::numeric_limits<float>::infinity();
    for (index_t c = 0; c < chunks; ++c)
      if (l[c * nrows + r] != 0.f) mx = std::max(mx, m[c * nrows + r]);
    float sum = 0.f;
    for (index_t c = 0; c < chunks; ++c) {
      const float lc = l[c * nrows + r];
      w[size_t(c)] = lc != 0.f ? std::exp2(m[c * nrows + r] - mx) : 0.f;
      sum += w[size_t(c)] * lc;
    }
    const float inv = sum == 0.f ? 0.f : 1.f / sum;
    T* out = rows[r].out;
    for (index_t d = 0; d < dim; ++d) {
      float acc = 0.f;
      for (index_t c = 0; c < chunks; ++c)
        if (l[c * nrows + r] != 0.f) acc += w[size_t(c)] * o[(c * nrows + r) * dim + d];
      out[d] = from_float<T>(acc * inv);
    }
    if (rows[r].lse)
      *rows[r].lse = sum == 0.f ? -std::numeric_limits<float>::infinity()
                                : (mx + std::log2(sum)) * 0.6931471805599453f;
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
