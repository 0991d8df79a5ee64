#pragma once
// AttentionPlan: plan an engine step once, run it for every layer.
//
// An engine's step attends every live sequence once per layer, with the same
// shapes and masks in every layer. A plan takes those shapes and masks (no
// buffers), reads each request's key bounds out of its mask, and cuts the
// work into tasks (cpu/schedule.hpp); each layer then runs it on that layer's
// buffers, in one of three ways that give the same bits:
//
//   plan.run(buffers, opts)             the library's pool, or opts.parallel_for
//   plan.run(buffers, opts, ith, nth)   from each of an engine's nth workers
//                                       (ggml-style); all nth must call it
//   auto r = plan.bind(buffers, opts);  one task at a time, from anywhere:
//   r.run_task(i) for i in [0, r.tasks())
//
// Requests mix masks (ISM, causal, prefix, sliding windows: any policy),
// lengths, and offsets (prefill chunks next to decode rows). Buffers are
// checked against the plan on every run: a buffer of another shape is
// rejected, naming the request and the field, before anything is written.
//
// One run of a plan at a time: a plan owns the scratch its runs merge split
// keys in. Plans are cheap to build (O(query rows) to read the bounds, plus
// the task list) next to one layer's attention (bench/plan_bench.cpp).
#include <string>
#include <utility>
#include <vector>

#include "ism/attention/kv_checks.hpp"
#include "ism/core/isa_vector.hpp"
#include "ism/core/options.hpp"
#include "ism/core/validate.hpp"
#include "ism/cpu/run.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism {

// What a plan knows of one request: its shape, and (through plan_request) its
// mask. q_offset -1 means n_k - n_q (the queries are the cache's tail).
struct RequestShape {
  index_t n_q = 0;
  index_t n_k = 0;
  index_t q_heads = 0;
  index_t kv_heads = 0;
  index_t dim = 0;
  index_t q_offset = -1;
};

// A request read into plan form: its resolved shape and its rows' key bounds.
class PlanRequest {
 public:
  const AttentionShape& shape() const { return shape_; }
  QueryBounds bounds() const { return {lo_.data(), hi_.data(), shape_.q_offset, shape_.n_q}; }

 private:
  template <class Mask>
  friend PlanRequest plan_request(const RequestShape&, const Mask&);
  AttentionShape shape_;
  std::vector<index_t> lo_, hi_;
};

// Checks the shape and the mask's window, and reads the bounds of the rows.
template <class Mask>
PlanRequest plan_request(const RequestShape& r, const Mask& mask) {
  const char* where = "ism::plan_request";
  if (r.n_q < 0) detail::fail(where, "shape.n_q = ", r.n_q, " is negative");
  if (r.n_k < 0) detail::fail(where, "shape.n_k = ", r.n_k, " is negative");
  if (r.q_heads <= 0) detail::fail(where, "shape.q_heads = ", r.q_heads, " must be positive");
  if (r.kv_heads <= 0) detail::fail(where, "shape.kv_heads = ", r.kv_heads, " must be positive");
  if (r.dim <= 0) detail::fail(where, "shape.dim = ", r.dim, " must be positive");
  if (r.q_heads % r.kv_heads != 0)
    detail::fail(where, "shape.q_heads = ", r.q_heads, " is not a multiple of shape.kv_heads = ", r.kv_heads);
  if (r.q_offset < -1) detail::fail(where, "shape.q_offset = ", r.q_offset, " is negative (use -1 for the default)");
  PlanRequest p;
  AttentionShape& s = p.shape_;
  s.n_q = r.n_q;
  s.n_k = r.n_k;
  s.q_heads = r.q_heads;
  s.kv_heads = r.kv_heads;
  s.group = r.q_heads / r.kv_heads;
  s.dim = r.dim;
  s.q_offset = r.q_offset;
  if (s.q_offset == -1) {
    s.q_offset = r.n_k - r.n_q;
    if (s.q_offset < 0)
      detail::fail(where, "shape.n_q = ", r.n_q, " exceeds shape.n_k = ", r.n_k,
                   " (the default q_offset = n_k - n_q would be negative; set shape.q_offset)");
  }
  detail::check_window(where, mask, s.n_q, s.n_k, s.q_offset);
  p.lo_.resize(static_cast<size_t>(s.n_q));
  p.hi_.resize(static_cast<size_t>(s.n_q));
  fill_query_bounds(mask, s.n_q, s.n_k, s.q_offset, p.lo_.data(), p.hi_.data());
  return p;
}

// The buffers of one request for one run: Q and out of one element type, K
// and V from a KV source (ContiguousKV<TK>, PagedKV<TK, I>) of another or the
// same type.
template <class TQ, class KV>
struct RequestBuffers {
  HeadsView<const TQ> q;
  KV kv;
  HeadsView<TQ> out;
  float* lse = nullptr;  // optional [q_heads][n_q]
};

inline namespace ISM_SIMD_NAMESPACE {

class AttentionPlan;

// A plan bound to one run's buffers and options, checked. Runs task i with
// run_task(i); every task in [0, tasks()) must run exactly once for the run to
// complete, from any threads, in any order.
template <class TQ, class KV>
class BoundRun {
 public:
  index_t tasks() const { return static_cast<index_t>(schedule_->tasks().size()); }
  void run_task(index_t i) const {
    if (i < 0 || i >= tasks())
      detail::fail("ism::BoundRun::run_task", "task i = ", i, " is outside [0, ", tasks(), ")");
    cpu::run_task(*schedule_, *state_, problems_.data(), mods_, i);
  }
  // Thread ith of nth runs its share (all nth must call it).
  void run_share(index_t ith, index_t nth) const {
    check_share("ism::BoundRun::run_share", ith, nth);
    cpu::run_share(*schedule_, *state_, problems_.data(), mods_, ith, nth);
  }
  // Every task, on the library's pool or `exec.parallel_for`.
  void run_all(const HostExecution& exec) const {
    cpu::run_all(*schedule_, *state_, problems_.data(), mods_, exec);
  }

 private:
  friend class AttentionPlan;
  static void check_share(const char* where, index_t ith, index_t nth) {
    if (nth <= 0 || ith < 0 || ith >= nth) detail::fail(where, "ith = ", ith, ", nth = ", nth, ": need 0 <= ith < nth");
  }
  BoundRun(const cpu::Schedule* s, cpu::RunState* st, std::vector<cpu::Problem<TQ, KV>> p, cpu::ScoreMods m)
      : schedule_(s), state_(st), problems_(std::move(p)), mods_(m) {}
  const cpu::Schedule* schedule_;
  cpu::RunState* state_;
  std::vector<cpu::Problem<TQ, KV>> problems_;
  cpu::ScoreMods mods_;
};

class AttentionPlan {
 public:
  AttentionPlan() = default;
  // `budget` says how many threads the tasks are cut for (threads, or 0 for
  // the library default; with a parallel_for, the library default): runs may
  // use any number of threads, with the same results.
  explicit AttentionPlan(std::vector<PlanRequest> requests, const HostExecution& budget = {})
      : requests_(std::move(requests)) {
    if (budget.threads < 0)
      detail::fail("ism::AttentionPlan", "budget.threads = ", budget.threads, " is negative (0: the library default)");
    const int threads = budget.threads > 0 && !budget.parallel_for ? budget.threads : cpu::default_threads();
    // Per-ISA containers (core/isa_vector.hpp): their code is this unit's own.
    isa_vector<AttentionShape> shapes;
    isa_vector<QueryBounds> bounds;
    for (const PlanRequest& r : requests_) {
      shapes.push_back(r.shape());
      bounds.push_back(r.bounds());
    }
    schedule_ = cpu::Schedule(shapes.data(), bounds.data(), static_cast<index_t>(shapes.size()), threads);
    state_ = cpu::RunState(schedule_);
  }
  AttentionPlan(AttentionPlan&&) = default;
  AttentionPlan& operator=(AttentionPlan&&) = default;

  index_t size() const { return static_cast<index_t>(requests_.size()); }
  const PlanRequest& request(index_t i) const {
    if (i < 0 || i >= size()) detail::fail("ism::AttentionPlan::request", "i = ", i, " is outside [0, ", size(), ")");
    return requests_[static_cast<size_t>(i)];
  }
  index_t tasks() const { return static_cast<index_t>(schedule_.tasks().size()); }

  // Checks the buffers against the plan and the options (scale, softcap,
  // sinks, ALiBi; q_offset and lse must stay at their defaults: each request
  // has its own), and binds them for one run.
  template <class TQ, class KV>
  BoundRun<TQ, KV> bind(const RequestBuffers<TQ, KV>* buffers, index_t count, const AttentionOptions& opt) {
    const char* where = "ism::AttentionPlan::run";
    if (count != size()) detail::fail(where, "got ", count, " request buffers for a plan of ", size(), " requests");
    if (count > 0 && buffers == nullptr) detail::fail(where, "buffers is null with count = ", count);
    if (opt.q_offset != -1)
      detail::fail(where, "options.q_offset = ", opt.q_offset, " must be -1 (each planned request has its own)");
    if (opt.lse != nullptr) detail::fail(where, "options.lse must be null (set each request's lse)");
    std::vector<cpu::Problem<TQ, KV>> problems;
    problems.reserve(static_cast<size_t>(count));
    isa_vector<detail::RequestSpans> spans;
    spans.reserve(static_cast<size_t>(count));
    for (index_t i = 0; i < count; ++i) {
      const RequestBuffers<TQ, KV>& b = buffers[i];
      const PlanRequest& r = requests_[static_cast<size_t>(i)];
      check_matches(where, i, b, r.shape());
      AttentionOptions o = opt;
      o.q_offset = r.shape().q_offset;
      o.lse = b.lse;
      const QueryBounds bounds = r.bounds();
      const detail::CheckedCall c = detail::check_call(where, b.q, b.kv, b.out, bounds, o);
      problems.push_back({b.q, b.kv, b.out, b.lse, c.shape, bounds});
      spans.push_back(c.spans);
    }
    if (count > 1) detail::check_requests_disjoint(where, spans);
    return BoundRun<TQ, KV>(&schedule_, &state_, std::move(problems),
                            cpu::ScoreMods{opt.softcap, opt.sinks, opt.alibi_slopes});
  }
  template <class TQ, class KV>
  BoundRun<TQ, KV> bind(const std::vector<RequestBuffers<TQ, KV>>& buffers, const AttentionOptions& opt) {
    return bind(buffers.data(), static_cast<index_t>(buffers.size()), opt);
  }

  // Runs on the library's pool with opt.threads threads, or through
  // opt.parallel_for. A run that throws (the caller's parallel_for, an
  // allocation failure inside a task) resets the plan's run state before the
  // exception leaves, so the next run starts clean.
  template <class TQ, class KV>
  void run(const std::vector<RequestBuffers<TQ, KV>>& buffers, const AttentionOptions& opt = {}) {
    const BoundRun<TQ, KV> bound = bind(buffers, opt);
    try {
      bound.run_all(opt);
    } catch (...) {
      state_.reset();
      throw;
    }
  }
  // Thread ith of an engine's nth workers; every one of them calls this with
  // the same buffers and options, and the run is complete when all returned.
  template <class TQ, class KV>
  void run(const std::vector<RequestBuffers<TQ, KV>>& buffers, const AttentionOptions& opt, index_t ith,
           index_t nth) {
    BoundRun<TQ, KV>::check_share("ism::AttentionPlan::run", ith, nth);
    bind(buffers, opt).run_share(ith, nth);
  }
  // Split-key merges count finished chunks in the plan's run state, which is
  // why one plan serves one run at a time. After a shared run (run(..., ith,
  // nth), BoundRun) in which a task threw, call reset() once every worker has
  // returned and before the plan runs again; run(buffers, opt) does it itself.
  void reset() { state_.reset(); }

 private:
  template <class TQ, class KV>
  static void check_matches(const char* where, index_t i, const RequestBuffers<TQ, KV>& b, const AttentionShape& s) {
    auto same = [&](const char* field, index_t got, const char* plan_field, index_t want) {
      if (got != want)
        detail::fail(where, "requests[", i, "].", field, " = ", got, " differs from the plan's ", plan_field, " = ",
                     want, " (a plan runs only on buffers of the shapes it was built for)");
    };
    same("q.tokens", b.q.tokens, "n_q", s.n_q);
    same("q.heads", b.q.heads, "q_heads", s.q_heads);
    same("q.dim", b.q.dim, "dim", s.dim);
    same("out.tokens", b.out.tokens, "n_q", s.n_q);
    same("out.heads", b.out.heads, "q_heads", s.q_heads);
    same("out.dim", b.out.dim, "dim", s.dim);
    same("kv.tokens", b.kv.tokens(), "n_k", s.n_k);
    same("kv.heads", b.kv.heads(), "kv_heads", s.kv_heads);
    same("kv.dim", b.kv.dim(), "dim", s.dim);
  }

  std::vector<PlanRequest> requests_;
  cpu::Schedule schedule_;
  cpu::RunState state_;
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
