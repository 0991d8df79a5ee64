#pragma once
// THE tile loop of the fused CPU attention. One call handles a group of query
// tiles (each up to tile_q rows; all rows share a KV head) against the keys
// they can see; each key tile is packed once and used by every query tile of
// the group that sees it:
//
//   bounds  each row's visible keys [lo, hi) from the mask policy (mask.keys),
//           so the tile's `any` range (keys some row sees) and `all` range
//           (keys every row sees);
//   visit   only key tiles that meet `any`: Empty tiles are never touched;
//           tiles inside `all` are Full and run attend_tile<..., false>, which
//           has no mask code; the rest are Partial and apply the row bounds;
//   finish  normalise (or hand the unnormalised state to the decode merge).
//
// K and V are read only through the KV source's key(t, h) / value(t, h) row
// pointers while packing a key tile, so contiguous and paged caches share it.
// Cache rows are typically 4 KB apart (token-major [t, h, d]), which defeats
// the hardware prefetcher: the next key tile's rows are software-prefetched a
// few at a time during the current tile's arithmetic (TileBuffers::prefetch).
// The mask is the rows' key bounds (mask/query_bounds.hpp), whatever policy
// the caller used; the arithmetic (tile_ops.hpp) is compiled once per head-dim
// class, independent of mask and element types. Score modifiers (softcap,
// ALiBi) are passes over a tile's scores that only run when they are on; sinks
// join the denominator when a row is finished.
#include <cmath>
#include <limits>
#include <type_traits>

#include "ism/core/split_merge.hpp"
#include "ism/cpu/convert.hpp"
#include "ism/cpu/problem.hpp"
#include "ism/cpu/tile_ops.hpp"
#include "ism/mask/tile_kind.hpp"

// Test hook: the test build defines this to count every visited (query head,
// query tile, key tile); in a shipped build it is nothing at all.
#ifndef ISM_CPU_ON_TILE_VISIT
#define ISM_CPU_ON_TILE_VISIT(heads) ((void)0)
#endif

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// One query row of a tile: where it reads, where it writes, its position and
// query head (for the head's ALiBi slope and sink).
template <class T>
struct TileRow {
  const T* q;
  T* out;
  float* lse;    // null when the caller wants no LSE
  index_t pos;   // absolute position (the mask's row index)
  index_t head;  // query head
};

// Where a split-key (decode) task leaves its unnormalised state: o[row][dim],
// and the running max (log2 units) and sum of each row.
struct PartialState {
  float* o;
  float* m;
  float* l;
};

using TileFn = void (*)(const TileBuffers&, index_t nrows, index_t nk);
struct TileFns {
  TileFn full, partial;
  index_t dp;  // padded head dim
};

// Head dims with a compile-time fast path; every other dim runs the same code
// with the padded dim read at run time.
template <class S>
inline TileFns tile_fns(index_t dim) {
  constexpr index_t W = S::width;
  const index_t dp = (dim + W - 1) / W * W;
  switch (dim) {
#define ISM_FAST_DIM(D) \
  case D: return {&attend_tile<S, int((D + W - 1) / W * W), false>, &attend_tile<S, int((D + W - 1) / W * W), true>, dp};
    ISM_FAST_DIM(64)
    ISM_FAST_DIM(80)
    ISM_FAST_DIM(96)
    ISM_FAST_DIM(128)
    ISM_FAST_DIM(256)
#undef ISM_FAST_DIM
    default: return {&attend_tile<S, 0, false>, &attend_tile<S, 0, true>, dp};
  }
}

// dst[0, dp) = src[0, dim) widened to fp32, zero-padded.
template <class S, class T>
inline void load_row(const T* src, float* dst, index_t dim, index_t dp) {
  constexpr index_t W = S::width;
  index_t d = 0;
  for (; d + W <= dim; d += W) S::store(dst + d, S::load(src + d));
  for (; d < dim; ++d) dst[d] = widen(src[d]);
  for (; d < dp; ++d) dst[d] = 0.f;
}

// Finishing a row (and merging split keys, merge.hpp) follows the one rule
// every backend shares (core/split_merge.hpp), instantiated for this
// instruction set through this tag.
struct SplitMergeTag {};

// Query rows [r0, r0 + n) of the rows array that form one query tile
// (n <= tile_q). The planner cuts tiles at fixed positions of each head, so a
// row's arithmetic (Full or Partial steps, summation order) does not depend on
// which tiles a task groups together, nor on the thread count.
struct TileSpan {
  index_t r0, n;
  index_t kv;  // the KV head its rows read
};

// Runs the query tiles spans[0, n_tiles) (n_tiles <= max_q_tiles) against key
// tiles [tile_begin, tile_end) (clipped to what the rows see). Each key tile is
// packed once per KV head the tiles read (a prefill task has one; a decode
// task one per tile), reading the cache token by token across those heads,
// and shared by every query tile of that head. `heads` is how many query
// heads one tile's rows span, for the visit counter. With `partial` null the
// output and LSE are final; otherwise row r's unnormalised state goes to
// partial at index r.
template <class S, class T, class KV, class Mask>
void attend_rows(const TileRow<T>* rows, const TileSpan* spans, index_t n_tiles, [[maybe_unused]] index_t heads, const KV& kv,
                 const Mask& mask, index_t n_k, index_t dim, float scale, index_t tile_begin, index_t tile_end,
                 const PartialState* partial, const ScoreMods& mods) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> || std::is_same_v<T, Eigen::half>,
                "the CPU kernel stores float, Eigen::bfloat16 or Eigen::half");
  constexpr index_t W = S::width;
  const TileFns fns = tile_fns<S>(dim);
  const index_t dp = fns.dp;
  // KV slots: the distinct KV heads of the tiles, in order of first use.
  index_t slot_head[max_q_tiles], tile_slot[max_q_tiles], n_slots = 0;
  for (index_t s = 0; s < n_tiles; ++s) {
    index_t k = 0;
    while (k < n_slots && slot_head[k] != spans[s].kv) ++k;
    if (k == n_slots) slot_head[n_slots++] = spans[s].kv;
    tile_slot[s] = k;
  }
  Workspace& ws = thread_workspace(dp, n_tiles, n_slots);

  struct QTile {
    index_t r0, n, nv;      // rows [r0, r0 + n), in nv vectors
    KeyRange any, all;      // keys some row sees / every row sees
    index_t c_begin, c_end; // key tiles to visit
    bool ready, done;       // Q^T packed / output written
    TileBuffers b;
  };
  QTile tiles[max_q_tiles];
  index_t* const lo = ws.row_lo();
  index_t* const hi = ws.row_hi();
  index_t c_first = tile_end, c_last = tile_begin;
  for (index_t s = 0; s < n_tiles; ++s) {
    QTile& qt = tiles[s];
    qt.r0 = spans[s].r0;
    qt.n = spans[s].n;
    qt.nv = (qt.n + W - 1) / W;
    qt.b = ws.tile(s, tile_slot[s]);
    qt.ready = qt.done = false;
    qt.any = {n_k, 0};
    qt.all = {0, n_k};
    for (index_t i = 0; i < qt.n; ++i) {
      const KeyRange k = visible_keys(mask, rows[qt.r0 + i].pos, n_k);
      lo[s * tile_q + i] = k.begin;
      hi[s * tile_q + i] = k.end;
      if (k.end > k.begin) qt.any = {std::min(qt.any.begin, k.begin), std::max(qt.any.end, k.end)};
      qt.all = {std::max(qt.all.begin, k.begin), std::min(qt.all.end, k.end)};
    }
    qt.c_begin = std::max(tile_begin, qt.any.begin / tile_k);
    qt.c_end = qt.any.end > qt.any.begin ? std::min(tile_end, (qt.any.end + tile_k - 1) / tile_k) : qt.c_begin;
    if (qt.c_end > qt.c_begin) {
      c_first = std::min(c_first, qt.c_begin);
      c_last = std::max(c_last, qt.c_end);
    }
  }

  // A query tile is packed just before its first step and written out right
  // after its last, so reading its Q rows and writing its output rows (cache
  // misses when rows are 4 KB apart) can be prefetched during other steps.
  // Scores leave the multiply in log2 units (Q is pre-scaled by scale *
  // log2(e)), so the softmax is exp2. With a softcap they leave it divided by
  // the cap instead; the softcap pass applies tanh and multiplies by
  // cap * log2(e).
  constexpr float log2e = 1.4426950408889634f;
  const float qscale = mods.softcap != 0.f ? scale / mods.softcap : scale * log2e;
  const float cap2 = mods.softcap * log2e;
  constexpr index_t PR = panel_rows<S>;
  auto prepare = [&](QTile& qt) {
    // Q in panels (tile_ops.hpp), pre-scaled; padding lanes and dims are 0.
    // The rows are widened a vector at a time into the (not yet used) output
    // accumulator first, then spread over their panels' lanes: reading a
    // value back right after its vector store would stall on store
    // forwarding for every element.
    float* qtr = qt.b.qt;
    float* rows_f = qt.b.o;
    const index_t rows_pad = qt.nv * W;
    for (index_t i = 0; i < qt.n; ++i) load_row<S>(rows[qt.r0 + i].q, rows_f + i * dp, dim, dp);
    for (index_t p0 = 0; p0 < rows_pad; p0 += PR) {
      const index_t pw = std::min(PR, rows_pad - p0);
      float* panel = qtr + p0 * dp;
      for (index_t i = p0; i < p0 + pw; ++i) {
        float* dst = panel + (i - p0);
        if (i < qt.n) {
          const float* src = rows_f + i * dp;
          for (index_t d = 0; d < dp; ++d) dst[d * pw] = src[d] * qscale;
        } else {
          for (index_t d = 0; d < dp; ++d) dst[d * pw] = 0.f;
        }
      }
    }
    for (index_t i = 0; i < qt.nv * W; ++i) {
      qt.b.m[i] = -std::numeric_limits<float>::infinity();
      qt.b.l[i] = 0.f;
      // ALiBi slope of the row's head in log2 units; padding lanes 0.
      if (mods.alibi_slopes) qt.b.slope[i] = i < qt.n ? mods.alibi_slopes[rows[qt.r0 + i].head] * log2e : 0.f;
    }
    qt.b.softcap2 = cap2;
    qt.b.alibi = mods.alibi_slopes != nullptr;
    for (index_t i = 0; i < qt.n * dp; ++i) qt.b.o[i] = 0.f;
    qt.ready = true;
  };
  auto finish = [&](QTile& qt) {
    qt.done = true;
    if (partial) {
      for (index_t i = 0; i < qt.n; ++i) {
        const index_t r = qt.r0 + i;
        for (index_t d = 0; d < dim; ++d) partial->o[r * dim + d] = qt.b.o[i * dp + d];
        partial->m[r] = qt.b.m[i];
        partial->l[r] = qt.b.l[i];
      }
      return;
    }
    for (index_t i = 0; i < qt.n; ++i) {
      const TileRow<T>& row = rows[qt.r0 + i];
      const float sink2 =
          mods.sinks ? mods.sinks[row.head] * log2e : -std::numeric_limits<float>::infinity();
      const FinishedRow tot = finish_row<SplitMergeTag>(qt.b.m[i], qt.b.l[i], sink2);
      const typename S::V vinv = S::set1(tot.inv);
      const float* o = qt.b.o + i * dp;
      T* out = row.out;
      index_t d = 0;
      for (; d + W <= dim; d += W) S::store(out + d, S::mul(S::load(o + d), vinv));
      for (; d < dim; ++d) out[d] = narrow<T>(o[d] * tot.inv);
      if (row.lse) *row.lse = tot.lse;
    }
  };

  // Rows to prefetch during one step: reads first (K/V of the next key tile,
  // Q of the next query tile to pack), then the step's own output rows.
  const char** const next_kv = ws.next_rows();
  const char** const ahead = ws.step_rows();
  index_t active[max_q_tiles];
  const index_t row_bytes = dim * index_t(sizeof(T));
  TileBuffers keys[max_q_tiles];  // each slot's packed key tile (kp, vp)
  for (index_t k = 0; k < n_slots; ++k) keys[k] = ws.tile(0, k);
  for (index_t c = c_first; c < c_last; ++c) {
    const index_t k0 = c * tile_k, k1 = std::min(n_k, k0 + tile_k), nk = k1 - k0;
    index_t n_active = 0;
    bool slot_now[max_q_tiles] = {}, slot_next[max_q_tiles] = {};
    for (index_t s = 0; s < n_tiles; ++s) {
      if (c >= tiles[s].c_begin && c < tiles[s].c_end) {
        active[n_active++] = s;
        slot_now[tile_slot[s]] = true;
      }
      if (c + 1 >= tiles[s].c_begin && c + 1 < tiles[s].c_end) slot_next[tile_slot[s]] = true;
    }
    // Token by token across the KV heads in use: with a token-major cache
    // that reads each token's heads as one contiguous run.
    for (index_t j = 0; j < nk; ++j)
      for (index_t k = 0; k < n_slots; ++k)
        if (slot_now[k]) load_row<S>(kv.key(k0 + j, slot_head[k]), keys[k].kp + j * dp, dim, dp);
    for (index_t j = 0; j < nk; ++j)
      for (index_t k = 0; k < n_slots; ++k)
        if (slot_now[k]) load_row<S>(kv.value(k0 + j, slot_head[k]), keys[k].vp + j * dp, dim, dp);
    // Key rows up to the score block's multiple are computed, never used.
    const index_t nk_pad = (nk + S::s_keys - 1) / S::s_keys * S::s_keys;
    for (index_t k = 0; k < n_slots; ++k)
      if (slot_now[k])
        for (index_t i = nk * dp; i < nk_pad * dp; ++i) keys[k].kp[i] = 0.f;

    // The next key tile's cache rows, spread over this key tile's steps.
    index_t n_kv = 0, kv_given = 0;
    for (index_t t = k1; t < std::min(n_k, k1 + tile_k); ++t)
      for (index_t k = 0; k < n_slots; ++k)
        if (slot_next[k]) {
          next_kv[n_kv++] = reinterpret_cast<const char*>(kv.key(t, slot_head[k]));
          next_kv[n_kv++] = reinterpret_cast<const char*>(kv.value(t, slot_head[k]));
        }
    for (index_t a = 0; a < n_active; ++a) {
      QTile& qt = tiles[active[a]];
      ISM_CPU_ON_TILE_VISIT(heads);
      if (!qt.ready) prepare(qt);
      index_t n = 0;
      for (const index_t upto = n_kv * (a + 1) / n_active; kv_given < upto;) ahead[n++] = next_kv[kv_given++];
      if (a + 1 < n_active && !tiles[active[a + 1]].ready) {
        const QTile& next = tiles[active[a + 1]];
        for (index_t i = 0; i < next.n; ++i) ahead[n++] = reinterpret_cast<const char*>(rows[next.r0 + i].q);
      }
      const index_t n_read = n;
      const bool last = c + 1 == qt.c_end;
      if (last && !partial)
        for (index_t i = 0; i < qt.n; ++i) ahead[n++] = reinterpret_cast<const char*>(rows[qt.r0 + i].out);
      qt.b.prefetch = ahead;
      qt.b.n_prefetch = n;
      qt.b.n_prefetch_read = n_read;
      qt.b.prefetch_bytes = row_bytes;
      if (qt.b.alibi) {
        // Each row's position relative to the tile's first key: exact in
        // float for distances below 2^24.
        for (index_t i = 0; i < qt.nv * W; ++i)
          qt.b.rel[i] = i < qt.n ? static_cast<float>(rows[qt.r0 + i].pos - k0) : 0.f;
      }
      if (qt.all.begin <= k0 && k1 <= qt.all.end) {
        fns.full(qt.b, qt.n, nk);
      } else {
        // Tile-relative bounds, clamped to [-1, tile_k + 1] so they are exact in
        // float whatever the absolute positions are. Padding lanes see nothing.
        const index_t s = active[a];
        for (index_t i = 0; i < qt.nv * W; ++i) {
          const index_t lo_i = i < qt.n ? lo[s * tile_q + i] - k0 : 0, hi_i = i < qt.n ? hi[s * tile_q + i] - k0 : 0;
          qt.b.lo[i] = static_cast<float>(std::clamp<index_t>(lo_i, -1, tile_k + 1));
          qt.b.hi[i] = static_cast<float>(std::clamp<index_t>(hi_i, -1, tile_k + 1));
        }
        fns.partial(qt.b, qt.n, nk);
      }
      if (last) finish(qt);
    }
  }
  // Tiles whose rows see no key at all.
  for (index_t s = 0; s < n_tiles; ++s)
    if (!tiles[s].done) {
      prepare(tiles[s]);
      finish(tiles[s]);
    }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
