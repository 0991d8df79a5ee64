#pragma once
// The fused CPU backward pass of masked attention: dQ, dK, dV from Q, K, V,
// the forward's output O and LSE, and dO. Flash-style: each (query tile, key
// tile) step recomputes its scores and P = exp(S - lse) from the LSE, so
// nothing of size n_q x n_k is ever stored. Three phases, each a flat set of
// tasks run through the pool (or the caller's parallel-for):
//
//   pack     K and V of every KV head to fp32 [key][padded dim], once;
//   chunks   the plan's tasks (backward_plan.hpp): a chunk of one KV head's
//            query tiles, packed a few at a time and stepped together through
//            the key tiles their rows see: Empty tiles are never visited, Full
//            tiles run backward_tile<S, false> (no mask code), the rest apply
//            the rows' bounds. dQ of a tile is complete after its key loop
//            and written out; dK/dV add into the chunk's own fp32 slot;
//   reduce   dK, dV of each KV head's key tile: its chunks' slots summed in
//            chunk order, converted to the element type.
//
// Memory beyond O(tile) per thread: the packed K/V and the accumulator slots,
// O(n_k x dim x KV heads) each, never O(n_q x n_k); the calling thread keeps
// it for its next call (release_backward_scratch() frees it).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>

#include "ism/core/options.hpp"
#include "ism/core/shape.hpp"
#include "ism/core/views.hpp"
#include "ism/cpu/backward_plan.hpp"
#include "ism/cpu/backward_tile.hpp"
#include "ism/cpu/convert.hpp"
#include "ism/cpu/problem.hpp"
#include "ism/cpu/threads.hpp"
#include "ism/cpu/workspace.hpp"
#include "ism/mask/query_bounds.hpp"

// Test hook: the test build defines this to count every visited (query head,
// query tile, key tile) step; in a shipped build it is nothing at all.
#ifndef ISM_CPU_ON_BACKWARD_TILE_VISIT
#define ISM_CPU_ON_BACKWARD_TILE_VISIT() ((void)0)
#endif

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// One checked backward problem: inputs q, k, v, out, dout (element type T),
// lse [q_heads][n_q] (natural log, as the forward returned it), outputs dq,
// dk, dv, and the rows' key bounds.
template <class T>
struct BackwardProblem {
  HeadsView<const T> q, k, v, out, dout;
  const float* lse;
  HeadsView<T> dq, dk, dv;
  AttentionShape shape;
  QueryBounds bounds;
};

// Query tiles a chunk steps together through each key tile: every key tile
// (K, V and the dK/dV accumulators, 4 * tile_k * dp floats) is then read from
// L3 once per group instead of once per query tile. The group's buffers
// (5 * tile_q * dp floats a tile) stay within about half of a 1 MiB L2.
inline constexpr index_t max_group_tiles = 4;
inline index_t group_tiles(index_t dp) {
  const index_t per_tile = 5 * tile_q * dp * index_t(sizeof(float));
  return std::clamp<index_t>((index_t(400) << 10) / per_tile, 1, max_group_tiles);
}

// Per-thread scratch of the chunk tasks: the buffers (BackwardBuffers) of up
// to max_group_tiles query tiles, which share one S / dS pair, and their rows'
// absolute key bounds. O(tile), reused.
class BackwardWorkspace {
 public:
  // Buffers of tiles [0, tiles) at padded dim dp.
  BackwardBuffers* reserve(index_t dp, index_t tiles) {
    const index_t floats = tiles * per_tile(dp) + 2 * tile_k * tile_q;
    if (floats > capacity_) {
      buffer_.reset();
      buffer_ = aligned_floats(floats);
      capacity_ = floats;
    }
    float* p = buffer_.get();
    float* const st = p;
    float* const dst = p + tile_k * tile_q;
    p += 2 * tile_k * tile_q;
    for (index_t i = 0; i < tiles; ++i) {
      BackwardBuffers& b = buffers_[i];
      b = BackwardBuffers{};
      b.dp = dp;
      for (float** x : {&b.qt, &b.dot, &b.qr, &b.dor, &b.dq}) {
        *x = p;
        p += tile_q * dp;
      }
      for (float** x : {&b.lse2, &b.dd, &b.lo, &b.hi, &b.slope, &b.rel}) {
        *x = p;
        p += tile_q;
      }
      b.st = st;
      b.dst = dst;
      b.rlo = rows_;
      b.rhi = rows_ + tile_k;
    }
    return buffers_;
  }
  index_t* row_lo(index_t tile) { return bounds_ + 2 * tile * tile_q; }
  index_t* row_hi(index_t tile) { return bounds_ + (2 * tile + 1) * tile_q; }
  // Room for the next group's Q, dO and O rows (prefetched during this one).
  const void** prefetch_rows() { return prefetch_; }

 private:
  // Multiples of 16 floats, so every buffer starts 64-byte aligned.
  static index_t per_tile(index_t dp) { return 5 * tile_q * dp + 6 * tile_q; }
  index_t capacity_ = 0;
  AlignedBuffer buffer_;
  BackwardBuffers buffers_[max_group_tiles];
  index_t rows_[2 * tile_k] = {};
  index_t bounds_[2 * max_group_tiles * tile_q] = {};
  const void* prefetch_[3 * max_group_tiles * tile_q] = {};
};

inline BackwardWorkspace& thread_backward_workspace() {
  static thread_local BackwardWorkspace ws;
  return ws;
}

// The calling thread's scratch for the shared buffers of its backward calls,
// grown on demand and kept: a training loop's calls of one size then touch
// no fresh pages (first-touch page faults cost ~6% of a 2048-token call).
// release_backward_scratch() gives the memory back.
struct BackwardScratchCache {
  AlignedBuffer buffer;
  index_t capacity = 0;
  float* get(index_t floats) {
    if (floats > capacity) {
      buffer.reset();
      buffer = aligned_floats(floats);
      capacity = floats;
    }
    return buffer.get();
  }
};
inline BackwardScratchCache& backward_scratch_cache() {
  static thread_local BackwardScratchCache cache;
  return cache;
}
inline void release_backward_scratch() {
  BackwardScratchCache& c = backward_scratch_cache();
  c.buffer.reset();
  c.capacity = 0;
}

// The per-call buffers shared by the phases: packed K and V, and the chunks'
// dK/dV accumulator slots, [slot][KV head][key row][dp] each, in the calling
// thread's scratch (the tasks only use pointers into it).
struct BackwardScratch {
  index_t dp = 0, rows = 0, kv_heads = 0;
  float* keys = nullptr;
  float* slots = nullptr;
  BackwardScratch(const BackwardPlan& plan, index_t dp_)
      : dp(dp_), rows(plan.key_rows()), kv_heads(plan.shape().kv_heads) {
    const index_t per = rows * dp;
    keys = backward_scratch_cache().get(std::max<index_t>(16, 2 * (1 + plan.chunks_per_head()) * kv_heads * per));
    slots = keys + 2 * kv_heads * per;
  }
  float* k(index_t g) const { return keys + (2 * g) * rows * dp; }
  float* v(index_t g) const { return keys + (2 * g + 1) * rows * dp; }
  float* dk(index_t slot, index_t g) const { return slots + (2 * (slot * kv_heads + g)) * rows * dp; }
  float* dv(index_t slot, index_t g) const { return slots + (2 * (slot * kv_heads + g) + 1) * rows * dp; }
};

// dst[0, dp) = src[0, dim) widened to fp32, zero-padded.
template <class S, class T>
inline void widen_row(const T* src, float* dst, index_t dim, index_t dp) {
  constexpr index_t W = S::width;
  index_t d = 0;
  for (; d + W <= dim; d += W) S::store(dst + d, S::load(src + d));
  for (; d < dim; ++d) dst[d] = widen(src[d]);
  for (; d < dp; ++d) dst[d] = 0.f;
}

// dst[0, dim) = src[0, dim) * mul, narrowed to T.
template <class S, class T>
inline void narrow_row(const float* src, T* dst, index_t dim, float mul) {
  constexpr index_t W = S::width;
  const typename S::V m = S::set1(mul);
  index_t d = 0;
  for (; d + W <= dim; d += W) S::store(dst + d, S::mul(S::load(src + d), m));
  for (; d < dim; ++d) dst[d] = narrow<T>(src[d] * mul);
}

// Phase 1: key tile c of KV head g, packed (rows past n_k zero).
template <class S, class T>
void backward_pack_keys(const BackwardProblem<T>& pr, const BackwardScratch& sc, index_t g, index_t c) {
  const index_t dim = pr.shape.dim, dp = sc.dp;
  for (index_t j = c * tile_k; j < (c + 1) * tile_k; ++j) {
    float* kr = sc.k(g) + j * dp;
    float* vr = sc.v(g) + j * dp;
    if (j < pr.shape.n_k) {
      widen_row<S>(pr.k.row(j, g), kr, dim, dp);
      widen_row<S>(pr.v.row(j, g), vr, dim, dp);
    } else {
      std::fill(kr, kr + dp, 0.f);
      std::fill(vr, vr + dp, 0.f);
    }
  }
}

// dst[d][i] = src[i][d] * mul for rows i < n, 0 for lanes [n, lanes): a
// [rows][dp] copy turned into the [dp][tile_q] layout of the dot products, in
// blocks of 16 dims so the 16 destination rows being written stay in L1.
inline void transpose_rows(const float* src, float* dst, index_t n, index_t lanes, index_t dp, float mul) {
  for (index_t d0 = 0; d0 < dp; d0 += 16) {
    const index_t d1 = std::min(dp, d0 + 16);
    for (index_t i = 0; i < n; ++i)
      for (index_t d = d0; d < d1; ++d) dst[d * tile_q + i] = src[i * dp + d] * mul;
    for (index_t d = d0; d < d1; ++d)
      for (index_t i = n; i < lanes; ++i) dst[d * tile_q + i] = 0.f;
  }
}

// Packs query tile t of query head h into b: Q (row-major, unscaled: dK and
// dQ take the scale when written), Q^T in score units, dO, dO^T, the LSE in
// log2 units and D = dO . O per row, the rows' absolute key bounds into lo /
// hi. A row that sees nothing is all zeros with P forced to 0 (LSE +inf), so
// its inputs, whatever they hold, reach no gradient, and its dQ is 0.
// Returns the keys every row sees.
template <class S, class T>
KeyRange pack_query_tile(const BackwardProblem<T>& pr, const ScoreMods& mods, BackwardBuffers& b, index_t t,
                         index_t h, index_t* lo, index_t* hi) {
  constexpr index_t W = S::width;
  constexpr float log2e = 1.4426950408889634f, inf = std::numeric_limits<float>::infinity();
  const AttentionShape& s = pr.shape;
  const index_t dim = s.dim, dp = b.dp;
  const index_t r0 = t * tile_q, n = std::min(s.n_q, r0 + tile_q) - r0, nv = (n + W - 1) / W;
  KeyRange all{0, s.n_k};
  for (index_t i = 0; i < n; ++i) {
    const index_t row = r0 + i;
    const KeyRange k = pr.bounds.keys(s.q_offset + row);
    lo[i] = k.begin;
    hi[i] = k.end;
    all = {std::max(all.begin, k.begin), std::min(all.end, k.end)};
    float* qr = b.qr + i * dp;
    float* dor = b.dor + i * dp;
    if (k.end <= k.begin) {
      std::fill(qr, qr + dp, 0.f);
      std::fill(dor, dor + dp, 0.f);
      b.lse2[i] = inf;
      b.dd[i] = 0.f;
      continue;
    }
    widen_row<S>(pr.q.row(row, h), qr, dim, dp);
    widen_row<S>(pr.dout.row(row, h), dor, dim, dp);
    // D = dO . O, lane-wise then across the lanes in order (stored: GCC 12
    // warns inside its own _mm512_reduce_add_ps, bug 105593).
    const T* o = pr.out.row(row, h);
    typename S::V acc = S::zero();
    index_t d = 0;
    for (; d + W <= dim; d += W) acc = S::fma(S::load(dor + d), S::load(o + d), acc);
    alignas(64) float lanes[W];
    S::store(lanes, acc);
    float d_sum = 0.f;
    for (index_t l = 0; l < W; ++l) d_sum += lanes[l];
    for (; d < dim; ++d) d_sum += dor[d] * widen(o[d]);
    b.dd[i] = d_sum;
    // -inf: the forward saw no key for this row (all scores -inf); P is 0.
    const float l = pr.lse[h * s.n_q + row];
    b.lse2[i] = l == -inf ? inf : l * log2e;
  }
  for (index_t i = n; i < nv * W; ++i) {
    b.lse2[i] = inf;
    b.dd[i] = 0.f;
  }
  // Scores in the forward's units (the same product widen(q) * qscale): log2
  // (scale * log2(e)), or divided by the cap with a softcap, whose pass makes
  // them cap * log2(e) * tanh(score / cap).
  const float qscale = mods.softcap != 0.f ? s.scale / mods.softcap : s.scale * log2e;
  transpose_rows(b.qr, b.qt, n, nv * W, dp, qscale);
  transpose_rows(b.dor, b.dot, n, nv * W, dp, 1.f);
  for (index_t i = 0; i < nv * W; ++i) b.slope[i] = mods.alibi_slopes && i < n ? mods.alibi_slopes[h] * log2e : 0.f;
  b.softcap2 = mods.softcap * log2e;
  b.alibi = mods.alibi_slopes != nullptr;
  std::fill(b.dq, b.dq + n * dp, 0.f);
  return all;
}

// Phase 2: one chunk of the plan, its query tiles in groups of
// group_tiles(dp), each group stepping through the union of its tiles' key
// tiles. A key tile's dK/dV thus receive the group's tiles in list order, and
// a query tile's dQ its key tiles in key order: a fixed order for a plan.
template <class S, class T>
void backward_chunk(const BackwardProblem<T>& pr, const BackwardPlan& plan, const BackwardScratch& sc,
                    const ScoreMods& mods, const BackwardChunk& ch) {
  constexpr index_t W = S::width;
  const AttentionShape& s = pr.shape;
  const index_t dim = s.dim, dp = sc.dp, g = ch.kv;
  float* const dk = sc.dk(ch.chunk, g);
  float* const dv = sc.dv(ch.chunk, g);
  std::fill(dk + ch.key_begin * tile_k * dp, dk + ch.key_end * tile_k * dp, 0.f);
  std::fill(dv + ch.key_begin * tile_k * dp, dv + ch.key_end * tile_k * dp, 0.f);

  BackwardWorkspace& ws = thread_backward_workspace();
  const index_t group = group_tiles(dp);
  BackwardBuffers* const bufs = ws.reserve(dp, group);
  struct Member {
    index_t t, h, r0, n, nv, c0, c1;
    KeyRange all;
  };
  Member members[max_group_tiles];
  // The caller's Q, dO and O rows are typically 4 KB apart (token-major),
  // which the hardware prefetcher follows poorly: the next group's rows are
  // software-prefetched a few at a time during this group's steps.
  const void** const ahead = ws.prefetch_rows();
  const index_t row_bytes = dim * index_t(sizeof(T));
  for (index_t p0 = ch.begin; p0 < ch.end; p0 += group) {
    const index_t count = std::min(group, ch.end - p0);
    index_t c_first = plan.key_tiles(), c_last = 0;
    for (index_t m = 0; m < count; ++m) {
      Member& mb = members[m];
      mb.t = (p0 + m) / s.group;
      mb.h = g * s.group + (p0 + m) % s.group;
      mb.r0 = mb.t * tile_q;
      mb.n = std::min(s.n_q, mb.r0 + tile_q) - mb.r0;
      mb.nv = (mb.n + W - 1) / W;
      mb.c0 = plan.first_key_tile(mb.t);
      mb.c1 = plan.end_key_tile(mb.t);
      mb.all = pack_query_tile<S>(pr, mods, bufs[m], mb.t, mb.h, ws.row_lo(m), ws.row_hi(m));
      if (mb.c1 > mb.c0) {
        c_first = std::min(c_first, mb.c0);
        c_last = std::max(c_last, mb.c1);
      }
    }
    index_t n_ahead = 0, steps = 0, step = 0, given = 0;
    for (index_t p = p0 + count; p < std::min(ch.end, p0 + count + group); ++p) {
      const index_t t = p / s.group, h = g * s.group + p % s.group;
      for (index_t r = t * tile_q; r < std::min(s.n_q, (t + 1) * tile_q); ++r) {
        ahead[n_ahead++] = pr.q.row(r, h);
        ahead[n_ahead++] = pr.dout.row(r, h);
        ahead[n_ahead++] = pr.out.row(r, h);
      }
    }
    for (index_t m = 0; m < count; ++m) steps += members[m].c1 - members[m].c0;
    for (index_t c = c_first; c < c_last; ++c) {
      const index_t k0 = c * tile_k, k1 = std::min(s.n_k, k0 + tile_k), nk = k1 - k0;
      BackwardKeys keys{sc.k(g) + k0 * dp, sc.v(g) + k0 * dp, dk + k0 * dp, dv + k0 * dp};
      // The first step on this key tile prefetches the next one.
      if (c + 1 < c_last) {
        const index_t k2 = k0 + tile_k;
        keys.next_k = sc.k(g) + k2 * dp;
        keys.next_v = sc.v(g) + k2 * dp;
        keys.next_dk = dk + k2 * dp;
        keys.next_dv = dv + k2 * dp;
        keys.next_bytes = (std::min(s.n_k, k2 + tile_k) - k2) * dp * index_t(sizeof(float));
      }
      for (index_t m = 0; m < count; ++m) {
        const Member& mb = members[m];
        if (c < mb.c0 || c >= mb.c1) continue;
        ISM_CPU_ON_BACKWARD_TILE_VISIT();
        for (const index_t upto = n_ahead * ++step / steps; given < upto; ++given)
          for (index_t off = 0; off < row_bytes; off += 64)
            __builtin_prefetch(static_cast<const char*>(ahead[given]) + off, 0, 2);
        BackwardBuffers& b = bufs[m];
        const index_t n = mb.n, nv = mb.nv;
        if (b.alibi)
          for (index_t i = 0; i < nv * W; ++i)
            b.rel[i] = i < n ? static_cast<float>(s.q_offset + mb.r0 + i - k0) : 0.f;  // exact below 2^24
        const BackwardKeys step_keys = keys;
        keys.next_k = nullptr;
        if (mb.all.begin <= k0 && k1 <= mb.all.end) {
          backward_tile<S, false>(b, step_keys, n, nk);
          continue;
        }
        // Tile-relative bounds, clamped to [-1, tile_k + 1] so they are exact
        // in float; padding lanes see nothing. Then the rows that see each key.
        const index_t* lo = ws.row_lo(m);
        const index_t* hi = ws.row_hi(m);
        for (index_t i = 0; i < nv * W; ++i) {
          const index_t a = i < n ? lo[i] - k0 : 0, e = i < n ? hi[i] - k0 : 0;
          b.lo[i] = static_cast<float>(std::clamp<index_t>(a, -1, tile_k + 1));
          b.hi[i] = static_cast<float>(std::clamp<index_t>(e, -1, tile_k + 1));
        }
        for (index_t j = 0; j < nk; ++j) {
          b.rlo[j] = n;
          b.rhi[j] = 0;
        }
        for (index_t i = 0; i < n; ++i)
          for (index_t j = std::max<index_t>(lo[i] - k0, 0); j < std::min<index_t>(hi[i] - k0, nk); ++j) {
            b.rlo[j] = std::min(b.rlo[j], i);
            b.rhi[j] = std::max(b.rhi[j], i + 1);
          }
        for (index_t j = 0; j < nk; ++j)
          if (b.rhi[j] <= b.rlo[j]) b.rlo[j] = b.rhi[j] = 0;
        backward_tile<S, true>(b, step_keys, n, nk);
      }
    }
    for (index_t m = 0; m < count; ++m)
      for (index_t i = 0; i < members[m].n; ++i)
        narrow_row<S>(bufs[m].dq + i * dp, pr.dq.row(members[m].r0 + i, members[m].h), dim, s.scale);
  }
}

// Phase 3: key tile c of KV head g: dK and dV as the chunks' slots summed in
// chunk order (slots that never saw the tile add nothing; keys nobody sees
// get 0), dK times the scale (its slots hold dS^T Q).
template <class S, class T>
void backward_reduce(const BackwardProblem<T>& pr, const BackwardPlan& plan, const BackwardScratch& sc, index_t g,
                     index_t c, float* sum) {
  constexpr index_t W = S::width;
  const index_t dim = pr.shape.dim, dp = sc.dp;
  const index_t per = plan.chunks_per_head();
  const BackwardChunk* chunks = plan.chunks().data() + g * per;
  const index_t k1 = std::min(pr.shape.n_k, (c + 1) * tile_k);
  for (int which = 0; which < 2; ++which) {
    HeadsView<T> out = which == 0 ? pr.dk : pr.dv;
    for (index_t j = c * tile_k; j < k1; ++j) {
      std::fill(sum, sum + dp, 0.f);
      for (index_t x = 0; x < per; ++x) {
        if (c < chunks[x].key_begin || c >= chunks[x].key_end) continue;
        const float* a = (which == 0 ? sc.dk(x, g) : sc.dv(x, g)) + j * dp;
        for (index_t d = 0; d < dp; d += W) S::store(sum + d, S::add(S::load(sum + d), S::load(a + d)));
      }
      narrow_row<S>(sum, out.row(j, g), dim, which == 0 ? pr.shape.scale : 1.f);
    }
  }
}

// The whole backward pass of one checked problem.
template <class T>
void run_backward(const BackwardProblem<T>& pr, const ScoreMods& mods, const HostExecution& exec) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> || std::is_same_v<T, Eigen::half>,
                "the CPU backward stores float, Eigen::bfloat16 or Eigen::half");
  using S = simd::Native;
  constexpr index_t W = S::width;
  const AttentionShape& s = pr.shape;
  if (s.n_q == 0 && s.n_k == 0) return;
  const index_t dp = (s.dim + W - 1) / W * W;
  const BackwardPlan plan(s, pr.bounds);
  const BackwardScratch sc(plan, dp);
  const index_t key_tiles = plan.key_tiles();
  parallel_for(exec, s.kv_heads * key_tiles,
               [&](index_t i) { backward_pack_keys<S>(pr, sc, i / key_tiles, i % key_tiles); });
  if (s.n_q > 0)
    parallel_for(exec, static_cast<index_t>(plan.order().size()), [&](index_t i) {
      backward_chunk<S>(pr, plan, sc, mods, plan.chunks()[size_t(plan.order()[size_t(i)])]);
    });
  parallel_for(exec, s.kv_heads * key_tiles, [&](index_t i) {
    // A tile's dQ buffer (tile_q * dp floats) holds the dp-float row sum.
    BackwardWorkspace& ws = thread_backward_workspace();
    backward_reduce<S>(pr, plan, sc, i / key_tiles, i % key_tiles, ws.reserve(dp, 1)->dq);
  });
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
