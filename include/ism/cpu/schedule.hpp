#pragma once
// Planning: turns a batch of attention problems (shapes and the rows' key
// bounds; no buffers) into independent tasks. A schedule depends on shapes,
// masks and the thread budget only, so an engine builds it once per step and
// runs it for every layer with that layer's buffers (cpu/run.hpp).
//
//   prefill  (many query rows): one task per block of (query head, query
//            tile) pairs under one KV head; the block shares each packed key
//            tile, and is sized to stay in cache (GQA heads share it too);
//   grouped  (n_q * group <= tile_q: decode and short chunks): the query rows
//            of all heads sharing a KV head form ONE tile, so K/V are packed
//            once for the whole group; a task runs a block of KV heads,
//            packing their key tiles token by token; if the rows see many
//            key tiles, the keys are cut into chunks (one task each) whose
//            partial results are merged through their LSE (merge.hpp) by
//            whichever chunk task finishes last.
//
// Tasks are ordered by visible work (key tiles x rows), largest first: causal
// and ISM rows grow with position, so equal row counts are not equal work.
// How tiles are grouped into tasks depends on the thread budget, but a row's
// arithmetic does not (query tiles sit at fixed positions, key chunks depend
// on shapes only), so results are bitwise identical for any thread count and
// any way of running the tasks.
#include <algorithm>
#include <limits>
#include <vector>

#include "ism/core/isa_vector.hpp"
#include "ism/core/shape.hpp"
#include "ism/cpu/simd/select.hpp"
#include "ism/cpu/workspace.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism::cpu {
// Everything here is per instruction set (core/isa.hpp), the task types too:
// the vectors of them are instantiated by every unit that plans.
inline namespace ISM_SIMD_NAMESPACE {

// Key chunks of the split (decode) path: a chunk holds at least this many key
// tiles (so per-chunk overhead stays small), and there are at most
// max_key_chunks chunks per KV head.
inline constexpr index_t min_chunk_tiles = 8;
inline constexpr index_t max_key_chunks = 32;

// Bytes of query tiles (their packed Q and output accumulators) a prefill
// task may group around each packed key tile. A group may outgrow a core's
// L2: a step streams its query tile's 2 x 64 x dim floats from L3 in far less
// time than its 4 x 64 x 64 x dim flops take, while every group repacks the
// key tiles from the cache (rows a page apart, the costlier reads); 2 MiB
// gives max_q_tiles tiles at dim 128 (measured 1-2.5% faster than 1 MiB).
inline constexpr index_t group_cache_bytes = index_t(2) << 20;

// How many tasks the plan aims for per thread, so dynamic hand-out can even
// out tasks of unequal cost.
inline constexpr index_t tasks_per_thread = 4;

struct Task {
  index_t problem;
  index_t kv_begin, kv_end;      // KV heads
  index_t head_begin, head_end;  // query heads (prefill; grouped: all of the KV heads')
  index_t tile_begin, tile_end;  // query tiles of tile_q rows (prefill)
  index_t key_begin, key_end;    // key tiles (grouped chunks); else all
  index_t chunk;    // chunk index within the split; -1: writes final output
  index_t merge;    // index into the merge list, or -1
  index_t cost;
};

// The key chunks of KV heads [kv_begin, kv_end) of one grouped problem, whose
// partial results are merged once every chunk is done.
struct MergeJob {
  index_t problem;
  index_t kv_begin, kv_end;
  index_t chunks;
  index_t offset;  // into the merge scratch
  index_t rows;
};

// Splits `total` units into the fewest groups of at most `most` units, then
// evens the groups out; returns the group size.
inline index_t even_split(index_t total, index_t most) {
  using ism::detail::ceil_div;
  return ceil_div(total, ceil_div(total, std::max<index_t>(1, most)));
}

class Schedule {
 public:
  Schedule() = default;

  // shapes[p] and bounds[p] for `count` problems (validated); `threads` is the
  // budget the tasks are sized for (any number of threads may run them).
  Schedule(const AttentionShape* shapes, const QueryBounds* bounds, index_t count, int threads) {
    using ism::detail::ceil_div;
    using S = simd::Native;
    constexpr index_t none = -1;
    const index_t all_tiles = std::numeric_limits<index_t>::max();
    const index_t want_tasks = tasks_per_thread * std::max(1, threads);
    isa_vector<index_t> tile_cost;
    for (index_t p = 0; p < count; ++p) {
      const AttentionShape& s = shapes[p];
      if (s.n_q == 0) continue;
      const QueryBounds& mask = bounds[p];
      const index_t rows = s.n_q * s.group;
      if (rows <= tile_q) {
        // Grouped: each KV head's rows form one tile. A task runs one key
        // chunk for a block of KV heads, packing each key tile for all of them
        // token by token (contiguous in a token-major cache); blocks are split
        // only as far as the threads need tasks. Chunks depend on shapes only.
        const KeyRange any = row_block_keys(mask, s.q_offset, s.q_offset + s.n_q, s.n_k).any;
        const index_t t0 = any.begin / tile_k, t1 = any.end > any.begin ? ceil_div(any.end, tile_k) : t0;
        const index_t nt = t1 - t0;
        const index_t chunks = std::min(max_key_chunks, std::max<index_t>(1, nt / min_chunk_tiles));
        index_t block = std::min(s.kv_heads, max_q_tiles);
        while (block > 1 && chunks * ceil_div(s.kv_heads, block) < want_tasks) block = ceil_div(block, 2);
        block = even_split(s.kv_heads, block);
        for (index_t g0 = 0; g0 < s.kv_heads; g0 += block) {
          const index_t g1 = std::min(s.kv_heads, g0 + block), heads_rows = (g1 - g0) * rows;
          const index_t h0 = g0 * s.group, h1 = g1 * s.group;
          if (chunks == 1) {
            tasks_.push_back({p, g0, g1, h0, h1, 0, 0, 0, all_tiles, none, none, std::max<index_t>(1, nt) * heads_rows});
            continue;
          }
          const index_t m = static_cast<index_t>(merges_.size());
          merges_.push_back({p, g0, g1, chunks, scratch_, heads_rows});
          scratch_ += chunks * heads_rows * (s.dim + 2);
          for (index_t c = 0; c < chunks; ++c) {
            const index_t b = t0 + nt * c / chunks, e = t0 + nt * (c + 1) / chunks;
            tasks_.push_back({p, g0, g1, h0, h1, 0, 0, b, e, c, m, (e - b) * heads_rows});
          }
        }
        continue;
      }
      // Prefill: a task is a block of (query head, query tile) pairs that
      // share one KV head, so each key tile is packed once for all of them:
      // up to group_cache_bytes of query tiles, fewer when the threads need
      // more tasks.
      const index_t q_tiles = ceil_div(s.n_q, tile_q);
      const index_t dp = ceil_div(s.dim, S::width) * S::width;
      const index_t fit = std::clamp<index_t>(group_cache_bytes / q_tile_bytes(dp), 1, max_q_tiles);
      index_t heads = std::min(s.group, fit), tiles = std::min(q_tiles, std::max<index_t>(1, fit / heads));
      auto task_count = [&] { return s.kv_heads * ceil_div(s.group, heads) * ceil_div(q_tiles, tiles); };
      while (task_count() < want_tasks && tiles > 1) tiles = ceil_div(tiles, 2);
      while (task_count() < want_tasks && heads > 1) heads = ceil_div(heads, 2);
      tiles = even_split(q_tiles, tiles);
      heads = even_split(s.group, heads);
      tile_cost.assign(static_cast<size_t>(q_tiles), 0);
      for (index_t t = 0; t < q_tiles; ++t) {
        const index_t r0 = t * tile_q, r1 = std::min(s.n_q, r0 + tile_q);
        const KeyRange any = row_block_keys(mask, s.q_offset + r0, s.q_offset + r1, s.n_k).any;
        const index_t nt = any.end > any.begin ? ceil_div(any.end, tile_k) - any.begin / tile_k : 0;
        tile_cost[static_cast<size_t>(t)] = std::max<index_t>(1, nt) * (r1 - r0);
      }
      for (index_t g = 0; g < s.kv_heads; ++g)
        for (index_t h0 = g * s.group; h0 < (g + 1) * s.group; h0 += heads)
          for (index_t t0 = 0; t0 < q_tiles; t0 += tiles) {
            const index_t h1 = std::min((g + 1) * s.group, h0 + heads), t1 = std::min(q_tiles, t0 + tiles);
            index_t cost = 0;
            for (index_t t = t0; t < t1; ++t) cost += tile_cost[static_cast<size_t>(t)];
            tasks_.push_back({p, g, g + 1, h0, h1, t0, t1, 0, all_tiles, none, none, cost * (h1 - h0)});
          }
    }
    std::stable_sort(tasks_.begin(), tasks_.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  }

  const std::vector<Task>& tasks() const { return tasks_; }
  const std::vector<MergeJob>& merges() const { return merges_; }
  // Floats of merge scratch a run needs: per merge job, chunks x rows x
  // (dim + 2) (each chunk's unnormalised output, max and sum).
  index_t scratch_floats() const { return scratch_; }

 private:
  std::vector<Task> tasks_;
  std::vector<MergeJob> merges_;
  index_t scratch_ = 0;
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
