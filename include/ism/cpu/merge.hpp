#pragma once
// The decode path's second half: combine the partial results of key chunks.
// Chunk c left, per row, an unnormalised output o_c, a max m_c (log2 units) and
// a sum l_c relative to it. With M = max over chunks that saw a key,
//   L = sum_c 2^(m_c - M) l_c,  O = sum_c 2^(m_c - M) o_c,
// and the row is finished from (M, L, O) exactly as a one-pass row is
// (row_total in kernel.hpp: sinks join there, once).
// Chunks that saw nothing (l_c = 0) are left out, so a row that saw no key in
// any chunk gets 0 and -inf (or its sink), as in the one-pass kernel. A NaN
// l_c (a NaN score in that chunk) is kept and makes the row NaN: the rule the
// CUDA merge follows too.
#include <cmath>
#include <limits>
#include <vector>

#include "ism/cpu/kernel.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// Partial state of `chunks` chunks for `nrows` rows: o[c][r][dim], m[c][r],
// l[c][r]. Off the hot path (rows x chunks x dim flops), so plain scalar code;
// std::exp2 keeps the chunk weights exact to 1/2 ulp. w holds `chunks` floats.
template <class T>
void merge_chunks(const TileRow<T>* rows, index_t nrows, index_t dim, index_t chunks, const float* o,
                  const float* m, const float* l, const float* sinks, float* w) {
  constexpr float log2e = 1.4426950408889634f, inf = std::numeric_limits<float>::infinity();
  for (index_t r = 0; r < nrows; ++r) {
    float mx = -inf;
    for (index_t c = 0; c < chunks; ++c)
      if (l[c * nrows + r] != 0.f) mx = std::max(mx, m[c * nrows + r]);
    float sum = 0.f;
    for (index_t c = 0; c < chunks; ++c) {
      const float lc = l[c * nrows + r];
      w[c] = lc != 0.f ? std::exp2(m[c * nrows + r] - mx) : 0.f;
      sum += w[c] * lc;
    }
    const TileRow<T>& row = rows[r];
    const RowTotal tot = row_total(mx, sum, sinks ? sinks[row.head] * log2e : -inf);
    for (index_t d = 0; d < dim; ++d) {
      float acc = 0.f;
      for (index_t c = 0; c < chunks; ++c)
        if (l[c * nrows + r] != 0.f) acc += w[c] * o[(c * nrows + r) * dim + d];
      row.out[d] = narrow<T>(acc * tot.inv);
    }
    if (row.lse) *row.lse = tot.lse;
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
