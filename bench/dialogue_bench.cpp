// The paper's latency claim at the attention level: a dialogue of R rounds,
// each a user query segment (kQuery tokens) then an answer (kAnswer tokens)
// decoded one token at a time. One case per (scheme, round) times round r
// alone, the history of rounds 1..r-1 already in the KV cache:
//
//   ism      prefill only the new query rows against the cache (q_offset = the
//            history length), Bidirectional within the query segment, then
//            decode the answer one row per step. Earlier rows never change, so
//            the cache is reused as is (the reason ISM exists).
//   prefix   multi-turn prefix-LM: the prefix is the whole history plus the new
//            query, and a longer prefix changes what earlier rows see, so every
//            round recomputes attention over all history rows, then decodes.
//   causal   the floor: prefill the new query rows causally, then decode.
//
// Only attention is timed; in a model the prefix-LM would also recompute the
// K/V projections and MLPs of the whole history, so this understates its cost.
//
// Case names: dialogue/<scheme>/round:<r>/threads:<t>; counters prefill_ms and
// decode_ms split the round's latency, history is the cached tokens before it.
#include <chrono>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kQHeads = 32, kKvHeads = 8, kDim = 128;
constexpr index_t kQuery = 128, kAnswer = 64, kRounds = 16;
constexpr index_t kMaxTokens = kRounds * (kQuery + kAnswer);

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

// Shared buffers: the cache holds every token of the longest dialogue; query
// and output rows are the first rows of their buffers.
struct Buffers {
  AttentionData<float> data{kMaxTokens, kMaxTokens, kQHeads, kKvHeads, kDim};
  HeadsView<const float> q(index_t rows) const {
    return token_major<const float>(data.q_buf.data(), rows, kQHeads, kDim);
  }
  HeadsView<const float> k(index_t n) const { return token_major<const float>(data.k_buf.data(), n, kKvHeads, kDim); }
  HeadsView<const float> v(index_t n) const { return token_major<const float>(data.v_buf.data(), n, kKvHeads, kDim); }
  HeadsView<float> out(index_t rows) { return token_major<float>(data.out_buf.data(), rows, kQHeads, kDim); }
};

Buffers& buffers() {
  static Buffers b;
  return b;
}

// One round: prefill rows [first_row, query_end) against keys [0, query_end),
// then kAnswer decode steps, each one row against the cache up to itself.
// scheme.start() gives the round's masks: prefill(), then decode(j) per step
// (mask growth is timed with the attention, as an engine would pay it).
template <class Scheme>
void run_round(benchmark::State& state, index_t history, index_t first_row, int threads, const Scheme& scheme) {
  Buffers& b = buffers();
  const index_t query_end = history + kQuery;
  double prefill_ms = 0, decode_ms = 0;
  for (auto _ : state) {
    auto masks = scheme.start();
    AttentionOptions opt;
    opt.threads = threads;
    const Clock::time_point t0 = Clock::now();
    opt.q_offset = first_row;
    attention(b.q(query_end - first_row), b.k(query_end), b.v(query_end), b.out(query_end - first_row), masks.prefill(),
              opt);
    const Clock::time_point t1 = Clock::now();
    for (index_t j = 0; j < kAnswer; ++j) {
      const index_t p = query_end + j;
      opt.q_offset = p;
      attention(b.q(1), b.k(p + 1), b.v(p + 1), b.out(1), masks.decode(j), opt);
    }
    benchmark::DoNotOptimize(b.data.out_buf.data());
    benchmark::ClobberMemory();
    prefill_ms += ms_between(t0, t1);
    decode_ms += ms_between(t1, Clock::now());
  }
  state.counters["prefill_ms"] = benchmark::Counter(prefill_ms, benchmark::Counter::kAvgIterations);
  state.counters["decode_ms"] = benchmark::Counter(decode_ms, benchmark::Counter::kAvgIterations);
  state.counters["history"] = benchmark::Counter(double(history));
  state.counters["prefill_rows"] = benchmark::Counter(double(query_end - first_row));
}

// ISM: the layout grows by segments; the answer segment grows token by token.
struct IsmRound {
  SegmentMask history;
  struct Masks {
    SegmentMask m;
    const SegmentMask& prefill() {
      m.append({kQuery, Attend::Bidirectional});
      return m;
    }
    const SegmentMask& decode(index_t j) {
      if (j == 0)
        m.append({1, Attend::Causal});
      else
        m.extend_last(1);
      return m;
    }
  };
  Masks start() const { return {history}; }
};

struct CausalRound {
  struct Masks {
    CausalMask prefill() const { return causal_mask(); }
    CausalMask decode(index_t) const { return causal_mask(); }
  };
  Masks start() const { return {}; }
};

// Prefix-LM: everything up to the end of the new query is the prefix.
struct PrefixRound {
  index_t prefix;
  struct Masks {
    PrefixMask m;
    PrefixMask prefill() const { return m; }
    PrefixMask decode(index_t) const { return m; }
  };
  Masks start() const { return {prefix_mask(prefix)}; }
};

void run_scheme(benchmark::State& state, const std::string& scheme, index_t round, int threads) {
  const index_t history = (round - 1) * (kQuery + kAnswer);
  if (scheme == "ism") {
    IsmRound r;
    for (index_t i = 1; i < round; ++i)
      r.history.append({kQuery, Attend::Bidirectional}).append({kAnswer, Attend::Causal});
    run_round(state, history, history, threads, r);
  } else if (scheme == "causal") {
    run_round(state, history, history, threads, CausalRound{});
  } else {
    run_round(state, history, 0, threads, PrefixRound{history + kQuery});
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (const char* scheme : {"ism", "prefix", "causal"})
    for (index_t round = 1; round <= kRounds; ++round)
      for (int t : {1, 2}) {
        const std::string name =
            std::string("dialogue/") + scheme + "/round:" + std::to_string(round) + "/threads:" + std::to_string(t);
        register_case(name, benchmark::kMillisecond, [=](benchmark::State& s) { run_scheme(s, scheme, round, t); });
      }
  return run_benchmarks(argc, argv);
}
