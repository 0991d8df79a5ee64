// Decode: 1 or 8 new query rows against a KV cache of 1k..64k tokens, GQA with
// 32 query heads over 8 KV heads, dim 128. Each step reads the whole visible
// cache once, so the floor is memory bandwidth, measured here too.
//
// Case names:
//   decode/<impl>/<type>/rows:<r>/cache:<n>/threads:<t>
//     impl ism (ism::attention) | eigen (unfused, fp32 only)
//     bytes_per_second: K + V bytes read per second
//   membw/read/bytes:<b>/threads:<t>
//     a streaming read of b bytes (the machine's read bandwidth; at sizes past
//     the last-level cache this is the decode floor)
#include <cstdint>
#include <string>
#include <vector>

#include "baselines.hpp"
#include "ism/attention/attention.hpp"

namespace {

using namespace ism;
using namespace ism::bench;

constexpr index_t kQHeads = 32, kKvHeads = 8, kDim = 128;
const std::vector<index_t> kRows{1, 8};
const std::vector<index_t> kCaches{1024, 2048, 4096, 8192, 16384, 32768, 65536};
const std::vector<int> kThreads{1, 2};

std::string case_name(const char* impl, const char* type, index_t rows, index_t cache, int threads) {
  return std::string("decode/") + impl + "/" + type + "/rows:" + std::to_string(rows) +
         "/cache:" + std::to_string(cache) + "/threads:" + std::to_string(threads);
}

// Bytes of K and V a step must read: every visible cached key and value once.
template <class T>
double kv_bytes(index_t cache) {
  return 2.0 * double(cache) * double(kKvHeads) * double(kDim) * double(sizeof(T));
}

// The new rows are the cache's tail (their own K/V already appended), causal
// among themselves, as in speculative or chunked decoding.
template <class T>
void run_fused(benchmark::State& state, index_t rows, index_t cache, int threads) {
  AttentionData<T> data(rows, cache, kQHeads, kKvHeads, kDim);
  time_fused(state, data, causal_mask(), threads, cache - rows);
  state.SetBytesProcessed(std::int64_t(kv_bytes<T>(cache)) * state.iterations());
}

void run_eigen(benchmark::State& state, index_t rows, index_t cache, int threads) {
  AttentionData<float> data(rows, cache, kQHeads, kKvHeads, kDim);
  time_unfused(state, data, causal_mask(), threads, cache - rows);
  state.SetBytesProcessed(std::int64_t(kv_bytes<float>(cache)) * state.iterations());
}

// Sums 32-bit words with wrap-around: integer adds vectorise at -O3 without
// reassociation concerns, so the loop runs at the speed of the loads.
void run_read(benchmark::State& state, index_t bytes, int threads) {
  std::vector<std::uint32_t> buf(size_t(bytes) / sizeof(std::uint32_t));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = std::uint32_t(i);
  const std::int64_t n = std::int64_t(buf.size());
  const std::uint32_t* p = buf.data();
  (void)threads;
  for (auto _ : state) {
    std::uint32_t sum = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) reduction(+ : sum) schedule(static)
#endif
    for (std::int64_t i = 0; i < n; ++i) sum += p[i];
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
}

template <class T>
void register_fused() {
  for (index_t rows : kRows)
    for (index_t cache : kCaches)
      for (int t : kThreads)
        register_case(case_name("ism", type_name<T>(), rows, cache, t), benchmark::kMicrosecond,
                      [=](benchmark::State& s) { run_fused<T>(s, rows, cache, t); });
}

void register_eigen() {
  for (index_t rows : kRows)
    for (index_t cache : kCaches)
      for (int t : kThreads) {
        if (!openmp_threads_work(t)) continue;
        register_case(case_name("eigen", "fp32", rows, cache, t), benchmark::kMicrosecond,
                      [=](benchmark::State& s) { run_eigen(s, rows, cache, t); });
      }
}

void register_bandwidth() {
  for (index_t mib : {4, 16, 64, 256, 1024})
    for (int t : kThreads) {
      if (!openmp_threads_work(t)) continue;
      const index_t bytes = mib << 20;
      register_case("membw/read/bytes:" + std::to_string(bytes) + "/threads:" + std::to_string(t),
                    benchmark::kMicrosecond, [=](benchmark::State& s) { run_read(s, bytes, t); });
    }
}

}  // namespace

int main(int argc, char** argv) {
  register_bandwidth();
  register_fused<float>();
  register_fused<Eigen::bfloat16>();
  register_eigen();
  return run_benchmarks(argc, argv);
}
