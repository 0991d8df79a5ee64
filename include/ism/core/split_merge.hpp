#pragma once
// The one rule for finishing a row of online softmax and for merging the
// partial results of a row whose keys were split into chunks (CPU key chunks,
// CUDA key splits, the warps of a CUDA decode block). Every backend calls
// these functions, so they cannot disagree on the corner cases.
//
// A chunk's state for one row, in log2 units (scores pre-multiplied by
// log2 e): m = the largest score it saw (-inf if none), l = sum of
// 2^(s - m) over its keys, o = sum of 2^(s - m) v, unnormalised.
//   - A chunk that saw no key has l == 0: it is dropped (its o is not read).
//   - A NaN score leaves l NaN (the max skips NaN, the exp does not). NaN is
//     not 0, so such a chunk is kept, and its NaN reaches the merged row
//     through L and O: the row comes out NaN with a NaN LSE, as the fp64
//     reference gives, whatever the number of chunks.
//   - Sinks join once, when the row is finished, never per chunk.
// With M = max over kept chunks of m_c and w_c = 2^(m_c - M):
//   L = sum_c w_c l_c, O = sum_c w_c o_c, then finish_row(M, L, sink).
//
// Plain C++ (ISM_HOST_DEVICE): nvcc compiles it for the device, g++ and
// clang++ for the host, with no CUDA header.
//
// Every function takes a Tag type that nothing reads. The CPU kernel passes
// a type of its per-instruction-set namespace, so an -mavx2 and an -mavx512f
// translation unit of one program get different instantiations, not one
// inline function the linker picks from either (cpu/convert.hpp says why
// that matters); everyone else uses the default.
#include <math.h>

#include "ism/core/config.hpp"

namespace ism {

// A chunk that saw at least one key, or a NaN score.
template <class Tag = void>
ISM_HOST_DEVICE bool chunk_kept(float l) { return l != 0.f; }

// M: the largest m of the kept chunks `count` apart by `stride` (-inf when no
// chunk is kept). fmaxf skips a NaN m; its chunk's NaN l still poisons L.
template <class Tag = void>
ISM_HOST_DEVICE float merge_max(const float* m, const float* l, index_t count, index_t stride) {
  float mx = -HUGE_VALF;
  for (index_t c = 0; c < count; ++c)
    if (chunk_kept<Tag>(l[c * stride])) mx = fmaxf(mx, m[c * stride]);
  return mx;
}

// w_c = 2^(m_c - M) for a kept chunk, 0 for a dropped one. When every kept
// chunk has m = -inf (all its scores were NaN) M is -inf too and w is NaN,
// which is the row's answer.
template <class Tag = void>
ISM_HOST_DEVICE float merge_weight(float m_c, float l_c, float mx) {
  return chunk_kept<Tag>(l_c) ? exp2f(m_c - mx) : 0.f;
}

// One coordinate of O: sum of w_c o_c over kept chunks. Dropped chunks are
// skipped, not multiplied by 0: their o may be anything (never written).
template <class Tag = void>
ISM_HOST_DEVICE float merge_value(const float* w, const float* l, index_t l_stride, const float* o,
                                  index_t o_stride, index_t count) {
  float acc = 0.f;
  for (index_t c = 0; c < count; ++c)
    if (chunk_kept<Tag>(l[c * l_stride])) acc += w[c] * o[c * o_stride];
  return acc;
}

// A finished row: out = O * inv, and its natural-log LSE.
struct FinishedRow {
  float inv;
  float lse;
};

// Finishes a row from its max m and sum l (log2 units) and its sink (log2
// units: sinks[h] * log2 e; -inf when there is none):
//   out = O / (l + 2^(sink - m)),  lse = ln(2^m l + 2^sink).
// l == 0: the row saw no key: out 0 and LSE = the sink (-inf without one),
// never 0/0. A NaN l is not "no key": the row is NaN.
template <class Tag = void>
ISM_HOST_DEVICE FinishedRow finish_row(float m, float l, float sink2) {
  const float ln2 = 0.6931471805599453f, inf = HUGE_VALF;
  if (sink2 == -inf) return {l == 0.f ? 0.f : 1.f / l, l == 0.f ? -inf : (m + log2f(l)) * ln2};
  if (l == 0.f) return {0.f, sink2 * ln2};
  // Both present: factor out the larger exponent so nothing overflows. A NaN
  // l makes den, inv and the LSE NaN.
  const float top = fmaxf(m, sink2);
  const float den = l * exp2f(m - top) + exp2f(sink2 - top);
  return {exp2f(m - top) / den, (top + log2f(den)) * ln2};
}

// The whole merge for one row: fills w[c] (merge_weight) and returns the
// finished row, whose inv already divides by the merged denominator:
// out[d] = inv * merge_value(w, l, l_stride, o + d, o_stride, count).
template <class Tag = void>
ISM_HOST_DEVICE FinishedRow merge_chunks_row(const float* m, const float* l, index_t count, index_t stride,
                                            float sink2, float* w) {
  const float mx = merge_max<Tag>(m, l, count, stride);
  float sum = 0.f;
  for (index_t c = 0; c < count; ++c) {
    w[c] = merge_weight<Tag>(m[c * stride], l[c * stride], mx);
    if (chunk_kept<Tag>(l[c * stride])) sum += w[c] * l[c * stride];
  }
  return finish_row<Tag>(mx, sum, sink2);
}

}  // namespace ism
