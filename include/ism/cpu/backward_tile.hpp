#pragma once
// The arithmetic of one (query tile, key tile) step of the attention backward
// pass, written once against the SIMD vocabulary S (cpu/simd/*.hpp). It knows
// nothing of masks, element types or threads: the task loop (cpu/backward.hpp)
// packs fp32 operands into the buffers below and says whether the tile is Full
// (no mask code at all) or Partial (each row's key bounds applied).
//
// Per step, with P = exp(S - lse) recomputed from the forward's LSE:
//   S^T  = K Q^T          st[key][row]     (log2 units, as the forward)
//   dP^T = V dO^T         dst[key][row]
//   dS   = P (dP - D)     D = rowsum(dO * O), times 1 - tanh^2 under a softcap
//   dV  += P^T dO         dK += dS^T Q          dQ += dS K  (dK, dQ: times
//   the scale when written out)
// Five products of the tile's size, 2.5x the forward's two.
//
// Layout: query rows live in vector lanes (as in the forward's tile_ops.hpp),
// so S and dP are outer products over the dim with no horizontal reductions,
// the softmax terms are lane-wise, and the three accumulating products
// broadcast one element of P or dS against vectors of a row-major operand.
// Every operand is therefore packed twice where two products need it in two
// layouts: Q^T and Q, dO^T and dO.
//
// NaN safety: on Partial tiles the products that read P and dS (dV, dK, dQ)
// run each key / row over the pairs it sees only, never a masked pair: its
// dS is NaN when the key's V holds NaN, and even a 0 there would reach dQ as
// 0 * K = NaN for a NaN key. So a NaN key that a row cannot see reaches none
// of that row's gradients, and rows that see nothing reach no dK or dV.
#include <algorithm>
#include <limits>
#include <type_traits>

#include "ism/core/config.hpp"
#include "ism/cpu/simd/select.hpp"
#include "ism/cpu/tile_ops.hpp"
#include "ism/cpu/workspace.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// The buffers of one backward step (query tiles of tile_q rows, key tiles of
// tile_k keys, padded dim dp, a multiple of the vector width):
//   qt  [dp][tile_q]   Q^T, pre-scaled into score units (scale*log2e, or
//                      scale/softcap with a softcap)
//   dot [dp][tile_q]   dO^T
//   qr  [tile_q][dp]   Q, row-major (for dK, which takes the scale later)
//   dor [tile_q][dp]   dO, row-major (for dV)
//   dq  [tile_q][dp]   dQ accumulator (dS K, scaled when written out)
//   lse2, dd [tile_q]  LSE in log2 units (+inf where P must be 0) and D
//   lo, hi [tile_q]    tile-relative key bounds of each row (Partial steps)
//   slope, rel [tile_q] ALiBi: slope in log2 units, row position - tile's k0
//   st, dst [tile_k][tile_q]  scores -> P, dP -> dS
//   rlo, rhi [tile_k]  rows [rlo, rhi) that see each key (Partial steps)
struct BackwardBuffers {
  index_t dp = 0;
  float *qt = nullptr, *dot = nullptr, *qr = nullptr, *dor = nullptr, *dq = nullptr;
  float *lse2 = nullptr, *dd = nullptr, *lo = nullptr, *hi = nullptr, *slope = nullptr, *rel = nullptr;
  float *st = nullptr, *dst = nullptr;
  index_t *rlo = nullptr, *rhi = nullptr;
  float softcap2 = 0.f;  // softcap * log2(e); 0: off
  bool alibi = false;
};

// The key tile a step reads and the accumulators it adds to, all [keys][dp]
// fp32 with rows padded with zeros up to a multiple of tile_k. With next_k
// set, the step also prefetches the next key tile's four arrays (next_k,
// next_v read; next_dk, next_dv written), next_bytes each: fetching a key
// tile from L3 on demand cost a step a third of its time on Zen 4.
struct BackwardKeys {
  const float* kp;
  const float* vp;
  float* dk;
  float* dv;
  const float* next_k = nullptr;
  const float* next_v = nullptr;
  const float* next_dk = nullptr;
  const float* next_dv = nullptr;
  index_t next_bytes = 0;
};

namespace bwd {

// Register blocks of the five products. Full-vector loads, not broadcasts,
// limit these loops (Zen 4 measured: 4x4 blocks ran at 75% of the FMA peak,
// blocks that load one vector per 8 FMAs at 95-100%), so each block reuses a
// loaded vector across many broadcasts:
//   dot:  dot_vecs row vectors x dot_keys keys per dim step (loads 1/dot_keys)
//   acc:  acc_outs outputs x acc_vecs dim vectors per step  (loads 1/acc_outs)
// 32-register sets (AVX-512, NEON) hold 16 accumulators and their operands;
// AVX2's 16 registers hold 12. The scalar path keeps the vocabulary's blocks.
template <class S>
struct Blocks {
  static constexpr bool wide_file = S::width == 16 || S::width == 4;  // 32 registers
  static constexpr int dot_vecs = S::width == 1 ? S::s_vecs : 2;
  static constexpr int dot_keys = S::width == 1 ? S::s_keys : wide_file ? 8 : 6;
  static constexpr int acc_outs = S::width == 1 ? S::o_rows : wide_file ? 8 : 6;
  static constexpr int acc_vecs = S::width == 1 ? S::o_vecs : 2;
};

// ct[j][iv..] = at[:, iv..]^T . b[j][:] for IB row vectors x JB keys (S^T and
// dP^T), accumulators in registers across the whole dim.
template <class S, int IB, int JB>
inline void dot_block(const float* at, const float* b, float* ct, index_t dp) {
  using V = typename S::V;
  constexpr int W = S::width;
  V acc[JB][IB];
  ISM_UNROLL for (int jb = 0; jb < JB; ++jb) ISM_UNROLL for (int ib = 0; ib < IB; ++ib) acc[jb][ib] = S::zero();
  for (index_t d = 0; d < dp; ++d) {
    V a[IB];
    ISM_UNROLL for (int ib = 0; ib < IB; ++ib) a[ib] = S::load(at + d * tile_q + ib * W);
    ISM_UNROLL for (int jb = 0; jb < JB; ++jb) {
      const V x = S::set1(b[jb * dp + d]);
      ISM_UNROLL for (int ib = 0; ib < IB; ++ib) acc[jb][ib] = S::fma(a[ib], x, acc[jb][ib]);
    }
  }
  ISM_UNROLL for (int jb = 0; jb < JB; ++jb) ISM_UNROLL for (int ib = 0; ib < IB; ++ib)
    S::store(ct + jb * tile_q + ib * W, acc[jb][ib]);
}

// c[x][v..] += sum_{y in [y0, y1)} m[x * MX + y * MY] * r[y][v..] for XB
// outputs x (c rows dp apart) and OV dim vectors: the accumulating products.
//   dV += P^T dO:  x = key, y = row, m = P  [key][row] (MX = tile_q, MY = 1)
//   dK += dS^T Q:  the same with dS and Q
//   dQ += dS K:    x = row, y = key, m = dS [key][row] (MX = 1, MY = tile_q)
template <class S, int XB, int OV, index_t MX, index_t MY>
inline void acc_block(float* c, const float* m, const float* r, index_t y0, index_t y1, index_t dp) {
  using V = typename S::V;
  constexpr int W = S::width;
  V acc[XB][OV];
  ISM_UNROLL for (int x = 0; x < XB; ++x) ISM_UNROLL for (int ov = 0; ov < OV; ++ov)
    acc[x][ov] = S::load(c + x * dp + ov * W);
  for (index_t y = y0; y < y1; ++y) {
    V rv[OV];
    ISM_UNROLL for (int ov = 0; ov < OV; ++ov) rv[ov] = S::load(r + y * dp + ov * W);
    ISM_UNROLL for (int x = 0; x < XB; ++x) {
      const V p = S::set1(m[x * MX + y * MY]);
      ISM_UNROLL for (int ov = 0; ov < OV; ++ov) acc[x][ov] = S::fma(p, rv[ov], acc[x][ov]);
    }
  }
  ISM_UNROLL for (int x = 0; x < XB; ++x) ISM_UNROLL for (int ov = 0; ov < OV; ++ov)
    S::store(c + x * dp + ov * W, acc[x][ov]);
}

// Lane-wise: st (scores) -> P, dst (dP) -> dS for keys [0, nk) and row
// vectors [0, nv). Modifiers as template flags so a plain call has none of
// their code in its loop.
template <class S, bool Partial, bool Cap, bool Alibi>
inline void softmax_grad(const BackwardBuffers& b, index_t nv, index_t nk) {
  using V = typename S::V;
  constexpr int W = S::width;
  const V neg_inf = S::set1(-std::numeric_limits<float>::infinity()), zero = S::zero(), one = S::set1(1.f);
  const V cap2 = S::set1(b.softcap2);
  for (index_t iv = 0; iv < nv; ++iv) {
    const V l2 = S::load(b.lse2 + iv * W), d = S::load(b.dd + iv * W);
    V lo = zero, hi = zero, nslope = zero, rel = zero;
    if constexpr (Partial) {
      lo = S::load(b.lo + iv * W);
      hi = S::load(b.hi + iv * W);
    }
    if constexpr (Alibi) {
      nslope = S::sub(zero, S::load(b.slope + iv * W));
      rel = S::load(b.rel + iv * W);
    }
    for (index_t j = 0; j < nk; ++j) {
      float* ps = b.st + j * tile_q + iv * W;
      float* pd = b.dst + j * tile_q + iv * W;
      const V jv = S::set1(static_cast<float>(j));
      V s = S::load(ps), t = zero;
      if constexpr (Cap) {
        t = tanh<S>(s);  // the forward's tanh (tile_ops.hpp): the same scores
        s = S::mul(cap2, t);
      }
      if constexpr (Alibi) s = S::fma(nslope, S::abs(S::sub(rel, jv)), s);
      if constexpr (Partial) s = S::keep_in_range(s, jv, lo, hi, neg_inf);
      const V p = S::exp2(S::sub(s, l2));
      V ds = S::mul(p, S::sub(S::load(pd), d));
      if constexpr (Cap) ds = S::mul(ds, S::fma(S::sub(zero, t), t, one));
      // A masked pair's P is exactly 0 and its dS may be NaN (dP of a NaN
      // key): the accumulating products never read either (see the top).
      S::store(ps, p);
      S::store(pd, ds);
    }
  }
}

}  // namespace bwd

// One key tile (nk real keys) against the packed query tile (nrows real rows). Partial
// applies b.lo/b.hi (and b.rlo/b.rhi, the rows that see each key).
template <class S, bool Partial>
inline void backward_tile(const BackwardBuffers& b, const BackwardKeys& kt, index_t nrows, index_t nk) {
  constexpr int W = S::width;
  const index_t dp = b.dp;
  using B = bwd::Blocks<S>;
  const index_t nv = (nrows + W - 1) / W;

  // The next key tile's lines, a share after every register block of the
  // step (about 16 prefetches at a time): issued in bursts, most of them
  // found the miss buffers full and were dropped.
  const index_t lines = kt.next_k ? kt.next_bytes / 64 : 0;
  const index_t blocks = 2 * ism::detail::ceil_div(nk, B::dot_keys) * ism::detail::ceil_div(nv, B::dot_vecs) +
                         (2 * ism::detail::ceil_div(nk, B::acc_outs) + ism::detail::ceil_div(nrows, B::acc_outs)) *
                             ism::detail::ceil_div(dp / W, B::acc_vecs);
  index_t issued = 0, done = 0;
  auto prefetch_upto = [&](index_t upto) {
    for (; issued < upto; ++issued) {
      const index_t off = issued * 64;
      __builtin_prefetch(reinterpret_cast<const char*>(kt.next_k) + off, 0, 2);
      __builtin_prefetch(reinterpret_cast<const char*>(kt.next_v) + off, 0, 2);
      __builtin_prefetch(reinterpret_cast<const char*>(kt.next_dk) + off, 1, 2);
      __builtin_prefetch(reinterpret_cast<const char*>(kt.next_dv) + off, 1, 2);
    }
  };
  auto block_done = [&] {
    if (lines) prefetch_upto(std::min(lines, lines * ++done / blocks));
  };

  // 1. S^T = K Q^T and dP^T = V dO^T (keys past nk: zero rows of kp / vp).
  for (index_t j0 = 0; j0 < nk; j0 += B::dot_keys) {
    const int jb = static_cast<int>(std::min<index_t>(nk - j0, B::dot_keys));
    with_block<B::dot_keys>(jb, [&](auto JB) {
      for (index_t iv0 = 0; iv0 < nv; iv0 += B::dot_vecs) {
        const int ib = static_cast<int>(std::min<index_t>(nv - iv0, B::dot_vecs));
        with_block<B::dot_vecs>(ib, [&](auto IB) {
          constexpr int I = decltype(IB)::value, J = decltype(JB)::value;
          bwd::dot_block<S, I, J>(b.qt + iv0 * W, kt.kp + j0 * dp, b.st + j0 * tile_q + iv0 * W, dp);
          block_done();
          bwd::dot_block<S, I, J>(b.dot + iv0 * W, kt.vp + j0 * dp, b.dst + j0 * tile_q + iv0 * W, dp);
          block_done();
        });
      }
    });
  }

  // 2. P and dS, lane-wise.
  const bool cap = b.softcap2 != 0.f;
  if (cap && b.alibi) bwd::softmax_grad<S, Partial, true, true>(b, nv, nk);
  else if (cap) bwd::softmax_grad<S, Partial, true, false>(b, nv, nk);
  else if (b.alibi) bwd::softmax_grad<S, Partial, false, true>(b, nv, nk);
  else bwd::softmax_grad<S, Partial, false, false>(b, nv, nk);

  const index_t dvecs = dp / W;
  // out[x0.., :] += m * r over y in [y0, y1) for a block of n outputs.
  auto acc_rows = [&](auto MXc, auto MYc, float* out, const float* m, const float* r, int n, index_t y0, index_t y1) {
    if (y1 <= y0) return;
    constexpr index_t MX = decltype(MXc)::value, MY = decltype(MYc)::value;
    with_block<B::acc_outs>(n, [&](auto XB) {
      for (index_t v0 = 0; v0 < dvecs; v0 += B::acc_vecs) {
        const int ov = static_cast<int>(std::min<index_t>(dvecs - v0, B::acc_vecs));
        with_block<B::acc_vecs>(ov, [&](auto OV) {
          bwd::acc_block<S, decltype(XB)::value, decltype(OV)::value, MX, MY>(out + v0 * W, m, r + v0 * W, y0, y1, dp);
          block_done();
        });
      }
    });
  };
  using KeyMajor = std::integral_constant<index_t, tile_q>;
  using Unit = std::integral_constant<index_t, 1>;

  // 3. dV += P^T dO and dK += dS^T Q, a block of keys at a time over
  // the rows. Partial: the rows every key of the block sees as one block, each
  // key's ragged edges alone.
  for (index_t j0 = 0; j0 < nk; j0 += B::acc_outs) {
    const int n = static_cast<int>(std::min<index_t>(nk - j0, B::acc_outs));
    if constexpr (!Partial) {
      acc_rows(KeyMajor{}, Unit{}, kt.dv + j0 * dp, b.st + j0 * tile_q, b.dor, n, 0, nrows);
      acc_rows(KeyMajor{}, Unit{}, kt.dk + j0 * dp, b.dst + j0 * tile_q, b.qr, n, 0, nrows);
    } else {
      index_t c0 = 0, c1 = nrows;
      for (int x = 0; x < n; ++x) {
        c0 = std::max(c0, b.rlo[j0 + x]);
        c1 = std::min(c1, b.rhi[j0 + x]);
      }
      const bool common = c0 < c1;
      if (common) {
        acc_rows(KeyMajor{}, Unit{}, kt.dv + j0 * dp, b.st + j0 * tile_q, b.dor, n, c0, c1);
        acc_rows(KeyMajor{}, Unit{}, kt.dk + j0 * dp, b.dst + j0 * tile_q, b.qr, n, c0, c1);
      }
      for (int x = 0; x < n; ++x) {
        const index_t j = j0 + x, r0 = b.rlo[j], r1 = b.rhi[j];
        const index_t edges[2][2] = {{r0, common ? c0 : r1}, {common ? c1 : r1, r1}};
        for (const auto& e : edges) {
          acc_rows(KeyMajor{}, Unit{}, kt.dv + j * dp, b.st + j * tile_q, b.dor, 1, e[0], e[1]);
          acc_rows(KeyMajor{}, Unit{}, kt.dk + j * dp, b.dst + j * tile_q, b.qr, 1, e[0], e[1]);
        }
      }
    }
  }

  // 4. dQ += dS K, a block of rows at a time over the keys; Partial as above
  // with the rows' own key bounds.
  for (index_t i0 = 0; i0 < nrows; i0 += B::acc_outs) {
    const int n = static_cast<int>(std::min<index_t>(nrows - i0, B::acc_outs));
    if constexpr (!Partial) {
      acc_rows(Unit{}, KeyMajor{}, b.dq + i0 * dp, b.dst + i0, kt.kp, n, 0, nk);
    } else {
      index_t lo[B::acc_outs], hi[B::acc_outs], c0 = 0, c1 = nk;
      for (int x = 0; x < n; ++x) {
        lo[x] = std::clamp<index_t>(static_cast<index_t>(b.lo[i0 + x]), 0, nk);
        hi[x] = std::clamp<index_t>(static_cast<index_t>(b.hi[i0 + x]), 0, nk);
        c0 = std::max(c0, lo[x]);
        c1 = std::min(c1, hi[x]);
      }
      const bool common = c0 < c1;
      if (common) acc_rows(Unit{}, KeyMajor{}, b.dq + i0 * dp, b.dst + i0, kt.kp, n, c0, c1);
      for (int x = 0; x < n; ++x) {
        const index_t i = i0 + x;
        const index_t edges[2][2] = {{lo[x], common ? c0 : hi[x]}, {common ? c1 : hi[x], hi[x]}};
        for (const auto& e : edges) acc_rows(Unit{}, KeyMajor{}, b.dq + i * dp, b.dst + i, kt.kp, 1, e[0], e[1]);
      }
    }
  }
  prefetch_upto(lines);  // Partial steps run more, smaller blocks: the rest
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
