// Issue 3's acceptance set for the fused CPU kernel, side by side in one run,
// then a summary of the ratios the issue asks for.
//
// Cases (fp32, 8 heads, dim 128, one KV head per query head, q = k = N):
//   kernel/ism/<mask>/N:<n>/threads:<t>   ism::attention, mask none | causal | ism16
//   kernel/eigen/ism16/N:<n>/threads:1    unfused Eigen attention (baselines.hpp)
//   kernel/sgemm/<blas>/square:2048        the machine's one-core SGEMM rate
// Counters: flops = useful FLOP/s (4 * dim * visible pairs * heads / time),
// skipped = fraction of the kernel's tiles that are Empty (never visited).
//
// Run:  OPENBLAS_CORETYPE=SkylakeX build/bench/kernel_bench --benchmark_repetitions=5
//         --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true
// (Debian's OpenBLAS otherwise picks Haswell kernels on AVX-512 machines and
// the SGEMM ceiling is understated.) The summary uses medians when repetitions
// are on; random interleaving spreads a shared machine's slow spells over
// every case, so the ratios compare like with like. Ratios it prints, with the targets:
//   useful GFLOP/s / SGEMM GFLOP/s  (ism16, 1 thread)          >= 0.60
//   eigen time / ism time           (ism16, 1 thread)          >= 3
//   ism16 time / causal time        (1 thread)                 <= 1.10
//   causal time / none time         (1 thread)                 <= 0.60
//   1-thread time / 2-thread time   (ism16)                    >= 1.8
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kHeads = 8, kDim = 128, kSquare = 2048;
const std::vector<index_t> kLengths{2048, 4096};

template <class Mask>
BlockMapStats kernel_tile_stats(const Mask& mask, index_t n) {
  return BlockMap(mask, n, n, 0, cpu::tile_q, cpu::tile_k).stats();
}

void fused(benchmark::State& state, const std::string& kind, index_t n, int threads) {
  AttentionData<float> data(n, n, kHeads, kHeads, kDim);
  with_mask(kind, n, [&](const auto& mask) {
    AttentionOptions opt;
    opt.threads = threads;
    opt.q_offset = 0;
    for (auto _ : state) {
      attention<float>(data.q(), data.k(), data.v(), data.out(), mask, opt);
      keep(data.out_buf);
    }
    const BlockMapStats s = kernel_tile_stats(mask, n);
    set_attention_counters(state, s, kHeads, kDim);
    state.counters["skipped"] = benchmark::Counter(s.skipped_fraction());
  });
}

void unfused(benchmark::State& state, const std::string& kind, index_t n) {
  AttentionData<float> data(n, n, kHeads, kHeads, kDim);
  with_mask(kind, n, [&](const auto& mask) {
    EigenAttention eigen(mask, n, n, 0);
    for (auto _ : state) {
      eigen.run<float>(data.q(), data.k(), data.v(), data.out(), 1);
      keep(data.out_buf);
    }
    set_attention_counters(state, kernel_tile_stats(mask, n), kHeads, kDim);
  });
}

std::string name(const std::string& impl, const std::string& mask, index_t n, int threads) {
  return "kernel/" + impl + "/" + mask + "/N:" + std::to_string(n) + "/threads:" + std::to_string(threads);
}

// Collects each case's real time per iteration (the median when repetitions
// are on) and its flops counter, for the summary.
class Collector : public benchmark::ConsoleReporter {
 public:
  struct Row {
    double seconds = 0, flops = 0;
    bool median = false;
  };
  std::map<std::string, Row> rows;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type == Run::RT_Aggregate && !median) continue;
      Row& row = rows[r.run_name.function_name];
      if (row.median && !median) continue;  // the median wins over single repetitions
      row.seconds = r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
      const auto it = r.counters.find("flops");
      row.flops = it != r.counters.end() ? double(it->second) : 0;
      row.median = median;
    }
  }
  const Row* find(const std::string& key) const {
    const auto it = rows.find(key);
    return it == rows.end() ? nullptr : &it->second;
  }
};

void summary(const Collector& c) {
  std::printf("\n== issue 3 acceptance: fp32, H=%ld, D=%ld, SIMD path %s, tiles %ldx%ld ==\n", long(kHeads),
              long(kDim), ISM_SIMD_NAME, long(cpu::tile_q), long(cpu::tile_k));
  double sgemm = 0;
  std::string sgemm_name;
  for (const auto& [key, row] : c.rows)
    if (key.rfind("kernel/sgemm/", 0) == 0 && row.flops > sgemm) {
      sgemm = row.flops;
      sgemm_name = key;
    }
  if (sgemm > 0) std::printf("SGEMM ceiling: %.1f GFLOP/s (%s)\n", sgemm / 1e9, sgemm_name.c_str());
  std::printf("%6s %12s %10s %12s %12s %12s %12s\n", "N", "ism16 GF/s", "/SGEMM", "eigen/ism", "ism/causal",
              "causal/none", "1T/2T");
  std::printf("%6s %12s %10s %12s %12s %12s %12s\n", "", "", ">=0.60", ">=3", "<=1.10", "<=0.60", ">=1.8");
  for (index_t n : kLengths) {
    const auto* ism1 = c.find(name("ism", "ism16", n, 1));
    const auto* ism2 = c.find(name("ism", "ism16", n, 2));
    const auto* causal = c.find(name("ism", "causal", n, 1));
    const auto* none = c.find(name("ism", "none", n, 1));
    const auto* eigen = c.find(name("eigen", "ism16", n, 1));
    auto ratio = [](const Collector::Row* a, const Collector::Row* b) {
      return a && b && b->seconds > 0 ? a->seconds / b->seconds : 0.0;
    };
    std::printf("%6ld %12.1f %10.2f %12.2f %12.3f %12.3f %12.2f\n", long(n), ism1 ? ism1->flops / 1e9 : 0.0,
                ism1 && sgemm > 0 ? ism1->flops / sgemm : 0.0, ratio(eigen, ism1), ratio(ism1, causal),
                ratio(causal, none), ratio(ism1, ism2));
  }
  std::printf("(0 = case not run; times are medians when --benchmark_repetitions > 1)\n");
}

}  // namespace

int main(int argc, char** argv) {
  for (index_t n : kLengths) {
    for (const char* mask : {"none", "causal", "ism16"})
      register_case(name("ism", mask, n, 1), benchmark::kMillisecond,
                    [=](benchmark::State& s) { fused(s, mask, n, 1); });
    register_case(name("ism", "ism16", n, 2), benchmark::kMillisecond,
                  [=](benchmark::State& s) { fused(s, "ism16", n, 2); });
    register_case(name("eigen", "ism16", n, 1), benchmark::kMillisecond,
                  [=](benchmark::State& s) { unfused(s, "ism16", n); });
  }
  for (Blas b : {Blas::OpenBlas, Blas::Eigen}) {
    if (!blas_available(b)) continue;
    register_case("kernel/sgemm/" + std::string(to_string(b)) + "/square:" + std::to_string(kSquare),
                  benchmark::kMillisecond, [=](benchmark::State& s) {
                    set_blas_threads(b, 1);
                    SquareGemm g(kSquare);
                    for (auto _ : s) g.run(b);
                    set_flops_counter(s, g.flops());
                    s.SetLabel(blas_label(b));
                  });
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  Collector rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  summary(rep);
  benchmark::Shutdown();
  return 0;
}
