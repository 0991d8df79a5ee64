#pragma once
// Running a schedule (schedule.hpp) on a batch of typed problems: one task at
// a time, from any thread, in any order. The chunks of a split (decode) row
// block are merged by whichever of its chunk tasks finishes last, so a run is
// one flat set of tasks with no barrier inside: the library's pool, a
// caller's parallel-for, or a caller's own workers asking for their share
// (ith of nth) all run it the same way, and give the same bits.
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "ism/core/isa_vector.hpp"
#include "ism/core/options.hpp"
#include "ism/cpu/kernel.hpp"
#include "ism/cpu/merge.hpp"
#include "ism/cpu/problem.hpp"
#include "ism/cpu/schedule.hpp"
#include "ism/cpu/threads.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// What one run of a schedule writes besides the outputs: the merge scratch
// and, per merge job, a count of finished chunks. Counts only grow (a job
// merges when its count reaches a multiple of its chunks), so a completed run
// leaves the state ready for the next one; reset() after a run that threw.
class RunState {
 public:
  RunState() = default;
  explicit RunState(const Schedule& s)
      : scratch_(static_cast<size_t>(s.scratch_floats())),
        done_(s.merges().empty() ? nullptr : new std::atomic<index_t>[s.merges().size()]),
        merges_(s.merges().size()) {
    reset();
  }
  void reset() {
    for (size_t m = 0; m < merges_; ++m) done_[m].store(0, std::memory_order_relaxed);
  }
  float* scratch() { return scratch_.data(); }
  // Marks one chunk of merge job m done; true for the chunk that completes it.
  bool finish_chunk(index_t m, index_t chunks) {
    return (done_[static_cast<size_t>(m)].fetch_add(1, std::memory_order_acq_rel) + 1) % chunks == 0;
  }

 private:
  isa_vector<float> scratch_;
  std::unique_ptr<std::atomic<index_t>[]> done_;
  size_t merges_ = 0;
};

// Up to max_q_tiles full tiles of rows: on the heap, not the caller's thread
// stack, one per thread and element type, reused by every later task.
template <class T>
std::vector<TileRow<T>>& thread_rows() {
  static thread_local std::vector<TileRow<T>> rows(static_cast<size_t>(max_q_tiles * tile_q));
  return rows;
}

// The rows of grouped KV heads [g0, g1): per KV head one tile of every query
// head of that KV head, every row.
template <class TQ, class KV>
index_t grouped_rows(const Problem<TQ, KV>& pr, index_t g0, index_t g1, TileRow<TQ>* rows, TileSpan* spans) {
  const AttentionShape& s = pr.shape;
  index_t n = 0;
  for (index_t g = g0; g < g1; ++g) {
    spans[g - g0] = {n, s.n_q * s.group, g};
    for (index_t hh = 0; hh < s.group; ++hh) {
      const index_t h = g * s.group + hh;
      for (index_t t = 0; t < s.n_q; ++t)
        rows[n++] = {pr.q.row(t, h), pr.out.row(t, h), pr.lse ? pr.lse + h * s.n_q + t : nullptr, s.q_offset + t, h};
    }
  }
  return n;
}

// Runs task i of the schedule.
template <class TQ, class KV>
void run_task(const Schedule& sch, RunState& state, const Problem<TQ, KV>* problems, const ScoreMods& mods,
              index_t i) {
  using S = simd::Native;
  const Task& task = sch.tasks()[static_cast<size_t>(i)];
  const Problem<TQ, KV>& pr = problems[task.problem];
  const AttentionShape& s = pr.shape;
  std::vector<TileRow<TQ>>& rows = thread_rows<TQ>();
  TileSpan spans[max_q_tiles];
  if (task.merge < 0 && s.n_q * s.group > tile_q) {
    index_t n = 0, n_tiles = 0;
    for (index_t h = task.head_begin; h < task.head_end; ++h)
      for (index_t t = task.tile_begin; t < task.tile_end; ++t) {
        const index_t r0 = t * tile_q, r1 = std::min(s.n_q, r0 + tile_q);
        spans[n_tiles++] = {n, r1 - r0, task.kv_begin};
        for (index_t r = r0; r < r1; ++r)
          rows[static_cast<size_t>(n++)] = {pr.q.row(r, h), pr.out.row(r, h),
                                            pr.lse ? pr.lse + h * s.n_q + r : nullptr, s.q_offset + r, h};
      }
    attend_rows<S>(rows.data(), spans, n_tiles, 1, pr.kv, pr.bounds, s.n_k, s.dim, s.scale, task.key_begin,
                   task.key_end, nullptr, mods);
    return;
  }
  const index_t n = grouped_rows(pr, task.kv_begin, task.kv_end, rows.data(), spans);
  const index_t n_tiles = task.kv_end - task.kv_begin;
  if (task.merge < 0) {
    attend_rows<S>(rows.data(), spans, n_tiles, s.group, pr.kv, pr.bounds, s.n_k, s.dim, s.scale, task.key_begin,
                   task.key_end, nullptr, mods);
    return;
  }
  const MergeJob& mj = sch.merges()[static_cast<size_t>(task.merge)];
  float* base = state.scratch() + mj.offset;
  float* const o = base;
  float* const m = base + mj.chunks * n * s.dim;
  float* const l = m + mj.chunks * n;
  const PartialState part{o + task.chunk * n * s.dim, m + task.chunk * n, l + task.chunk * n};
  attend_rows<S>(rows.data(), spans, n_tiles, s.group, pr.kv, pr.bounds, s.n_k, s.dim, s.scale, task.key_begin,
                 task.key_end, &part, mods);
  if (state.finish_chunk(task.merge, mj.chunks)) {
    float w[max_key_chunks];
    merge_chunks<TQ>(rows.data(), n, s.dim, mj.chunks, o, m, l, mods.sinks, w);
  }
}

// Every task, through the caller's parallel-for or the library's pool.
template <class TQ, class KV>
void run_all(const Schedule& sch, RunState& state, const Problem<TQ, KV>* problems, const ScoreMods& mods,
             const HostExecution& exec) {
  parallel_for(exec, static_cast<index_t>(sch.tasks().size()),
               [&](index_t i) { run_task(sch, state, problems, mods, i); });
}

// Thread ith of nth runs its share of the tasks: they are dealt in a snake
// order (0..nth-1, then nth-1..0, ...) over the cost-sorted list, so every
// thread gets a mix of large and small tasks. All nth threads must call this
// for the run to complete; nothing is shared between them but the merges.
template <class TQ, class KV>
void run_share(const Schedule& sch, RunState& state, const Problem<TQ, KV>* problems, const ScoreMods& mods,
               index_t ith, index_t nth) {
  const index_t n = static_cast<index_t>(sch.tasks().size());
  for (index_t round = 0; round * nth < n; ++round) {
    const index_t i = round * nth + (round % 2 == 0 ? ith : nth - 1 - ith);
    if (i < n) run_task(sch, state, problems, mods, i);
  }
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
