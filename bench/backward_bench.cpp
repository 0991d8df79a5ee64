// Training with ISM: the fused backward pass (issue 15), side by side in one
// run, and the paper's training claim at the attention level.
//
// Kernel cases (fp32, H=8, D=128, one KV head per query head, q = k = N):
//   backward/fwdbwd/<mask>/N:<n>/threads:<t>   ism::attention (with LSE) then
//                                              ism::attention_backward
//   backward/bwd/<mask>/N:<n>/threads:<t>      the backward pass alone
//   backward/sgemm/<blas>/square:2048/threads:<t>  the machine's SGEMM rate
// with mask none | causal | ism16. Counter flops = useful FLOP/s counted as
// the issue says: the backward does 2.5x the forward's products, so
//   forward + backward = 3.5 x 4 x dim x visible pairs x heads,
//   backward alone     = 2.5 x 4 x dim x visible pairs x heads.
//
// Dialogue cases (the paper's claim; fp32, H=4, D=64): a T-round dialogue,
// queries of 64-256 tokens and answers of 128-512 (fixed pseudo-random
// lengths, round t's the same for every T), forward + backward for every
// answer token:
//   train/ism/T:<T>/threads:<t>     once, ISM over the whole dialogue;
//   train/prefix/T:<T>/threads:<t>  the T samples a prefix-LM needs: sample t
//                                   is rounds 1..t-1 and query t as the
//                                   bidirectional prefix, answer t causal.
// Counters: pairs = visible (query, key) pairs per iteration, tokens.
//
// Run (the acceptance set; see bench/train_report.py for PyTorch beside it):
//   OPENBLAS_CORETYPE=SkylakeX build/bench/backward_bench --benchmark_filter='backward/'
//     --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//     --benchmark_report_aggregates_only=true
//   build/bench/backward_bench --benchmark_filter='train/' --benchmark_min_time=0.01s
// The summary (medians when repetitions are on) prints fwd+bwd GFLOP/s over
// SGEMM at the same thread count (target >= 0.6) and the dialogue table.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"
#include "ism/attention/backward.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kHeads = 8, kDim = 128, kSquare = 2048;
const std::vector<index_t> kLengths{2048, 4096};
const std::vector<std::string> kMasks{"none", "causal", "ism16"};

// Everything one forward + backward call reads and writes.
struct TrainData {
  AttentionData<float> fwd;
  std::vector<float> dout_buf, dq_buf, dk_buf, dv_buf, lse;
  TrainData(index_t n, index_t heads, index_t dim)
      : fwd(n, n, heads, heads, dim),
        dout_buf(size_t(n * heads * dim)),
        dq_buf(dout_buf.size()),
        dk_buf(dout_buf.size()),
        dv_buf(dout_buf.size()),
        lse(size_t(n * heads)) {
    fill_random(dout_buf, 7);
  }
  HeadsView<const float> out() { return as_const(fwd.out()); }
  HeadsView<const float> dout() const { return token_major<const float>(dout_buf.data(), fwd.n_q, fwd.q_heads, fwd.dim); }
  HeadsView<float> dq() { return token_major<float>(dq_buf.data(), fwd.n_q, fwd.q_heads, fwd.dim); }
  HeadsView<float> dk() { return token_major<float>(dk_buf.data(), fwd.n_k, fwd.kv_heads, fwd.dim); }
  HeadsView<float> dv() { return token_major<float>(dv_buf.data(), fwd.n_k, fwd.kv_heads, fwd.dim); }

  template <class Mask>
  void forward(const Mask& mask, const AttentionOptions& opt) {
    AttentionOptions o = opt;
    o.lse = lse.data();
    attention<float>(fwd.q(), fwd.k(), fwd.v(), fwd.out(), mask, o);
  }
  template <class Mask>
  void backward(const Mask& mask, const AttentionOptions& opt) {
    attention_backward<float>(fwd.q(), fwd.k(), fwd.v(), out(), dout(), lse.data(), dq(), dk(), dv(), mask, opt);
  }
};

void kernel_case(benchmark::State& state, const std::string& kind, index_t n, int threads, bool with_forward) {
  TrainData data(n, kHeads, kDim);
  with_mask(kind, n, [&](const auto& mask) {
    AttentionOptions opt;
    opt.threads = threads;
    opt.q_offset = 0;
    if (!with_forward) data.forward(mask, opt);
    for (auto _ : state) {
      if (with_forward) data.forward(mask, opt);
      data.backward(mask, opt);
      keep(data.dq_buf);
      keep(data.dk_buf);
      keep(data.dv_buf);
    }
    const BlockMapStats s = mask_stats(mask, n, n, 0);
    const double flops = (with_forward ? 3.5 : 2.5) * attention_flops(s, kHeads, kDim);
    state.counters["flops"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["skipped"] = benchmark::Counter(s.skipped_fraction());
  });
}

std::string kernel_name(const std::string& what, const std::string& mask, index_t n, int threads) {
  return "backward/" + what + "/" + mask + "/N:" + std::to_string(n) + "/threads:" + std::to_string(threads);
}

// --- The dialogue ------------------------------------------------------------

constexpr index_t kDlgHeads = 4, kDlgDim = 64, kMaxRounds = 16;

// Round t's query and answer lengths (t from 0): fixed pseudo-random values
// in [64, 256] and [128, 512], the same for every dialogue length.
index_t query_len(index_t t) { return 64 + (t * 2654435761u + 12345u) % 193; }
index_t answer_len(index_t t) { return 128 + (t * 40503u + 977u) % 385; }

// Boundaries {0, q1, q1 + a1, ...} of the first T rounds.
std::vector<index_t> dialogue_boundaries(index_t rounds) {
  std::vector<index_t> b{0};
  for (index_t t = 0; t < rounds; ++t) {
    b.push_back(b.back() + query_len(t));
    b.push_back(b.back() + answer_len(t));
  }
  return b;
}

template <class Mask>
index_t visible_pairs(const Mask& mask, index_t n) {
  index_t p = 0;
  for (index_t i = 0; i < n; ++i) p += visible_keys(mask, i, n).size();
  return p;
}

void dialogue_case(benchmark::State& state, bool ism_scheme, index_t rounds, int threads) {
  const std::vector<index_t> b = dialogue_boundaries(rounds);
  const index_t n = b.back();
  // One buffer set of the whole dialogue: sample t of the prefix-LM is its
  // first b[2t] tokens (the rounds' tokens are the same in both schemes).
  TrainData data(n, kDlgHeads, kDlgDim);
  AttentionOptions opt;
  opt.threads = threads;
  opt.q_offset = 0;
  index_t pairs = 0, tokens = 0;
  if (ism_scheme) {
    const SegmentMask mask = ism_mask(b);
    pairs = visible_pairs(mask, n);
    tokens = n;
    for (auto _ : state) {
      data.forward(mask, opt);
      data.backward(mask, opt);
      keep(data.dq_buf);
    }
  } else {
    std::vector<PrefixMask> masks;
    for (index_t t = 1; t <= rounds; ++t) {
      masks.push_back(prefix_mask(b[size_t(2 * t - 1)]));
      pairs += visible_pairs(masks.back(), b[size_t(2 * t)]);
      tokens += b[size_t(2 * t)];
    }
    for (auto _ : state) {
      for (index_t t = 1; t <= rounds; ++t) {
        const index_t len = b[size_t(2 * t)];
        TrainData& d = data;  // sample t is the dialogue's first len tokens
        auto rows = [&](auto view, index_t tokens_) {
          view.tokens = tokens_;
          return view;
        };
        AttentionOptions o = opt;
        o.lse = d.lse.data();
        // Sample t: the first len tokens; its LSE [heads][len] at the front.
        attention<float>(rows(d.fwd.q(), len), rows(d.fwd.k(), len), rows(d.fwd.v(), len), rows(d.fwd.out(), len),
                         masks[size_t(t - 1)], o);
        attention_backward<float>(rows(d.fwd.q(), len), rows(d.fwd.k(), len), rows(d.fwd.v(), len),
                                  rows(d.out(), len), rows(d.dout(), len), d.lse.data(), rows(d.dq(), len),
                                  rows(d.dk(), len), rows(d.dv(), len), masks[size_t(t - 1)], opt);
      }
      keep(data.dq_buf);
    }
  }
  state.counters["pairs"] = benchmark::Counter(double(pairs));
  state.counters["tokens"] = benchmark::Counter(double(tokens));
  state.counters["flops"] =
      benchmark::Counter(3.5 * 4.0 * kDlgDim * double(pairs) * kDlgHeads, benchmark::Counter::kIsIterationInvariantRate);
}

std::string dialogue_name(const char* scheme, index_t rounds, int threads) {
  return std::string("train/") + scheme + "/T:" + std::to_string(rounds) + "/threads:" + std::to_string(threads);
}

// --- Summary -------------------------------------------------------------------

// Each case's real time per iteration (the median when repetitions are on)
// and its counters.
class Collector : public benchmark::ConsoleReporter {
 public:
  struct Row {
    double seconds = 0;
    std::map<std::string, double> counters;
    bool median = false;
  };
  std::map<std::string, Row> rows;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type == Run::RT_Aggregate && !median) continue;
      Row& row = rows[r.run_name.function_name];
      if (row.median && !median) continue;
      row.seconds = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      for (const auto& [k, c] : r.counters) row.counters[k] = double(c);
      row.median = median;
    }
  }
  const Row* find(const std::string& key) const {
    const auto it = rows.find(key);
    return it == rows.end() ? nullptr : &it->second;
  }
};

void summary(const Collector& c) {
  bool kernel = false, dialogue = false;
  for (const auto& [key, row] : c.rows) {
    kernel = kernel || key.rfind("backward/fwdbwd/", 0) == 0;
    dialogue = dialogue || key.rfind("train/", 0) == 0;
  }
  if (kernel) {
    std::printf("\n== issue 15: forward + backward, fp32, H=%ld, D=%ld, SIMD path %s ==\n", long(kHeads), long(kDim),
                ISM_SIMD_NAME);
    std::printf("useful GFLOP/s count fwd+bwd as 3.5 x 4 x dim x visible pairs x heads\n");
    std::printf("%7s %6s %4s %10s %10s %8s %10s %8s\n", "mask", "N", "thr", "fwd+bwd", "GF/s", "/SGEMM", "bwd GF/s",
                "bwd/fwd");
    for (int t : {1, 2}) {
      double sgemm = 0;
      for (const auto& [key, row] : c.rows)
        if (key.rfind("backward/sgemm/", 0) == 0 && key.find("threads:" + std::to_string(t)) != std::string::npos)
          sgemm = std::max(sgemm, row.counters.count("flops") ? row.counters.at("flops") : 0.0);
      for (const std::string& m : kMasks)
        for (index_t n : kLengths) {
          const auto* fb = c.find(kernel_name("fwdbwd", m, n, t));
          const auto* bw = c.find(kernel_name("bwd", m, n, t));
          if (!fb) continue;
          const double gf = fb->counters.at("flops") / 1e9;
          const double fwd_s = bw ? fb->seconds - bw->seconds : 0;
          std::printf("%7s %6ld %4d %8.1fms %10.1f %8.2f %10.1f %8.2f\n", m.c_str(), long(n), t, fb->seconds * 1e3, gf,
                      sgemm > 0 ? gf * 1e9 / sgemm : 0.0, bw ? bw->counters.at("flops") / 1e9 : 0.0,
                      bw && fwd_s > 0 ? bw->seconds / fwd_s : 0.0);
        }
      if (sgemm > 0) std::printf("SGEMM ceiling, %d thread(s): %.1f GFLOP/s (target fwd+bwd / SGEMM >= 0.60)\n", t, sgemm / 1e9);
    }
  }
  if (dialogue) {
    std::printf("\n== the paper's training claim: T-round dialogue, forward + backward for every answer token ==\n");
    std::printf("fp32, H=%ld, D=%ld; (a) ISM once over the dialogue, (b) the T prefix-LM samples\n", long(kDlgHeads),
                long(kDlgDim));
    for (int t : {1, 2}) {
      bool any = false;
      for (index_t r = 1; r <= kMaxRounds; ++r) {
        const auto* a = c.find(dialogue_name("ism", r, t));
        const auto* b = c.find(dialogue_name("prefix", r, t));
        if (!a || !b) continue;
        if (!any) {
          std::printf("threads %d\n%4s %8s %12s %12s %12s %12s %8s %8s\n", t, "T", "tokens", "ISM pairs", "prefix pairs",
                      "ISM time", "prefix time", "pairs x", "time x");
          any = true;
        }
        const double pa = a->counters.at("pairs"), pb = b->counters.at("pairs");
        std::printf("%4ld %8.0f %12.0f %12.0f %10.2fms %10.2fms %8.2f %8.2f\n", long(r), a->counters.at("tokens"), pa, pb,
                    a->seconds * 1e3, b->seconds * 1e3, pb / pa, b->seconds / a->seconds);
      }
    }
  }
  std::printf("(times are medians when --benchmark_repetitions > 1)\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (int t : {1, 2})
    for (index_t n : kLengths)
      for (const std::string& m : kMasks) {
        register_case(kernel_name("fwdbwd", m, n, t), benchmark::kMillisecond,
                      [=](benchmark::State& s) { kernel_case(s, m, n, t, true); });
        register_case(kernel_name("bwd", m, n, t), benchmark::kMillisecond,
                      [=](benchmark::State& s) { kernel_case(s, m, n, t, false); });
      }
  for (Blas b : {Blas::OpenBlas, Blas::Eigen})
    for (int t : {1, 2}) {
      if (!blas_available(b) || (b == Blas::Eigen && !openmp_threads_work(t))) continue;
      register_case("backward/sgemm/" + std::string(to_string(b)) + "/square:" + std::to_string(kSquare) +
                        "/threads:" + std::to_string(t),
                    benchmark::kMillisecond, [=](benchmark::State& s) {
                      set_blas_threads(b, t);
                      SquareGemm g(kSquare);
                      for (auto _ : s) g.run(b);
                      set_flops_counter(s, g.flops());
                      s.SetLabel(blas_label(b));
                      set_blas_threads(b, 1);
                    });
    }
  for (int t : {1, 2})
    for (index_t r = 1; r <= kMaxRounds; ++r)
      for (bool ism_scheme : {true, false})
        register_case(dialogue_name(ism_scheme ? "ism" : "prefix", r, t), benchmark::kMillisecond,
                      [=](benchmark::State& s) { dialogue_case(s, ism_scheme, r, t); });
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  summary(rep);
  benchmark::Shutdown();
  return 0;
}
