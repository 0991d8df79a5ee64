// The attention variants of issue 14 (sliding windows; softcap, sinks, ALiBi),
// measured against what they must cost:
//
//   variants/window/<inner>/w:<w>/N:<n>/threads:<t>
//       ism::attention with sliding_window(inner, w) over n tokens (fp32,
//       H = 2, D = 128, q = k = n), inner causal or ISM with segments of 512.
//   variants/causal/pairs-of-w:<w>/N:<n'>/threads:<t>
//       plain causal attention over the n' tokens whose n'(n'+1)/2 visible
//       pairs are closest to the window case's: the same useful work. A window
//       costs what its visible pairs cost when its useful GFLOP/s is within
//       10% of this case's (issue 14).
//   variants/mods/<off|softcap|sinks|alibi|all>/causal/N:<n>/threads:1
//       causal attention (fp32, H = 8, D = 128, the shape of kernel_bench's
//       kernel/ism/causal cases, so "off" compares with bench/RESULTS.md) with
//       the score modifiers off, each alone, and all together.
// Counters: flops = useful FLOP/s (4 * D * visible pairs * H / time), skipped,
// density (baselines.hpp). After the run a summary prints the ratios.
//
// Run (the 32k cases take seconds each):
//   build/bench/variants_bench --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//       --benchmark_report_aggregates_only=true
// and, for the modifiers alone on a busy machine, pinned:
//   taskset -c 1 build/bench/variants_bench --benchmark_filter=mods --benchmark_repetitions=9 ...
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kDim = 128;
constexpr index_t kWindowHeads = 2;  // the 32k cases stay at seconds per run
constexpr index_t kModHeads = 8;
constexpr index_t kSegment = 512;    // ISM segment length of the windowed ISM cases

struct WindowCase {
  index_t n, w;
};
// Small first: CI runs a binary's first cases (.ci/steps/30-bench.sh).
const std::vector<WindowCase> kWindows{{4096, 512}, {32768, 4096}};
const std::vector<int> kThreads{1, 2};
const std::vector<index_t> kModLengths{1024, 4096};

// Visible pairs of a causal window of w over n rows: rows below w see i + 1
// keys, the others w.
index_t window_pairs(index_t n, index_t w) {
  const index_t m = std::min(n, w);
  return m * (m + 1) / 2 + (n - m) * w;
}
// The causal length whose visible pairs are closest to `pairs`.
index_t causal_length_for(index_t pairs) {
  index_t n = index_t((std::sqrt(8.0 * double(pairs) + 1.0) - 1.0) / 2.0);
  if ((n + 1) * (n + 2) / 2 - pairs < pairs - n * (n + 1) / 2) ++n;
  return n;
}

template <class Mask>
void time_call(benchmark::State& state, AttentionData<float>& data, const Mask& mask, const AttentionOptions& opt) {
  for (auto _ : state) {
    attention<float>(data.q(), data.k(), data.v(), data.out(), mask, opt);
    keep(data.out_buf);
  }
  set_attention_counters(state, mask_stats(mask, data.n_q, data.n_k, 0), data.q_heads, data.dim);
}

void run_window(benchmark::State& state, const std::string& inner, index_t n, index_t w, int threads) {
  AttentionData<float> data(n, n, kWindowHeads, kWindowHeads, kDim);
  AttentionOptions opt;
  opt.threads = threads;
  opt.q_offset = 0;
  if (inner == "causal") time_call(state, data, sliding_window(causal_mask(), w), opt);
  else time_call(state, data, sliding_window(ism_mask(equal_boundaries(n, n / kSegment)), w), opt);
}

void run_causal(benchmark::State& state, index_t n, int threads) {
  AttentionData<float> data(n, n, kWindowHeads, kWindowHeads, kDim);
  AttentionOptions opt;
  opt.threads = threads;
  opt.q_offset = 0;
  time_call(state, data, causal_mask(), opt);
}

void run_mods(benchmark::State& state, const std::string& mods, index_t n) {
  AttentionData<float> data(n, n, kModHeads, kModHeads, kDim);
  AttentionOptions opt;
  opt.threads = 1;
  opt.q_offset = 0;
  // Gemma 2's attention cap, GPT-OSS-like sinks, BLOOM's slopes for 8 heads.
  const std::vector<float> sinks(size_t(kModHeads), 0.5f), slopes = ggml_alibi_slopes(kModHeads, 8.f);
  if (mods == "softcap" || mods == "all") opt.softcap = 50.f;
  if (mods == "sinks" || mods == "all") opt.sinks = sinks.data();
  if (mods == "alibi" || mods == "all") opt.alibi_slopes = slopes.data();
  time_call(state, data, causal_mask(), opt);
}

std::string window_name(const std::string& inner, index_t w, index_t n, int t) {
  return "variants/window/" + inner + "/w:" + std::to_string(w) + "/N:" + std::to_string(n) +
         "/threads:" + std::to_string(t);
}
std::string causal_name(index_t w, index_t n, int t) {
  return "variants/causal/pairs-of-w:" + std::to_string(w) + "/N:" + std::to_string(n) + "/threads:" +
         std::to_string(t);
}
std::string mods_name(const std::string& mods, index_t n) {
  return "variants/mods/" + mods + "/causal/N:" + std::to_string(n) + "/threads:1";
}
const std::vector<std::string> kMods{"off", "softcap", "sinks", "alibi", "all"};

// Each case's median (or single) times and flops counter, for the summary.
// Single-thread cases run on the benchmark's own thread, so its CPU time is
// theirs: on a shared machine it is the steadier measure, and the summary
// rates them by it (flops over CPU time); 2-thread cases by wall time.
class Collector : public benchmark::ConsoleReporter {
 public:
  struct Row {
    double seconds = 0, cpu_seconds = 0, flops = 0;
    bool median = false;
    // Useful FLOP/s and time by the clock that suits `threads`.
    double rate(int threads) const { return threads == 1 && cpu_seconds > 0 ? flops * seconds / cpu_seconds : flops; }
    double time(int threads) const { return threads == 1 && cpu_seconds > 0 ? cpu_seconds : seconds; }
  };
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if ((r.run_type == Run::RT_Aggregate && !median) || (rows_[r.run_name.function_name].median && !median))
        continue;
      Row& row = rows_[r.run_name.function_name];
      row.seconds = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      row.cpu_seconds = r.GetAdjustedCPUTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      const auto it = r.counters.find("flops");
      row.flops = it != r.counters.end() ? double(it->second) : 0;
      row.median = median;
    }
  }
  bool empty() const { return rows_.empty(); }
  const Row* find(const std::string& name) const {
    const auto it = rows_.find(name);
    return it == rows_.end() || it->second.seconds <= 0 ? nullptr : &it->second;
  }

 private:
  std::map<std::string, Row> rows_;
};

void summary(const Collector& c) {
  if (c.empty()) return;
  std::printf("\n== sliding windows: useful GFLOP/s against causal at the same visible pairs (target >= 0.90) ==\n");
  std::printf("(1 thread: by CPU time; 2 threads: by wall time)\n");
  std::printf("%7s %6s %4s %12s %14s %12s %8s %14s\n", "N", "w", "thr", "window GF/s", "causal N'", "causal GF/s",
              "ratio", "ism-window GF/s");
  for (const WindowCase& wc : kWindows)
    for (int t : kThreads) {
      const auto* win = c.find(window_name("causal", wc.w, wc.n, t));
      const auto* ismw = c.find(window_name("ism512", wc.w, wc.n, t));
      const index_t n_eq = causal_length_for(window_pairs(wc.n, wc.w));
      const auto* causal = c.find(causal_name(wc.w, n_eq, t));
      if (!win && !causal && !ismw) continue;
      std::printf("%7ld %6ld %4d %12.1f %14ld %12.1f %8.3f %14.1f\n", long(wc.n), long(wc.w), t,
                  win ? win->rate(t) / 1e9 : 0.0, long(n_eq), causal ? causal->rate(t) / 1e9 : 0.0,
                  win && causal ? win->rate(t) / causal->rate(t) : 0.0, ismw ? ismw->rate(t) / 1e9 : 0.0);
    }
  std::printf("\n== score modifiers: CPU time / CPU time with all off (fp32, H=%ld, D=%ld, causal, 1 thread) ==\n",
              long(kModHeads), long(kDim));
  std::printf("%7s %12s %12s", "N", "off ms", "off GF/s");
  for (size_t i = 1; i < kMods.size(); ++i) std::printf(" %10s", kMods[i].c_str());
  std::printf("\n");
  for (index_t n : kModLengths) {
    const auto* off = c.find(mods_name("off", n));
    if (!off) continue;
    std::printf("%7ld %12.2f %12.1f", long(n), off->time(1) * 1e3, off->rate(1) / 1e9);
    for (size_t i = 1; i < kMods.size(); ++i) {
      const auto* on = c.find(mods_name(kMods[i], n));
      std::printf(" %10.3f", on ? on->time(1) / off->time(1) : 0.0);
    }
    std::printf("\n");
  }
  std::printf("(0 = case not run; medians when --benchmark_repetitions > 1)\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (const WindowCase& wc : kWindows)
    for (int t : kThreads) {
      register_case(window_name("causal", wc.w, wc.n, t), benchmark::kMillisecond,
                    [=](benchmark::State& s) { run_window(s, "causal", wc.n, wc.w, t); });
      const index_t n_eq = causal_length_for(window_pairs(wc.n, wc.w));
      register_case(causal_name(wc.w, n_eq, t), benchmark::kMillisecond,
                    [=](benchmark::State& s) { run_causal(s, n_eq, t); });
      register_case(window_name("ism512", wc.w, wc.n, t), benchmark::kMillisecond,
                    [=](benchmark::State& s) { run_window(s, "ism512", wc.n, wc.w, t); });
    }
  for (index_t n : kModLengths)
    for (const std::string& m : kMods)
      register_case(mods_name(m, n), benchmark::kMillisecond, [=](benchmark::State& s) { run_mods(s, m, n); });
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  summary(rep);
  benchmark::Shutdown();
  return 0;
}
