#pragma once
// Exporters: any mask policy of this library in the formats other attention
// systems take, so a mask built here can drive (or be checked against) them.
// All of them describe the window of an incremental call: query rows are
// absolute positions [q_offset, q_offset + n_q) and appear as rows 0..n_q-1;
// keys are [0, n_k).
//
//   flashmask_startend_row_indices  PaddlePaddle FlashMask, column-wise row ranges
//   flex_block_mask                 PyTorch FlexAttention BlockMask block lists
//   query_kv_ranges                 per-query [begin, end) key ranges (FlashInfer-style)
//   flashinfer_packed_mask          FlashInfer's bit-packed custom mask
//   ggml_kq_mask                    ggml_flash_attn_ext's fp16 additive mask (with
//                                   ALiBi distances), ggml_alibi_slopes its slopes
//
// Sliding windows (mask/sliding_window.hpp) are policies like the others and go
// through every format.
//
// Every mask here gives each row one key interval whose ends never decrease
// with the row (docs/DESIGN.md section 1); the column-wise and block formats rely on
// that and check it, so a policy that breaks it is reported, not mis-exported.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ism/core/errors.hpp"
#include "ism/mask/dense.hpp"

namespace ism {

namespace detail {

inline std::int32_t to_i32(const char* where, const char* what, index_t x) {
  if (x < 0 || x > std::numeric_limits<std::int32_t>::max())
    fail(where, what, " = ", x, " does not fit the int32 indices of this format");
  return static_cast<std::int32_t>(x);
}

// Visible keys of every window row, checked to be monotone.
template <class Mask>
std::vector<KeyRange> monotone_rows(const char* where, const Mask& mask, index_t n_q, index_t n_k,
                                    index_t q_offset) {
  std::vector<KeyRange> r = row_bounds(mask, n_q, n_k, q_offset);
  for (size_t i = 1; i < r.size(); ++i)
    if (r[i].begin < r[i - 1].begin || r[i].end < r[i - 1].end)
      fail(where, "row ", i, " sees keys [", r[i].begin, ", ", r[i].end, ") but row ", i - 1, " sees [",
           r[i - 1].begin, ", ", r[i - 1].end, "): the interval ends must not decrease with the row");
  return r;
}

}  // namespace detail

// --- FlashMask ---------------------------------------------------------------
// FlashMask (PaddlePaddle, arXiv 2410.01359) describes a mask by columns: for
// key column j, which query rows are masked. We emit the `causal=False`,
// two-value variant [LTS, UTE] (shape [batch, heads, k_seq_len, 2], int32):
//   rows r >= LTS[j] (lower-triangle start) are masked, and
//   rows r <  UTE[j] (upper-triangle end) are masked.
// Because row intervals never shrink backwards, the rows that see column j
// form one interval [UTE, LTS): rows whose interval ends after j, up to the
// first row whose interval starts after j. A column nobody sees has
// UTE == LTS (at its diagonal row). Pass causal=False to flashmask_attention
// with this tensor.
struct FlashMaskIndices {
  index_t n_q = 0, n_k = 0;
  std::vector<std::int32_t> startend;  // [n_k][2]: {LTS, UTE}, row-major
  std::int32_t lts(index_t j) const { return startend[static_cast<size_t>(2 * j)]; }
  std::int32_t ute(index_t j) const { return startend[static_cast<size_t>(2 * j + 1)]; }
  bool masked(index_t r, index_t j) const { return r >= lts(j) || r < ute(j); }
};

template <class Mask>
FlashMaskIndices flashmask_startend_row_indices(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0) {
  const char* where = "ism::flashmask_startend_row_indices";
  detail::to_i32(where, "n_q", n_q);
  const auto rows = detail::monotone_rows(where, mask, n_q, n_k, q_offset);
  FlashMaskIndices out;
  out.n_q = n_q;
  out.n_k = n_k;
  index_t entries = 0;
  if (detail::mul_overflows(n_k, index_t(2), &entries)) detail::fail(where, "n_k = ", n_k, " is too large");
  out.startend.resize(static_cast<size_t>(entries));
  // Two pointers: as j grows, the first row whose interval ends after j and
  // the first row whose interval starts after j both move down only.
  index_t first_seeing = 0, first_past = 0;
  for (index_t j = 0; j < n_k; ++j) {
    while (first_seeing < n_q && rows[static_cast<size_t>(first_seeing)].end <= j) ++first_seeing;
    while (first_past < n_q && rows[static_cast<size_t>(first_past)].begin <= j) ++first_past;
    index_t lts = first_past, ute = first_seeing;
    if (ute >= lts) {
      // Nobody sees column j: cut at its diagonal row, so that the masked rows
      // below are in the lower triangle and those above in the upper one, as
      // the format's names say, whichever way a kernel reads them.
      lts = ute = std::min(std::max<index_t>(j - q_offset, 0), n_q);
    }
    out.startend[static_cast<size_t>(2 * j)] = static_cast<std::int32_t>(lts);
    out.startend[static_cast<size_t>(2 * j + 1)] = static_cast<std::int32_t>(ute);
  }
  return out;
}

// --- FlexAttention -------------------------------------------------------------
// PyTorch FlexAttention's BlockMask for one (batch, head), block sizes given:
// per query block, the partial key blocks (some pairs visible: the kernel
// applies mask_mod) and, separately, the full key blocks (every in-range pair
// visible: no masking). Empty blocks are in neither list. Indices are int32,
// [num_q_blocks][num_kv_blocks] row-major; each row lists its blocks in
// ascending order, then the remaining block indices in ascending order, which
// is what torch's dense-to-ordered conversion (a stable descending argsort)
// leaves there. Ragged last blocks are judged on their in-range pairs, as the
// kernel bounds them by the sequence lengths.
struct FlexBlockMask {
  index_t q_block = 0, kv_block = 0;
  index_t num_q_blocks = 0, num_kv_blocks = 0;
  std::vector<std::int32_t> kv_num_blocks, kv_indices;            // partial blocks
  std::vector<std::int32_t> full_kv_num_blocks, full_kv_indices;  // full blocks
};

template <class Mask>
FlexBlockMask flex_block_mask(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0,
                              index_t q_block = 128, index_t kv_block = 128) {
  const char* where = "ism::flex_block_mask";
  if (q_block <= 0) detail::fail(where, "q_block = ", q_block, " must be positive");
  if (kv_block <= 0) detail::fail(where, "kv_block = ", kv_block, " must be positive");
  const auto rows = row_bounds(mask, n_q, n_k, q_offset);
  FlexBlockMask out;
  out.q_block = q_block;
  out.kv_block = kv_block;
  out.num_q_blocks = detail::ceil_div(n_q, q_block);
  out.num_kv_blocks = detail::ceil_div(n_k, kv_block);
  detail::to_i32(where, "num_kv_blocks", out.num_kv_blocks);
  const index_t nkb = out.num_kv_blocks;
  index_t entries = 0;
  if (detail::mul_overflows(out.num_q_blocks, nkb, &entries))
    detail::fail(where, "num_q_blocks * num_kv_blocks overflows: ", out.num_q_blocks, " * ", nkb);
  out.kv_num_blocks.assign(static_cast<size_t>(out.num_q_blocks), 0);
  out.full_kv_num_blocks.assign(static_cast<size_t>(out.num_q_blocks), 0);
  out.kv_indices.resize(static_cast<size_t>(entries));
  out.full_kv_indices.resize(out.kv_indices.size());
  // Visible pairs per key block of one query block: each row adds its partial
  // edge blocks directly and its fully covered middle blocks through a
  // difference array, so a row costs O(1), not O(its keys).
  std::vector<index_t> pairs(static_cast<size_t>(nkb)), covering(static_cast<size_t>(nkb + 1));
  for (index_t qb = 0; qb < out.num_q_blocks; ++qb) {
    const index_t r0 = qb * q_block, r1 = std::min(n_q, r0 + q_block);
    std::fill(pairs.begin(), pairs.end(), 0);
    std::fill(covering.begin(), covering.end(), 0);
    for (index_t r = r0; r < r1; ++r) {
      const KeyRange k = rows[static_cast<size_t>(r)];
      if (k.empty()) continue;
      const index_t fb = k.begin / kv_block, lb = (k.end - 1) / kv_block;
      if (fb == lb) {
        pairs[static_cast<size_t>(fb)] += k.size();
        continue;
      }
      pairs[static_cast<size_t>(fb)] += (fb + 1) * kv_block - k.begin;
      pairs[static_cast<size_t>(lb)] += k.end - lb * kv_block;
      ++covering[static_cast<size_t>(fb + 1)];
      --covering[static_cast<size_t>(lb)];
    }
    std::vector<std::int32_t> partial, full, rest_partial, rest_full;
    index_t cover = 0;
    for (index_t c = 0; c < nkb; ++c) {
      cover += covering[static_cast<size_t>(c)];
      const index_t width = std::min(kv_block, n_k - c * kv_block);
      const index_t visible = pairs[static_cast<size_t>(c)] + cover * width;
      const auto ci = static_cast<std::int32_t>(c);
      const bool is_full = visible == (r1 - r0) * width, is_partial = visible > 0 && !is_full;
      (is_partial ? partial : rest_partial).push_back(ci);
      (is_full ? full : rest_full).push_back(ci);
    }
    out.kv_num_blocks[static_cast<size_t>(qb)] = static_cast<std::int32_t>(partial.size());
    out.full_kv_num_blocks[static_cast<size_t>(qb)] = static_cast<std::int32_t>(full.size());
    partial.insert(partial.end(), rest_partial.begin(), rest_partial.end());
    full.insert(full.end(), rest_full.begin(), rest_full.end());
    std::copy(partial.begin(), partial.end(), out.kv_indices.begin() + qb * nkb);
    std::copy(full.begin(), full.end(), out.full_kv_indices.begin() + qb * nkb);
  }
  return out;
}

// --- FlashInfer ------------------------------------------------------------------
// Per query row, the visible keys [kv_begin, kv_end) as int32 (empty rows have
// kv_begin == kv_end): the compact form for kernels that take a key range per
// query, and the input FlashInfer-style sparse planners start from.
struct QueryKvRanges {
  std::vector<std::int32_t> kv_begin, kv_end;
};

template <class Mask>
QueryKvRanges query_kv_ranges(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0) {
  const char* where = "ism::query_kv_ranges";
  detail::to_i32(where, "n_k", n_k);
  // row_bounds checks the window before anything is sized by n_q.
  const std::vector<KeyRange> rows = row_bounds(mask, n_q, n_k, q_offset);
  QueryKvRanges out;
  out.kv_begin.reserve(rows.size());
  out.kv_end.reserve(rows.size());
  for (const KeyRange& k : rows) {
    out.kv_begin.push_back(static_cast<std::int32_t>(k.begin));
    out.kv_end.push_back(static_cast<std::int32_t>(k.end));
  }
  return out;
}

// FlashInfer's `packed_custom_mask` for one request: the [n_q, n_k] boolean
// mask flattened row-major, bit i of the flat index in byte i / 8 at bit
// position i % 8 (numpy packbits with bitorder="little", as FlashInfer's
// prefill wrappers pack `custom_mask`), (n_q * n_k + 7) / 8 bytes.
template <class Mask>
std::vector<std::uint8_t> flashinfer_packed_mask(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset = 0) {
  const auto rows = row_bounds(mask, n_q, n_k, q_offset);
  index_t bits = 0;
  if (detail::mul_overflows(n_q, n_k, &bits))
    detail::fail("ism::flashinfer_packed_mask", "n_q * n_k overflows: ", n_q, " * ", n_k);
  std::vector<std::uint8_t> out(static_cast<size_t>((bits + 7) / 8), 0);
  for (index_t r = 0; r < n_q; ++r) {
    const KeyRange k = rows[static_cast<size_t>(r)];
    for (index_t j = k.begin; j < k.end; ++j) {
      const index_t i = r * n_k + j;
      out[static_cast<size_t>(i / 8)] |= static_cast<std::uint8_t>(1u << (i % 8));
    }
  }
  return out;
}

// --- ggml --------------------------------------------------------------------------
// The KQ mask of ggml_flash_attn_ext: an F16 tensor with ne0 = n_kv (columns,
// contiguous) and ne1 = GGML_PAD(n_batch, GGML_KQ_MASK_PAD) rows, 0 where
// visible and -INFINITY elsewhere; rows past n_batch are padding and are
// filled with -INFINITY, as llama.cpp does. The rule followed is that of ggml
// as of llama.cpp PR #5021 (flash_attn_ext) up to PR #16309, which removed the
// padding (GGML_KQ_MASK_PAD was 32 at first, 64 from mid-2024): pass
// row_pad = 64 for those versions, row_pad = 1 for ggml after #16309.
//
// A sliding window is a mask policy here (sliding_window(mask, w)), so it is
// in this mask like the rest of the rule; llama.cpp's LLAMA_SWA_TYPE_STANDARD
// with n_swa = w is sliding_window(causal_mask(), w).
//
// The score modifiers of AttentionOptions map onto
//   ggml_flash_attn_ext(ctx, q, k, v, mask, scale, max_bias, logit_softcap)
//   ggml_flash_attn_ext_add_sinks(result, sinks)
// ggml's CPU kernel (ggml-cpu/ops.cpp, ggml_compute_forward_flash_attn_ext_f16)
// takes, for each query row of head h and each key whose mask value mv is not
// -INFINITY, the steps of docs/DESIGN.md in the same order:
//   s = scale * q.k                   scale          = options.scale (ggml has no
//                                                      default: pass 1/sqrt(dim))
//   s = softcap * tanh(s / softcap)   logit_softcap  = options.softcap, 0 = off (ggml
//                                                      divides its scale by the cap up
//                                                      front: the same function)
//   s = s + slope_h * mv              ALiBi and the mask at once (below)
// and the softmax denominator of head h gains exp(sinks[h]): the sinks tensor,
// F32 with one value per query head, is options.sinks.
// ALiBi: ggml derives slope_h from max_bias (ggml_alibi_slopes below; with
// max_bias = 0 every slope is 1 and mv is added as it is) and reads the
// distance from the mask: GgmlKqValues::AlibiDistance writes -|i - j| where
// visible (absolute positions, q_offset counted), as llama.cpp does for ALiBi
// models; run ism with options.alibi_slopes = ggml_alibi_slopes(n_head,
// max_bias) for the same scores. F16 holds distances up to 2048 exactly and
// rounds larger ones (ggml then uses the rounded distance, as in llama.cpp); a
// distance beyond 65504 would round to -INFINITY and mask a visible key, so it
// is rejected.
enum class GgmlKqValues : std::uint8_t {
  Zero,           // 0 where visible: no ALiBi (or max_bias with a mask of zeros)
  AlibiDistance,  // -|i - j| where visible: ALiBi through max_bias
};

struct GgmlKqMask {
  index_t n_kv = 0;        // ne0
  index_t n_batch = 0;     // query rows that are real
  index_t n_batch_pad = 0; // ne1
  std::vector<Eigen::half> data;  // [n_batch_pad][n_kv]
  Eigen::half at(index_t r, index_t j) const { return data[static_cast<size_t>(r * n_kv + j)]; }
};

inline constexpr index_t ggml_kq_mask_pad = 64;

// The largest distance AlibiDistance can write: the largest finite F16.
inline constexpr index_t ggml_max_alibi_distance = 65504;

template <class Mask>
GgmlKqMask ggml_kq_mask(const Mask& mask, index_t n_batch, index_t n_kv, index_t q_offset = 0,
                        index_t row_pad = ggml_kq_mask_pad, GgmlKqValues values = GgmlKqValues::Zero) {
  const char* where = "ism::ggml_kq_mask";
  if (row_pad <= 0) detail::fail(where, "row_pad = ", row_pad, " must be positive");
  const auto rows = row_bounds(mask, n_batch, n_kv, q_offset);
  const bool alibi = values == GgmlKqValues::AlibiDistance;
  for (index_t r = 0; alibi && r < n_batch; ++r) {
    const KeyRange k = rows[static_cast<size_t>(r)];
    if (k.empty()) continue;
    const index_t i = q_offset + r, far = std::max(i - k.begin, k.end - 1 - i);
    if (far > ggml_max_alibi_distance)
      detail::fail(where, "row ", r, " (position ", i, ") sees a key at distance ", far,
                   ", beyond the largest F16 distance ", ggml_max_alibi_distance, " of GgmlKqValues::AlibiDistance");
  }
  GgmlKqMask out;
  out.n_kv = n_kv;
  out.n_batch = n_batch;
  index_t elements = 0;
  if (detail::mul_overflows(detail::ceil_div(n_batch, row_pad), row_pad, &out.n_batch_pad) ||
      detail::mul_overflows(out.n_batch_pad, n_kv, &elements))
    detail::fail(where, "n_batch_pad * n_kv overflows: ", out.n_batch_pad, " * ", n_kv);
  const Eigen::half hidden(-std::numeric_limits<float>::infinity()), visible(0.0f);
  out.data.assign(static_cast<size_t>(elements), hidden);
  for (index_t r = 0; r < n_batch; ++r) {
    const KeyRange k = rows[static_cast<size_t>(r)];
    const index_t i = q_offset + r;
    for (index_t j = k.begin; j < k.end; ++j)
      out.data[static_cast<size_t>(r * n_kv + j)] = alibi ? Eigen::half(-static_cast<float>(i > j ? i - j : j - i)) : visible;
  }
  return out;
}

// The ALiBi slope ggml_flash_attn_ext gives query head h for max_bias (as
// ggml computes it, in float): with n = the largest power of two <= n_head,
//   slope_h = 2^(-max_bias * (h + 1) / n)                 for h < n,
//   slope_h = 2^(-max_bias * (2 (h - n) + 1) / (2 n))     otherwise;
// every slope is 1 for max_bias = 0. These are options.alibi_slopes for ism to
// compute what ggml computes from a GgmlKqValues::AlibiDistance mask.
inline std::vector<float> ggml_alibi_slopes(index_t n_head, float max_bias) {
  const char* where = "ism::ggml_alibi_slopes";
  if (n_head <= 0 || n_head > std::numeric_limits<std::int32_t>::max())
    detail::fail(where, "n_head = ", n_head, " must be in [1, 2^31)");
  if (!(max_bias >= 0.0f) || !std::isfinite(max_bias))
    detail::fail(where, "max_bias = ", max_bias, " must be finite and >= 0");
  index_t n = 1;
  while (2 * n <= n_head) n *= 2;
  const float m0 = std::pow(2.0f, -max_bias / static_cast<float>(n));
  const float m1 = std::pow(2.0f, -(max_bias / 2.0f) / static_cast<float>(n));
  std::vector<float> slopes(static_cast<size_t>(n_head), 1.0f);
  if (max_bias > 0.0f)
    for (index_t h = 0; h < n_head; ++h)
      slopes[static_cast<size_t>(h)] =
          h < n ? std::pow(m0, static_cast<float>(h + 1)) : std::pow(m1, static_cast<float>(2 * (h - n) + 1));
  return slopes;
}

}  // namespace ism
