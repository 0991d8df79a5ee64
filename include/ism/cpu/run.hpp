#pragma once
// Planning and scheduling: turns one or many attention problems into
// independent tasks, runs them through a parallel-for, then merges split keys.
//
//   prefill  (many query rows): one task per (query head, group of up to
//            max_q_tiles query tiles that share each packed key tile);
//   grouped  (n_q * group <= tile_q: decode and short chunks): the query rows
//            of all heads sharing a KV head form ONE tile, so K/V are packed
//            once for the whole group; if the rows see many key tiles, the
//            keys are cut into chunks (one task each) whose partial results
//            are merged through their LSE (merge.hpp).
//
// Tasks are ordered by visible work (key tiles x rows), largest first, and
// handed out dynamically: causal and ISM rows grow with position, so equal
// row counts are not equal work. The plan depends on the shapes only, never on
// the thread count, so results are bitwise identical for any thread count.
#include <algorithm>
#include <vector>

#include "ism/attention/options.hpp"
#include "ism/attention/validate.hpp"
#include "ism/cpu/kernel.hpp"
#include "ism/cpu/merge.hpp"
#include "ism/cpu/threads.hpp"

namespace ism::cpu {

// Key chunks of the split (decode) path: a chunk holds at least this many key
// tiles (so per-chunk overhead stays small), and there are at most
// max_key_chunks chunks per KV head.
inline constexpr index_t min_chunk_tiles = 8;
inline constexpr index_t max_key_chunks = 32;

inline namespace ISM_SIMD_NAMESPACE {

// One problem of a (possibly batched) call, already validated.
template <class T, class KV, class Mask>
struct Problem {
  HeadsView<const T> q;
  KV kv;
  HeadsView<T> out;
  const Mask* mask;
  float* lse;
  AttentionShape shape;
};

struct Task {
  index_t problem;
  index_t head;        // query head (prefill) or KV head (grouped)
  index_t row0, row1;  // query rows (prefill)
  index_t tile_begin, tile_end;  // key tiles (grouped chunks); else all
  index_t chunk;    // chunk index within the split; -1: writes final output
  index_t merge;    // index into the merge list, or -1
  index_t cost;
};

struct MergeJob {
  index_t problem;
  index_t kv_head;
  index_t chunks;
  index_t offset;  // into the scratch buffer
  index_t rows;
};

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

template <class T, class KV, class Mask>
void run_problems(const Problem<T, KV, Mask>* problems, index_t count, const AttentionOptions& opt) {
  using S = simd::Native;
  std::vector<Task> tasks;
  std::vector<MergeJob> merges;
  index_t scratch_size = 0;
  constexpr index_t none = -1;
  const index_t all_tiles = std::numeric_limits<index_t>::max();

  for (index_t p = 0; p < count; ++p) {
    const AttentionShape& s = problems[p].shape;
    if (s.n_q == 0) continue;
    const Mask& mask = *problems[p].mask;
    const index_t rows = s.n_q * s.group;
    if (rows <= tile_q) {
      const KeyRange any = row_block_keys(mask, s.q_offset, s.q_offset + s.n_q, s.n_k).any;
      const index_t t0 = any.begin / tile_k, t1 = any.end > any.begin ? ceil_div(any.end, tile_k) : t0;
      const index_t nt = t1 - t0;
      const index_t chunks = std::min(max_key_chunks, std::max<index_t>(1, nt / min_chunk_tiles));
      for (index_t g = 0; g < s.kv_heads; ++g) {
        if (chunks == 1) {
          tasks.push_back({p, g, 0, 0, 0, all_tiles, none, none, std::max<index_t>(1, nt) * rows});
          continue;
        }
        const index_t m = static_cast<index_t>(merges.size());
        merges.push_back({p, g, chunks, scratch_size, rows});
        scratch_size += chunks * rows * (s.dim + 2);
        for (index_t c = 0; c < chunks; ++c) {
          const index_t b = t0 + nt * c / chunks, e = t0 + nt * (c + 1) / chunks;
          tasks.push_back({p, g, 0, 0, b, e, c, m, (e - b) * rows});
        }
      }
    } else {
      // Groups of g query tiles share each packed key tile; g shrinks for
      // small problems so there are still enough tasks to spread.
      const index_t q_tiles = ceil_div(s.n_q, tile_q);
      const index_t g = std::clamp<index_t>(q_tiles * s.q_heads / 16, 1, max_q_tiles);
      for (index_t r0 = 0; r0 < s.n_q; r0 += g * tile_q) {
        const index_t r1 = std::min(s.n_q, r0 + g * tile_q);
        index_t cost = 0;
        for (index_t t0 = r0; t0 < r1; t0 += tile_q) {
          const index_t t1 = std::min(r1, t0 + tile_q);
          const KeyRange any = row_block_keys(mask, s.q_offset + t0, s.q_offset + t1, s.n_k).any;
          const index_t nt = any.end > any.begin ? ceil_div(any.end, tile_k) - any.begin / tile_k : 0;
          cost += std::max<index_t>(1, nt) * (t1 - t0);
        }
        for (index_t h = 0; h < s.q_heads; ++h) tasks.push_back({p, h, r0, r1, 0, all_tiles, none, none, cost});
      }
    }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  std::vector<float> scratch(static_cast<size_t>(scratch_size));

  // The rows of a grouped tile: every query head of KV head g, every row.
  auto grouped_rows = [&](const Problem<T, KV, Mask>& pr, index_t g, TileRow<T>* rows) {
    const AttentionShape& s = pr.shape;
    index_t n = 0;
    for (index_t hh = 0; hh < s.group; ++hh) {
      const index_t h = g * s.group + hh;
      for (index_t t = 0; t < s.n_q; ++t)
        rows[n++] = {pr.q.row(t, h), pr.out.row(t, h), pr.lse ? pr.lse + h * s.n_q + t : nullptr, s.q_offset + t};
    }
    return n;
  };

  parallel_for(opt, static_cast<index_t>(tasks.size()), [&](index_t i) {
    const Task& task = tasks[static_cast<size_t>(i)];
    const Problem<T, KV, Mask>& pr = problems[task.problem];
    const AttentionShape& s = pr.shape;
    TileRow<T> rows[max_q_tiles * tile_q];
    if (task.merge == none && s.n_q * s.group > tile_q) {
      const index_t h = task.head;
      index_t n = 0;
      for (index_t t = task.row0; t < task.row1; ++t)
        rows[n++] = {pr.q.row(t, h), pr.out.row(t, h), pr.lse ? pr.lse + h * s.n_q + t : nullptr, s.q_offset + t};
      attend_rows<S>(rows, n, 1, pr.kv, h / s.group, *pr.mask, s.n_k, s.dim, s.scale, task.tile_begin,
                     task.tile_end, nullptr);
      return;
    }
    const index_t n = grouped_rows(pr, task.head, rows);
    if (task.merge == none) {
      attend_rows<S>(rows, n, s.group, pr.kv, task.head, *pr.mask, s.n_k, s.dim, s.scale, task.tile_begin,
                     task.tile_end, nullptr);
      return;
    }
    const MergeJob& mj = merges[static_cast<size_t>(task.merge)];
    float* base = scratch.data() + mj.offset;
    const PartialState st{base + task.chunk * n * s.dim, base + mj.chunks * n * s.dim + task.chunk * n,
                          base + mj.chunks * n * (s.dim + 1) + task.chunk * n};
    attend_rows<S>(rows, n, s.group, pr.kv, task.head, *pr.mask, s.n_k, s.dim, s.scale, task.tile_begin,
                   task.tile_end, &st);
  });

  parallel_for(opt, static_cast<index_t>(merges.size()), [&](index_t i) {
    const MergeJob& mj = merges[static_cast<size_t>(i)];
    const Problem<T, KV, Mask>& pr = problems[mj.problem];
    TileRow<T> rows[tile_q];
    const index_t n = grouped_rows(pr, mj.kv_head, rows);
    const float* base = scratch.data() + mj.offset;
    merge_chunks<T>(rows, n, pr.shape.dim, mj.chunks, base, base + mj.chunks * n * pr.shape.dim,
                    base + mj.chunks * n * (pr.shape.dim + 1));
  });
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
