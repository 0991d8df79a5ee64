// Planning cost next to the attention it plans. An engine builds one
// AttentionPlan per step (plan_request per sequence, then the plan) and runs
// it once per layer; planning must be negligible next to one layer's run.
//
// The step: D decode sequences of one row each against C-token caches, plus
// P prefill chunks of 512 rows (new queries after 1536, 3584, ... cached
// tokens), every sequence under its own ISM dialogue mask. With P = 0 the
// step is all decode, where attention is shortest and planning weighs most. GQA 32 query heads
// over 8 KV heads, head dim 128; fp32 Q and output, bf16 K/V in one page pool
// (16 tokens per page) shared by all sequences, pages interleaved between
// sequences as an engine's allocator leaves them.
//
// Case names (scenario = decode:<D>x<C>/prefill:<P>x512):
//   plan/build/<scenario>              plan_request for every sequence + AttentionPlan
//   plan/bind/<scenario>               AttentionPlan::bind: the per-layer checks of
//                                      the buffers against the plan (block tables included)
//   plan/run/<scenario>/threads:<t>    one layer: AttentionPlan::run on the pool
//     counters: flops (useful FLOP/s, as bench/baselines.hpp counts them) and
//     plan_fraction (the median planning time over the layer's time: what a
//     one-layer model would pay; an L-layer model pays 1/L of it per layer)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/plan.hpp"
#include "ism/kv/paged_cache.hpp"

namespace {

using namespace ism;
using namespace ism::bench;
using Bf16 = Eigen::bfloat16;

constexpr index_t kQHeads = 32, kKvHeads = 8, kDim = 128, kPage = 16, kChunk = 512;

struct Scenario {
  index_t decode, cache, prefill;
  std::string name() const {
    return "decode:" + std::to_string(decode) + "x" + std::to_string(cache) + "/prefill:" + std::to_string(prefill) +
           "x" + std::to_string(kChunk);
  }
};
const std::vector<Scenario> kScenarios{{16, 4096, 2}, {64, 1024, 2}, {16, 4096, 0}, {64, 1024, 0}};

// A dialogue of `length` tokens: 160-token queries and 96-token answers
// alternating, the last turn cut at `length` (a decode row lands in an
// answer or a query, as it happens).
SegmentMask dialogue_mask(index_t length, index_t last_query = 0) {
  SegmentMask m;
  const index_t history = length - last_query;
  for (index_t turn = 0; m.length() < history; ++turn) m.append({turn % 2 ? 96 : 160, turn % 2 ? Attend::Causal : Attend::Bidirectional});
  m.truncate(history);
  if (last_query > 0) m.append({last_query, Attend::Bidirectional});
  return m;
}

// The step's requests: shapes and masks, no buffers.
struct Step {
  std::vector<RequestShape> shapes;
  std::vector<SegmentMask> masks;
  explicit Step(const Scenario& s) {
    for (index_t i = 0; i < s.decode; ++i) {
      shapes.push_back({1, s.cache, kQHeads, kKvHeads, kDim, s.cache - 1});
      masks.push_back(dialogue_mask(s.cache));
    }
    for (index_t c = 0; c < s.prefill; ++c) {
      const index_t off = 1536 + 2048 * c;
      shapes.push_back({kChunk, off + kChunk, kQHeads, kKvHeads, kDim, off});
      masks.push_back(dialogue_mask(off + kChunk, kChunk));
    }
  }
  AttentionPlan plan(int threads) const {
    std::vector<PlanRequest> reqs;
    reqs.reserve(shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) reqs.push_back(plan_request(shapes[i], masks[i]));
    HostExecution budget;
    budget.threads = threads;
    return AttentionPlan(std::move(reqs), budget);
  }
  // Useful FLOPs of the step: visible (query, key) pairs of every request.
  double flops() const {
    double f = 0;
    for (size_t i = 0; i < shapes.size(); ++i)
      f += attention_flops(mask_stats(masks[i], shapes[i].n_q, shapes[i].n_k, shapes[i].q_offset), kQHeads, kDim);
    return f;
  }
};

// One layer's buffers: Q and out per request, K/V of every sequence in one
// page pool, filled a page at a time round-robin so block tables interleave.
struct LayerBuffers {
  PagedKVCache<Bf16> pool;
  std::vector<index_t> seqs;
  std::vector<std::vector<float>> q, out;

  static index_t pages_for(const Step& st) {
    index_t pages = 0;
    for (const RequestShape& s : st.shapes) pages += (s.n_k + kPage - 1) / kPage;
    return pages;
  }
  explicit LayerBuffers(const Step& st) : pool(pages_for(st), kPage, kKvHeads, kDim) {
    index_t longest = 0;
    for (const RequestShape& s : st.shapes) {
      seqs.push_back(pool.add_sequence());
      longest = std::max(longest, s.n_k);
      q.emplace_back(size_t(s.n_q * kQHeads * kDim));
      out.emplace_back(q.back().size());
      fill_random(q.back(), 7 + q.size());
    }
    std::vector<Bf16> k(size_t(kPage * kKvHeads * kDim)), v(k.size());
    for (index_t t = 0; t < longest; t += kPage)
      for (size_t i = 0; i < seqs.size(); ++i) {
        const index_t n = std::min(kPage, st.shapes[i].n_k - t);
        if (n <= 0) continue;
        fill_random(k, std::uint64_t(t) * 131 + i);
        fill_random(v, std::uint64_t(t) * 137 + i);
        pool.append(seqs[i], token_major<const Bf16>(k.data(), n, kKvHeads, kDim),
                    token_major<const Bf16>(v.data(), n, kKvHeads, kDim));
      }
  }
  std::vector<RequestBuffers<float, PagedKV<Bf16>>> buffers(const Step& st) {
    std::vector<RequestBuffers<float, PagedKV<Bf16>>> b;
    for (size_t i = 0; i < seqs.size(); ++i)
      b.push_back({token_major<const float>(q[i].data(), st.shapes[i].n_q, kQHeads, kDim), pool.view(seqs[i]),
                   token_major(out[i].data(), st.shapes[i].n_q, kQHeads, kDim), nullptr});
    return b;
  }
};

void run_build(benchmark::State& state, const Scenario& sc) {
  const Step st(sc);
  for (auto _ : state) {
    AttentionPlan plan = st.plan(2);
    benchmark::DoNotOptimize(plan.tasks());
  }
}

void run_bind(benchmark::State& state, const Scenario& sc) {
  const Step st(sc);
  AttentionPlan plan = st.plan(2);
  LayerBuffers layer(st);
  const auto buffers = layer.buffers(st);
  for (auto _ : state) {
    const auto bound = plan.bind(buffers, {});
    benchmark::DoNotOptimize(bound.tasks());
  }
}

// Median seconds of building the step's plan, outside the timed loop.
double median_plan_seconds(const Step& st, int threads) {
  std::vector<double> t;
  for (int i = 0; i < 21; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    AttentionPlan plan = st.plan(threads);
    benchmark::DoNotOptimize(plan.tasks());
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + 10, t.end());
  return t[10];
}

void run_layer(benchmark::State& state, const Scenario& sc, int threads) {
  const Step st(sc);
  AttentionPlan plan = st.plan(threads);
  LayerBuffers layer(st);
  const auto buffers = layer.buffers(st);
  AttentionOptions opt;
  opt.threads = threads;
  plan.run(buffers, opt);  // starts the pool's threads outside the timing
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    plan.run(buffers, opt);
    keep(layer.out.back());
  }
  const double layer_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(state.iterations());
  set_flops_counter(state, st.flops());
  state.counters["plan_fraction"] = benchmark::Counter(median_plan_seconds(st, threads) / layer_seconds);
}

}  // namespace

int main(int argc, char** argv) {
  // Planning first: these cases need no buffers, so a quick filtered run
  // (CI keeps the first three alive) stays quick.
  for (const Scenario& sc : kScenarios)
    register_case("plan/build/" + sc.name(), benchmark::kMicrosecond,
                  [=](benchmark::State& s) { run_build(s, sc); });
  for (const Scenario& sc : kScenarios)
    register_case("plan/bind/" + sc.name(), benchmark::kMicrosecond, [=](benchmark::State& s) { run_bind(s, sc); });
  for (const Scenario& sc : kScenarios)
    for (int t : {1, 2})
      register_case("plan/run/" + sc.name() + "/threads:" + std::to_string(t), benchmark::kMillisecond,
                    [=](benchmark::State& s) { run_layer(s, sc, t); });
  return run_benchmarks(argc, argv);
}
