#pragma once
// The arithmetic of one (query tile, key tile) step, written once against the
// SIMD vocabulary S (cpu/simd/*.hpp). It knows nothing of masks or element
// types: the tile loop (cpu/kernel.hpp) packs fp32 operands into the
// TileBuffers and says whether the tile is Full (no mask code at all) or
// Partial (per-row key bounds applied).
//
// Layout: scores are kept transposed, st[key][row], with query rows in the
// vector lanes. Then S = Q K^T is "load vectors of Q^T, broadcast one key
// element, FMA" with no horizontal reductions, the running max and sum of each
// row are lane-wise, and P V broadcasts one probability per (row, key) against
// vectors of V.
//
// Both products are GEMM micro-kernels whose shape is data of the instruction
// set (S::s_vecs x S::s_keys score accumulators, S::o_rows x S::o_vecs output
// accumulators, sized to its register file), and whose loops are ordered so
// that one operand stays in L1 while the other streams past it once:
//   scores  Q is packed in panels of s_vecs row vectors ([dp][panel rows],
//           contiguous), one panel at a time against every key block, so the
//           panel stays in L1 and the key tile streams once per panel;
//   output  one block of o_vecs dim vectors of V at a time against every row
//           block, so that slice of V stays in L1 and V is read once per step.
// Every loaded operand is pinned in a register (S::pin): left alone, compilers
// fold its reloads into each FMA as a memory operand, which makes the kernels
// load-bound at 0.6-0.8 of the FMA rate.
//
// Scores are in log2 units (Q is pre-scaled by scale * log2(e)) so the softmax
// is exp2, which the vocabulary computes directly.
#include <algorithm>
#include <limits>
#include <type_traits>

#include "ism/cpu/simd/select.hpp"
#include "ism/cpu/workspace.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

#if defined(__GNUC__)
#define ISM_UNROLL _Pragma("GCC unroll 16")
#else
#define ISM_UNROLL
#endif

// Rows of one packed Q panel. Panel p of a query tile holds rows
// [p * PR, p * PR + PR) (the last one fewer, rounded up to whole vectors) and
// starts at qt + p * PR * dp; within it, dim d of its rows is contiguous.
template <class S>
inline constexpr index_t panel_rows = index_t(S::s_vecs) * S::width;

// st[j0.., rows..] = Q[rows, :] . K[j0 + jb, :] for IB row vectors of one
// panel (qp: [dp][PW] with PW lanes per dim) x JB keys, accumulators in
// registers across the whole dim loop. With rowmax non-null each row's running
// maximum there also takes in the new scores, which saves the softmax a pass.
template <class S, int IB, int JB>
inline void score_block(const float* qp, index_t pw, const float* kp, float* st, index_t dp, float* rowmax) {
  using V = typename S::V;
  constexpr int W = S::width;
  V acc[JB][IB];
  ISM_UNROLL for (int jb = 0; jb < JB; ++jb) ISM_UNROLL for (int ib = 0; ib < IB; ++ib) acc[jb][ib] = S::zero();
  for (index_t d = 0; d < dp; ++d) {
    V q[IB];
    ISM_UNROLL for (int ib = 0; ib < IB; ++ib) {
      V x = S::load(qp + d * pw + ib * W);  // pinned as a scalar, not an array element (which would stay in memory)
      S::pin(x);
      q[ib] = x;
    }
    ISM_UNROLL for (int jb = 0; jb < JB; ++jb) {
      V k = S::set1(kp[jb * dp + d]);
      S::pin(k);
      ISM_UNROLL for (int ib = 0; ib < IB; ++ib) acc[jb][ib] = S::fma(q[ib], k, acc[jb][ib]);
    }
  }
  ISM_UNROLL for (int jb = 0; jb < JB; ++jb) ISM_UNROLL for (int ib = 0; ib < IB; ++ib)
    S::store(st + jb * tile_q + ib * W, acc[jb][ib]);
  if (rowmax) {
    ISM_UNROLL for (int ib = 0; ib < IB; ++ib) {
      V m = S::load(rowmax + ib * W);
      ISM_UNROLL for (int jb = 0; jb < JB; ++jb) m = S::max(m, acc[jb][ib]);
      S::store(rowmax + ib * W, m);
    }
  }
}

// o[i0.., dv0..] = alpha[i] * o + sum_{j in [j0, j1)} st[j][i] * vp[j][dv0..]
// for IR rows x OV dim vectors: the online-softmax rescale folded into the
// accumulator load (alpha null: no rescale, for the ragged edge of a row).
template <class S, int IR, int OV>
inline void output_block(float* o, const float* st, const float* vp, const float* alpha, index_t j0, index_t j1,
                         index_t dp) {
  using V = typename S::V;
  constexpr int W = S::width;
  V acc[IR][OV];
  ISM_UNROLL for (int ir = 0; ir < IR; ++ir) {
    ISM_UNROLL for (int ov = 0; ov < OV; ++ov) acc[ir][ov] = S::load(o + ir * dp + ov * W);
    if (alpha) {
      const V a = S::set1(alpha[ir]);
      ISM_UNROLL for (int ov = 0; ov < OV; ++ov) acc[ir][ov] = S::mul(acc[ir][ov], a);
    }
  }
  for (index_t j = j0; j < j1; ++j) {
    V v[OV];
    ISM_UNROLL for (int ov = 0; ov < OV; ++ov) {
      V x = S::load(vp + j * dp + ov * W);
      S::pin(x);
      v[ov] = x;
    }
    ISM_UNROLL for (int ir = 0; ir < IR; ++ir) {
      V p = S::set1(st[j * tile_q + ir]);
      S::pin(p);
      ISM_UNROLL for (int ov = 0; ov < OV; ++ov) acc[ir][ov] = S::fma(p, v[ov], acc[ir][ov]);
    }
  }
  ISM_UNROLL for (int ir = 0; ir < IR; ++ir) ISM_UNROLL for (int ov = 0; ov < OV; ++ov)
    S::store(o + ir * dp + ov * W, acc[ir][ov]);
}

// Calls f with std::integral_constant<int, n> for a runtime n in [1, MAX]: the
// remainder blocks at tile edges get their own fully unrolled instantiation.
template <int MAX, class F>
inline void with_block(int n, F&& f) {
  if constexpr (MAX > 1) {
    if (n >= MAX) {
      f(std::integral_constant<int, MAX>{});
      return;
    }
    with_block<MAX - 1>(n, f);
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// 2^f-based tanh over the vocabulary: tanh|x| = (1 - t) / (1 + t) with
// t = e^(-2|x|) = 2^(-2 log2(e) |x|), which lies in [0, 1] and so never
// overflows (exp2 gives exactly 0 far out, and tanh exactly 1). The absolute
// error is a few ulps of 1, which a softcap multiplies by the cap: scores move
// by about cap * 2^-22 at most. NaN stays NaN.
template <class S>
inline typename S::V tanh(typename S::V x) {
  using V = typename S::V;
  const V t = S::exp2(S::mul(S::abs(x), S::set1(-2.f * 1.4426950408889634f)));
  const V one = S::set1(1.f);
  return S::copysign(S::div(S::sub(one, t), S::add(one, t)), x);
}

// The score modifiers, as passes over a tile's scores st[j][row] (keys
// [0, nk), row vectors [0, nv)) before the softmax; each runs only when its
// modifier is on, so a call without modifiers pays one branch per tile.
// Softcap: the scores arrive divided by the cap and leave as
// cap * log2(e) * tanh(score / cap).
template <class S>
inline void softcap_pass(float* st, index_t nv, index_t nk, float cap2) {
  constexpr int W = S::width;
  const typename S::V c = S::set1(cap2);
  for (index_t j = 0; j < nk; ++j)
    for (index_t iv = 0; iv < nv; ++iv) {
      float* p = st + j * tile_q + iv * W;
      S::store(p, S::mul(c, tanh<S>(S::load(p))));
    }
}
// ALiBi: score -= slope * |i - j| per row, with the row's position relative to
// the tile's first key in rel and its slope (log2 units) in slope.
template <class S>
inline void alibi_pass(float* st, const float* slope, const float* rel, index_t nv, index_t nk) {
  constexpr int W = S::width;
  for (index_t iv = 0; iv < nv; ++iv) {
    const typename S::V neg = S::sub(S::zero(), S::load(slope + iv * W)), r = S::load(rel + iv * W);
    for (index_t j = 0; j < nk; ++j) {
      float* p = st + j * tile_q + iv * W;
      S::store(p, S::fma(neg, S::abs(S::sub(r, S::set1(static_cast<float>(j)))), S::load(p)));
    }
  }
}

// Issues the prefetches for rows [done, upto) of ws.prefetch and advances done.
inline void prefetch_rows(const TileBuffers& ws, index_t& done, index_t upto) {
  for (; done < upto; ++done) {
    const char* row = ws.prefetch[done];
    if (done < ws.n_prefetch_read) {
      for (index_t b = 0; b < ws.prefetch_bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
    } else {
      for (index_t b = 0; b < ws.prefetch_bytes; b += 64) __builtin_prefetch(row + b, 1, 2);
    }
  }
}

// One key tile against the packed query tile: nrows real rows (nv = row
// vectors covering them), nk real keys, kp holding nk rows plus zero rows up to
// a multiple of S::s_keys. DP > 0 makes the padded dim a compile-time constant
// (the fast head dims); DP == 0 reads ws.dp.
template <class S, int DP, bool Partial>
inline void attend_tile(const TileBuffers& ws, index_t nrows, index_t nk) {
  using V = typename S::V;
  constexpr int W = S::width, IB = S::s_vecs, JB = S::s_keys, IR = S::o_rows, OV = S::o_vecs;
  const index_t dp = DP > 0 ? DP : ws.dp;
  const index_t nv = (nrows + W - 1) / W;
  const index_t nk_pad = (nk + JB - 1) / JB * JB;
  const index_t dv = dp / W;
  const index_t n_panels = (nv + IB - 1) / IB;
  const index_t n_cols = (dv + OV - 1) / OV;

  // Half the prefetch rows go out during the score panels, half during the
  // output column blocks: a few at a time, so they never fill the miss
  // buffers the arithmetic's own loads need.
  const index_t pf_half = ws.n_prefetch / 2;
  index_t pf_done = 0;

  // 1. Scores: st[j][i] = q_i . k_j (log2 units). A Full tile without padding
  // keys and without score modifiers takes each row's max while scoring,
  // starting from the running max; alpha holds it until step 2 needs alpha.
  // A Partial tile computes each key block only for the row vectors of the
  // panel whose rows see some of its keys (a causal diagonal tile: about
  // half), and never reads a score outside a row's own keys; a skipped
  // block's scores are stale, and the mask pass sets every one outside a
  // row's keys to -inf.
  const bool modified = ws.softcap2 != 0.f || ws.alibi;
  const bool max_in_scores = !Partial && nk == nk_pad && !modified;
  auto rows_keys = [&](index_t r0, index_t r1, index_t& j0, index_t& j1) {
    j0 = 0;
    j1 = nk;
    if constexpr (Partial) {
      j0 = nk;
      j1 = 0;
      for (index_t i = r0; i < std::min(r1, nrows); ++i) {
        const index_t a = std::clamp<index_t>(static_cast<index_t>(ws.lo[i]), 0, nk);
        const index_t b = std::clamp<index_t>(static_cast<index_t>(ws.hi[i]), 0, nk);
        if (a < b) {
          j0 = std::min(j0, a);
          j1 = std::max(j1, b);
        }
      }
      if (j1 <= j0) j0 = j1 = 0;
    }
  };
  if (max_in_scores) std::copy(ws.m, ws.m + nv * W, ws.alpha);
  index_t vk0[tile_q], vk1[tile_q];  // Partial: the keys each row vector's rows see
  if constexpr (Partial)
    for (index_t iv = 0; iv < nv; ++iv) rows_keys(iv * W, iv * W + W, vk0[iv], vk1[iv]);
  for (index_t p = 0; p < n_panels; ++p) {
    prefetch_rows(ws, pf_done, pf_half * (p + 1) / n_panels);
    const index_t iv0 = p * IB;
    const int ib = static_cast<int>(std::min<index_t>(IB, nv - iv0));
    const float* qp = ws.qt + iv0 * W * dp;
    if constexpr (!Partial) {
      with_block<IB>(ib, [&](auto IBc) {
        constexpr int B = decltype(IBc)::value;
        for (index_t j0 = 0; j0 < nk_pad; j0 += JB)
          score_block<S, B, JB>(qp, B * W, ws.kp + j0 * dp, ws.st + j0 * tile_q + iv0 * W, dp,
                                max_in_scores ? ws.alpha + iv0 * W : nullptr);
      });
    } else {
      for (index_t j0 = 0; j0 < nk_pad; j0 += JB) {
        // The panel's row vectors [a, b) that see a key of [j0, j0 + JB).
        index_t a = iv0 + ib, b = iv0;
        for (index_t iv = iv0; iv < iv0 + ib; ++iv)
          if (vk0[iv] < j0 + JB && vk1[iv] > j0) {
            a = std::min(a, iv);
            b = iv + 1;
          }
        if (a >= b) continue;
        with_block<IB>(static_cast<int>(b - a), [&](auto IBc) {
          score_block<S, decltype(IBc)::value, JB>(qp + (a - iv0) * W, ib * W, ws.kp + j0 * dp,
                                                   ws.st + j0 * tile_q + a * W, dp, nullptr);
        });
      }
    }
  }

  if (modified) {
    if (ws.softcap2 != 0.f) softcap_pass<S>(ws.st, nv, nk, ws.softcap2);
    if (ws.alibi) alibi_pass<S>(ws.st, ws.slope, ws.rel, nv, nk);
  }

  // 2. Online softmax, lane-wise per row. A row that has seen nothing yet has
  // max -inf; exp2(s - max) would then be exp2(-inf + inf) = NaN, so the max
  // used as reference is clamped to -FLT_MAX: masked scores (-inf) still give
  // exactly 0 and an empty row keeps l = 0 (its output is set to 0 at the end).
  const V neg_inf = S::set1(-std::numeric_limits<float>::infinity());
  const V lowest = S::set1(std::numeric_limits<float>::lowest());
  for (index_t iv = 0; iv < nv; ++iv) {
    float* col = ws.st + iv * W;
    const V m_old = S::load(ws.m + iv * W);
    V mx = m_old;
    index_t j_begin = 0, j_end = nk;  // keys some lane sees; the rest is never read
    if constexpr (Partial) {
      j_begin = vk0[iv];
      j_end = vk1[iv];
    }
    if constexpr (Partial) {
      const V lo = S::load(ws.lo + iv * W), hi = S::load(ws.hi + iv * W);
      for (index_t j = j_begin; j < j_end; ++j) {
        const V s = S::keep_in_range(S::load(col + j * tile_q), S::set1(static_cast<float>(j)), lo, hi, neg_inf);
        S::store(col + j * tile_q, s);
        mx = S::max(mx, s);
      }
    } else if (max_in_scores) {
      mx = S::load(ws.alpha + iv * W);
    } else {
      for (index_t j = 0; j < nk; ++j) mx = S::max(mx, S::load(col + j * tile_q));
    }
    mx = S::max(mx, lowest);
    V sum = S::zero();
    for (index_t j = j_begin; j < j_end; ++j) {
      const V p = S::exp2(S::sub(S::load(col + j * tile_q), mx));
      S::store(col + j * tile_q, p);
      sum = S::add(sum, p);
    }
    const V alpha = S::exp2(S::sub(m_old, mx));
    S::store(ws.alpha + iv * W, alpha);
    S::store(ws.l + iv * W, S::fma(S::load(ws.l + iv * W), alpha, sum));
    S::store(ws.m + iv * W, mx);
  }

  // 3. o = alpha * o + P V, one block of dim vectors at a time against every
  // block of rows. Rescaling by exactly 1 changes nothing; once a row has
  // seen a few key tiles its max rarely moves, so most blocks skip it.
  // A Partial row reads only the keys it sees: a masked key's probability is
  // 0, but 0 * v is NaN when v is NaN or Inf, and a masked value must not
  // reach a row that cannot see it. So a block runs the keys all its rows
  // see, and each row adds its own ragged edges alone.
  const index_t n_row_blocks = (nrows + IR - 1) / IR;
  struct RowBlock {
    const float* alpha;  // null: no rescale
    index_t c0, c1;      // keys the whole block runs
  };
  RowBlock blocks[(tile_q + IR - 1) / IR];
  for (index_t b = 0; b < n_row_blocks; ++b) {
    const index_t i0 = b * IR, ir = std::min<index_t>(IR, nrows - i0);
    const float* alpha = ws.alpha + i0;
    if (std::all_of(alpha, alpha + ir, [](float a) { return a == 1.f; })) alpha = nullptr;
    index_t c0 = 0, c1 = nk;
    if constexpr (Partial) {
      for (index_t r = 0; r < ir; ++r) {
        c0 = std::max(c0, std::clamp<index_t>(static_cast<index_t>(ws.lo[i0 + r]), 0, nk));
        c1 = std::min(c1, std::clamp<index_t>(static_cast<index_t>(ws.hi[i0 + r]), 0, nk));
      }
    }
    blocks[b] = {alpha, c0, c1};
  }
  for (index_t c = 0; c < n_cols; ++c) {
    prefetch_rows(ws, pf_done, pf_half + (ws.n_prefetch - pf_half) * (c + 1) / n_cols);
    const index_t v0 = c * OV;
    const int ov = static_cast<int>(std::min<index_t>(OV, dv - v0));
    with_block<OV>(ov, [&](auto OVc) {
      constexpr int C = decltype(OVc)::value;
      const float* vp = ws.vp + v0 * W;
      for (index_t b = 0; b < n_row_blocks; ++b) {
        const index_t i0 = b * IR;
        const int ir = static_cast<int>(std::min<index_t>(IR, nrows - i0));
        float* o = ws.o + i0 * dp + v0 * W;
        const RowBlock& rb = blocks[b];
        if (!Partial || rb.c0 < rb.c1) {
          with_block<IR>(ir, [&](auto IRc) {
            output_block<S, decltype(IRc)::value, C>(o, ws.st + i0, vp, rb.alpha, rb.c0, rb.c1, dp);
          });
        }
        if constexpr (Partial) {
          for (int r = 0; r < ir; ++r) {
            const index_t b_r = std::clamp<index_t>(static_cast<index_t>(ws.lo[i0 + r]), 0, nk);
            const index_t e_r = std::clamp<index_t>(static_cast<index_t>(ws.hi[i0 + r]), 0, nk);
            float* o_r = o + r * dp;
            const float* st_r = ws.st + i0 + r;
            if (rb.c0 < rb.c1) {
              output_block<S, 1, C>(o_r, st_r, vp, nullptr, b_r, rb.c0, dp);
              output_block<S, 1, C>(o_r, st_r, vp, nullptr, rb.c1, e_r, dp);
            } else {
              // The block ran nothing: each row rescales and runs its own keys.
              output_block<S, 1, C>(o_r, st_r, vp, ws.alpha + i0 + r, b_r, e_r, dp);
            }
          }
        }
      }
    });
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
