#pragma once
// The decode path's second half: combine the partial results of key chunks.
// Chunk c left, per row, an unnormalised output o_c, a max m_c (log2 units)
// and a sum l_c relative to it; the rows are merged and finished by the rule
// every backend shares (core/split_merge.hpp): chunks that saw nothing are
// dropped, a NaN chunk makes its row NaN, sinks join once.
#include <limits>

#include "ism/core/split_merge.hpp"
#include "ism/cpu/kernel.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// Partial state of `chunks` chunks for `nrows` rows: o[c][r][dim], m[c][r],
// l[c][r]. Off the hot path (rows x chunks x dim flops), so plain scalar code.
// w holds `chunks` floats.
template <class T>
void merge_chunks(const TileRow<T>* rows, index_t nrows, index_t dim, index_t chunks, const float* o,
                  const float* m, const float* l, const float* sinks, float* w) {
  constexpr float log2e = 1.4426950408889634f, inf = std::numeric_limits<float>::infinity();
  for (index_t r = 0; r < nrows; ++r) {
    const TileRow<T>& row = rows[r];
    const float sink2 = sinks ? sinks[row.head] * log2e : -inf;
    const FinishedRow fin = merge_chunks_row<SplitMergeTag>(m + r, l + r, chunks, nrows, sink2, w);
    for (index_t d = 0; d < dim; ++d)
      row.out[d] =
          narrow<T>(merge_value<SplitMergeTag>(w, l + r, nrows, o + r * dim + d, nrows * dim, chunks) * fin.inv);
    if (row.lse) *row.lse = fin.lse;
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
