// The fused CPU kernel's acceptance binary (issue 11, after issue 3): every
// case side by side in one run, then a summary of the ratios the issues ask
// for. It measures the instruction set it was compiled for (ISM_SIMD_NAME):
// build it once per path and pair each with OpenBLAS's kernels for the same
// instruction set.
//
// Cases (8 heads, one KV head per query head, q = k = N):
//   kernel/peak/fma/threads:1                  the vocabulary's FMA throughput (12 chains)
//   kernel/sgemm/<blas>/square:2048/threads:T  the machine's SGEMM rate
//   kernel/ism/<mask>/<type>/D:<d>/N:<n>/threads:T
//                                              ism::attention; mask none | causal | ism16
//   kernel/eigen/ism16/fp32/D:128/N:2048/threads:1   unfused Eigen attention (baselines.hpp)
// Counters: flops = useful FLOP/s (4 * dim * visible pairs * heads / time),
// skipped = fraction of the kernel's tiles that are Empty (never visited).
//
// Run (from the build directory of each path; repetitions in random order
// spread a shared machine's slow spells over every case):
//   AVX-512 path (a -march=native build on an AVX-512 machine):
//     OPENBLAS_CORETYPE=SkylakeX bench/kernel_bench --benchmark_repetitions=5
//       --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true
//   AVX2 path (cmake -DISM_BENCH_NATIVE=OFF -DCMAKE_CXX_FLAGS="-march=x86-64-v3 -DISM_SIMD=avx2"):
//     OPENBLAS_CORETYPE=Haswell bench/kernel_bench ...same flags...
// Add --torch_json=FILE (the JSON of bench/torch_sdpa.py --mode prefill,
// same shapes) to print the PyTorch ratios, and --summary_cpu_time on a
// machine shared with other work: the summary then takes the 1-thread cases'
// CPU time (their only thread is the calling one) instead of wall time; --benchmark_filter narrows the
// cases as usual (the summary shows what ran). Debian's OpenBLAS picks its
// Haswell kernels on AVX-512 machines unless told OPENBLAS_CORETYPE=SkylakeX.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kHeads = 8, kSquare = 2048;
const std::vector<index_t> kLengths{2048, 4096};
const std::vector<index_t> kDims{128, 64};
const std::vector<const char*> kMasks{"none", "causal", "ism16"};

template <class Mask>
BlockMapStats kernel_tile_stats(const Mask& mask, index_t n) {
  return BlockMap(mask, n, n, 0, cpu::tile_q, cpu::tile_k).stats();
}

template <class T>
void fused(benchmark::State& state, const std::string& kind, index_t dim, index_t n, int threads) {
  AttentionData<T> data(n, n, kHeads, kHeads, dim);
  with_mask(kind, n, [&](const auto& mask) {
    AttentionOptions opt;
    opt.threads = threads;
    opt.q_offset = 0;
    for (auto _ : state) {
      attention<T>(data.q(), data.k(), data.v(), data.out(), mask, opt);
      keep(data.out_buf);
    }
    const BlockMapStats s = kernel_tile_stats(mask, n);
    set_attention_counters(state, s, kHeads, dim);
    state.counters["skipped"] = benchmark::Counter(s.skipped_fraction());
  });
}

void unfused(benchmark::State& state, const std::string& kind, index_t dim, index_t n) {
  AttentionData<float> data(n, n, kHeads, kHeads, dim);
  with_mask(kind, n, [&](const auto& mask) {
    EigenAttention eigen(mask, n, n, 0);
    for (auto _ : state) {
      eigen.run<float>(data.q(), data.k(), data.v(), data.out(), 1);
      keep(data.out_buf);
    }
    set_attention_counters(state, kernel_tile_stats(mask, n), kHeads, dim);
  });
}

// The FMA rate of one core through the kernel's own vocabulary: 12
// independent chains (more than latency x units on any target here), the
// operands pinned in registers.
template <class S>
void fma_peak(benchmark::State& state) {
  using V = typename S::V;
  constexpr int chains = 12;
  constexpr long inner = 1 << 16;
  V a[chains];
  for (int c = 0; c < chains; ++c) a[c] = S::set1(1.f + 1e-3f * float(c));
  V b = S::set1(0.999999f), d = S::set1(1e-7f);
  for (auto _ : state) {
    S::pin(b);
    S::pin(d);
    for (long i = 0; i < inner; ++i) {
      ISM_UNROLL for (int c = 0; c < chains; ++c) a[c] = S::fma(a[c], b, d);
    }
  }
  float sink = 0;
  for (int c = 0; c < chains; ++c) {
    alignas(64) float lanes[S::width];
    S::store(lanes, a[c]);
    sink += lanes[0];
  }
  benchmark::DoNotOptimize(sink);
  set_flops_counter(state, 2.0 * S::width * chains * double(inner));
  state.SetLabel(S::name);
}

std::string fused_name(const std::string& mask, const char* type, index_t dim, index_t n, int threads) {
  return "kernel/ism/" + mask + "/" + type + "/D:" + std::to_string(dim) + "/N:" + std::to_string(n) +
         "/threads:" + std::to_string(threads);
}
std::string sgemm_name(Blas b, int threads) {
  return "kernel/sgemm/" + std::string(to_string(b)) + "/square:" + std::to_string(kSquare) +
         "/threads:" + std::to_string(threads);
}

// Each case's median real time, median CPU time of the calling thread (the
// only thread of a 1-thread case) and flops counter.
class Collector : public benchmark::ConsoleReporter {
 public:
  struct Row {
    double seconds = 0, cpu_seconds = 0, flops = 0;
    std::string label;
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
      const double unit = benchmark::GetTimeUnitMultiplier(r.time_unit);
      row.seconds = r.GetAdjustedRealTime() / unit;
      row.cpu_seconds = r.GetAdjustedCPUTime() / unit;
      const auto it = r.counters.find("flops");
      row.flops = it != r.counters.end() ? double(it->second) : 0;
      row.label = r.report_label;
      row.median = median;
    }
  }
  const Row* find(const std::string& key) const {
    const auto it = rows.find(key);
    return it == rows.end() ? nullptr : &it->second;
  }
};

// bench/torch_sdpa.py's JSON: an array of flat objects. Only the fields the
// ratios need are read (mask, n, dim, threads, dtype, median_ms); a small
// scanner, since the format is ours and flat.
struct TorchCase {
  std::string mask, dtype;
  long n = 0, dim = 0, threads = 0;
  double median_ms = 0;
};
std::vector<TorchCase> read_torch_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "kernel_bench: cannot read --torch_json=%s\n", path.c_str());
    std::exit(2);
  }
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string s = ss.str();
  std::vector<TorchCase> out;
  for (size_t open = s.find('{'); open != std::string::npos; open = s.find('{', open + 1)) {
    const size_t close = s.find('}', open);
    if (close == std::string::npos) break;
    const std::string obj = s.substr(open, close - open);
    auto field = [&](const char* key) -> std::string {
      const std::string k = std::string("\"") + key + "\"";
      size_t p = obj.find(k);
      if (p == std::string::npos) return "";
      p = obj.find(':', p + k.size());
      if (p == std::string::npos) return "";
      ++p;
      while (p < obj.size() && (obj[p] == ' ' || obj[p] == '"')) ++p;
      size_t e = p;
      while (e < obj.size() && obj[e] != ',' && obj[e] != '"' && obj[e] != '}') ++e;
      return obj.substr(p, e - p);
    };
    TorchCase c;
    c.mask = field("mask");
    c.dtype = field("dtype");
    c.n = std::atol(field("n").c_str());
    c.dim = std::atol(field("dim").c_str());
    c.threads = std::atol(field("threads").c_str());
    c.median_ms = std::atof(field("median_ms").c_str());
    if (!c.mask.empty() && c.median_ms > 0) out.push_back(c);
  }
  return out;
}

const char* verdict(double x, bool ok) { return x <= 0 ? "" : (ok ? "" : " !"); }

void summary(Collector& c, const std::vector<TorchCase>& torch, bool cpu_time) {
  std::printf("\n== kernel acceptance (issue 11): SIMD path %s, fp32 unless said, H=%ld, tiles %ldx%ld ==\n",
              ISM_SIMD_NAME, long(kHeads), long(cpu::tile_q), long(cpu::tile_k));
  if (cpu_time) {
    std::printf("1-thread cases: CPU time of the calling thread (--summary_cpu_time); 2-thread cases: wall time\n");
    for (auto& [name, row] : c.rows)
      if (name.find("threads:1") != std::string::npos && row.cpu_seconds > 0) {
        row.flops *= row.seconds / row.cpu_seconds;
        row.seconds = row.cpu_seconds;
      }
  }
  if (const auto* p = c.find("kernel/peak/fma/threads:1"))
    std::printf("FMA peak of this path, 1 core: %.1f GFLOP/s\n", p->flops / 1e9);
  double sgemm[3] = {0, 0, 0};
  std::string sgemm_label[3];
  for (int t : {1, 2})
    for (Blas b : {Blas::OpenBlas, Blas::Eigen})
      if (const auto* r = c.find(sgemm_name(b, t)); r && r->flops > sgemm[t]) {
        sgemm[t] = r->flops;
        sgemm_label[t] = r->label;
      }
  for (int t : {1, 2})
    if (sgemm[t] > 0) std::printf("SGEMM square %ld, %d thread(s): %.1f GFLOP/s (%s)\n", long(kSquare), t, sgemm[t] / 1e9,
                                  sgemm_label[t].c_str());
  const std::string want_blas = std::string("openblas:") + (std::strcmp(ISM_SIMD_NAME, "avx512") == 0 ? "SkylakeX"
                                                            : std::strcmp(ISM_SIMD_NAME, "avx2") == 0 ? "Haswell"
                                                                                                       : "");
  if (want_blas != "openblas:" && !sgemm_label[1].empty() && sgemm_label[1] != want_blas)
    std::printf("NOTE: the %s path should be compared with %s (set OPENBLAS_CORETYPE)\n", ISM_SIMD_NAME,
                want_blas.c_str());
  auto torch_ms = [&](const std::string& mask, index_t dim, index_t n, int threads) {
    for (const TorchCase& t : torch)
      if (t.mask == mask && t.dtype == "fp32" && t.dim == dim && t.n == n && t.threads == threads) return t.median_ms;
    return 0.0;
  };

  std::printf("\nPer case: time (median, wall), useful GFLOP/s, fraction of SGEMM at the same thread count"
              " [target >= 0.80], PyTorch SDPA time / ism time [none >= 1.0, causal >= 1.1, ism16 >= 1.5]\n");
  std::printf("%-4s %-6s %-7s %-3s %11s %9s %8s %10s %8s\n", "D", "N", "mask", "thr", "time ms", "GFLOP/s",
              "/SGEMM", "torch ms", "torch/x");
  for (index_t dim : kDims)
    for (index_t n : kLengths)
      for (const char* mask : kMasks)
        for (int t : {1, 2}) {
          const auto* r = c.find(fused_name(mask, "fp32", dim, n, t));
          if (!r) continue;
          const double frac = sgemm[t] > 0 ? r->flops / sgemm[t] : 0;
          const double tm = torch_ms(mask, dim, n, t);
          const double want = std::strcmp(mask, "none") == 0 ? 1.0 : std::strcmp(mask, "causal") == 0 ? 1.1 : 1.5;
          const double vs = tm > 0 ? tm / (r->seconds * 1e3) : 0;
          std::printf("%-4ld %-6ld %-7s %-3d %11.2f %9.1f %6.2f%-2s", long(dim), long(n), mask, t, r->seconds * 1e3,
                      r->flops / 1e9, frac, verdict(frac, frac >= 0.8));
          if (tm > 0) std::printf(" %10.2f %6.2fx%s", tm, vs, verdict(vs, vs >= want));
          std::printf("\n");
        }

  std::printf("\nRatios of times [targets]: causal/none [<= 0.55], ism16/causal [<= 1.05], 1T/2T [>= 1.8 each mask],"
              " bf16/fp32 and fp16/fp32 [<= 1.10 each mask], eigen unfused/ism [>= 3]\n");
  auto sec = [&](const std::string& k) {
    const auto* r = c.find(k);
    return r ? r->seconds : 0.0;
  };
  auto rat = [](double a, double b) { return a > 0 && b > 0 ? a / b : 0.0; };
  for (index_t dim : kDims)
    for (index_t n : kLengths) {
      const double none = sec(fused_name("none", "fp32", dim, n, 1)), causal = sec(fused_name("causal", "fp32", dim, n, 1)),
                   ism = sec(fused_name("ism16", "fp32", dim, n, 1));
      if (none + causal + ism == 0) continue;
      const double cn = rat(causal, none), ic = rat(ism, causal);
      std::printf("D=%-4ld N=%-5ld causal/none %.3f%s  ism16/causal %.3f%s  1T/2T", long(dim), long(n), cn,
                  verdict(cn, cn <= 0.55), ic, verdict(ic, ic <= 1.05));
      for (const char* mask : kMasks) {
        const double s = rat(sec(fused_name(mask, "fp32", dim, n, 1)), sec(fused_name(mask, "fp32", dim, n, 2)));
        std::printf(" %s %.2f%s", mask, s, verdict(s, s >= 1.8));
      }
      for (const char* type : {"bf16", "fp16"}) {
        bool any = false;
        for (const char* mask : kMasks) {
          const double r = rat(sec(fused_name(mask, type, dim, n, 1)), sec(fused_name(mask, "fp32", dim, n, 1)));
          if (r == 0) continue;
          if (!any) std::printf("  %s/fp32", type);
          any = true;
          std::printf(" %s %.3f%s", mask, r, verdict(r, r <= 1.10));
        }
      }
      const double e = rat(sec("kernel/eigen/ism16/fp32/D:" + std::to_string(dim) + "/N:" + std::to_string(n) +
                               "/threads:1"),
                           ism);
      if (e > 0) std::printf("  eigen/ism16 %.2fx%s", e, verdict(e, e >= 3));
      std::printf("\n");
    }
  std::printf("(' !' marks a missed target; times are medians when --benchmark_repetitions > 1; a loaded machine"
              " distorts 2-thread cases most)\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string torch_json;
  bool cpu_time = false;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--torch_json=", 13) == 0) torch_json = argv[i] + 13;
    else if (std::strcmp(argv[i], "--summary_cpu_time") == 0) cpu_time = true;
    else argv[kept++] = argv[i];
  }
  argc = kept;

  register_case("kernel/peak/fma/threads:1", benchmark::kMillisecond, [](benchmark::State& s) { fma_peak<cpu::simd::Native>(s); });
  for (int t : {1, 2})
    for (Blas b : {Blas::OpenBlas, Blas::Eigen}) {
      if (!blas_available(b) || (b == Blas::Eigen && (t > 1 || !openmp_threads_work(t)))) continue;
      register_case(sgemm_name(b, t), benchmark::kMillisecond, [=](benchmark::State& s) {
        set_blas_threads(b, t);
        SquareGemm g(kSquare);
        for (auto _ : s) g.run(b);
        set_flops_counter(s, g.flops());
        s.SetLabel(blas_label(b));
      });
    }
  for (index_t dim : kDims)
    for (index_t n : kLengths)
      for (const char* mask : kMasks) {
        for (int t : {1, 2})
          register_case(fused_name(mask, "fp32", dim, n, t), benchmark::kMillisecond,
                        [=](benchmark::State& s) { fused<float>(s, mask, dim, n, t); });
        if (n == 2048) {
          register_case(fused_name(mask, "bf16", dim, n, 1), benchmark::kMillisecond,
                        [=](benchmark::State& s) { fused<Eigen::bfloat16>(s, mask, dim, n, 1); });
          register_case(fused_name(mask, "fp16", dim, n, 1), benchmark::kMillisecond,
                        [=](benchmark::State& s) { fused<Eigen::half>(s, mask, dim, n, 1); });
        }
      }
  register_case("kernel/eigen/ism16/fp32/D:128/N:2048/threads:1", benchmark::kMillisecond,
                [](benchmark::State& s) { unfused(s, "ism16", 128, 2048); });

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const std::vector<TorchCase> torch = torch_json.empty() ? std::vector<TorchCase>{} : read_torch_json(torch_json);
  Collector rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  summary(rep, torch, cpu_time);
  benchmark::Shutdown();
  return 0;
}
