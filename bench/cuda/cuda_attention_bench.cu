// ism::cuda::attention at bf16:
//   prefill (n_q = n_k = N) for causal, prefix-LM and ISM masks, N = 1k..32k,
//   head dim 64 and 128, in TFLOP/s of visible work;
//   decode (one new token, 32 query heads over 8 KV heads, dim 128) against
//   caches of 4k..128k tokens, alone and as a batch of 32 sequences, in GB/s
//   of K/V read (the decode kernel reads each K/V tile once per KV head).
//
// Work counts only the (query, key) pairs the mask lets through: 4 * pairs *
// dim * heads flops (QK^T and PV, 2 each), the convention of flash-attention's
// benchmarks, so causal at N does half the work of full attention at N. Time
// is GPU time between CUDA events around each call (UseManualTime).
//
// Shapes (compare_torch.py builds the same): batch 1, heads 2048 / dim (16 at
// dim 128, 32 at dim 64), q/k/v [N, heads, dim] token-major.
//   prefix-LM: prefix N / 2.
//   ISM: rounds of 512 tokens, a 128-token query turn (bidirectional) then a
//        384-token answer (causal): boundaries 0, 128, 512, 640, 1024, ...
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ism/cuda.hpp"

namespace {

using ism::index_t;
using T = __nv_bfloat16;
// The kernels these cases need: dims 64 and 128, 16-byte loads, no modifiers.
using Kernels = ism::cuda::Variants<ism::cuda::HeadDims<64, 128>, false, false>;

// Deterministic inputs in [-1, 1) without a host round trip.
__global__ void fill_kernel(T* p, size_t n, std::uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    std::uint32_t x = std::uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = __float2bfloat16(float(x & 0xffff) / 32768.f - 1.f);
  }
}

struct DeviceTensor {
  T* p = nullptr;
  size_t n = 0;
  DeviceTensor(size_t elems, std::uint32_t seed) : n(elems) {
    ISM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
    fill_kernel<<<1024, 256>>>(p, n, seed);
    ISM_CUDA_CHECK(cudaGetLastError());
  }
  ~DeviceTensor() { (void)cudaFree(p); }
};

std::vector<index_t> ism_boundaries(index_t n) {
  std::vector<index_t> b{0};
  while (b.back() < n) {
    b.push_back(std::min(n, b.back() + 128));
    if (b.back() < n) b.push_back(std::min(n, b.back() + 384));
  }
  return b;
}

// Visible pairs, and the fraction of 128 x 64 tiles the kernel skips.
template <class Mask>
void count_work(const Mask& host_mask, index_t n, double* pairs, double* skipped) {
  double p = 0, tiles = 0, visited = 0;
  for (index_t q = 0; q < n; ++q) p += double(ism::visible_keys(host_mask, q, n).size());
  for (index_t q0 = 0; q0 < n; q0 += 128) {
    const auto plan = ism::cuda::plan_key_blocks(host_mask, q0, std::min(n, q0 + 128), n, 64);
    visited += double(plan.visits());
    tiles += double((n + 63) / 64);
  }
  *pairs = p;
  *skipped = 1.0 - visited / tiles;
}

// Seconds per call of `call`, from CUDA events around several calls (the
// host's work for call i+1 overlaps the GPU's on call i, as in an engine).
template <class Call>
double time_calls(benchmark::State& state, Call&& call) {
  cudaEvent_t start, stop;
  ISM_CUDA_CHECK(cudaEventCreate(&start));
  ISM_CUDA_CHECK(cudaEventCreate(&stop));
  call();
  ISM_CUDA_CHECK(cudaDeviceSynchronize());
  constexpr int kCallsPerIteration = 20;
  double total_s = 0;
  for (auto _ : state) {
    ISM_CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < kCallsPerIteration; ++i) call();
    ISM_CUDA_CHECK(cudaEventRecord(stop));
    ISM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    ISM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    const double per_call_s = ms * 1e-3 / kCallsPerIteration;
    state.SetIterationTime(per_call_s);
    total_s += per_call_s;
  }
  ISM_CUDA_CHECK(cudaEventDestroy(start));
  ISM_CUDA_CHECK(cudaEventDestroy(stop));
  return total_s / double(state.iterations());
}

template <class Mask, class HostMask>
void run(benchmark::State& state, const Mask& mask, const HostMask& host_mask, index_t n, index_t dim) {
  const index_t heads = 2048 / dim;
  const size_t elems = size_t(n * heads * dim);
  DeviceTensor q(elems, 1), k(elems, 2), v(elems, 3), out(elems, 4);
  auto view = [&](T* p) { return ism::token_major(p, n, heads, dim); };
  auto call = [&] {
    ism::cuda::attention<T>(ism::as_const(view(q.p)), ism::as_const(view(k.p)), ism::as_const(view(v.p)),
                            view(out.p), mask, {}, nullptr, {}, Kernels{});
  };
  const double per_call_s = time_calls(state, call);
  double pairs = 0, skipped = 0;
  count_work(host_mask, n, &pairs, &skipped);
  const double flops = 4.0 * pairs * double(dim) * double(heads);
  // Plain counters: Google Benchmark's rate counters divide by CPU time, not
  // by the manual (GPU) time.
  state.counters["TFLOP/s"] = flops / per_call_s / 1e12;
  state.counters["density"] = pairs / (double(n) * double(n));
  state.counters["tiles_skipped"] = skipped;
  state.counters["heads"] = double(heads);
}

// Decode: `requests` sequences of n_k cached tokens, one new token each, 32
// query heads over 8 KV heads, dim 128, causal; the engine's way (a workspace
// and the device info passed in, no per-call query or allocation).
void decode(benchmark::State& state, index_t n_k, index_t requests) {
  constexpr index_t q_heads = 32, kv_heads = 8, dim = 128;
  DeviceTensor q(size_t(requests * q_heads * dim), 1), out(size_t(requests * q_heads * dim), 2);
  DeviceTensor k(size_t(requests * n_k * kv_heads * dim), 3), v(size_t(requests * n_k * kv_heads * dim), 4);
  const size_t ws_bytes = ism::cuda::workspace_bytes(requests * q_heads, dim);
  void* ws = nullptr;
  ISM_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  ism::cuda::LaunchOptions lo;
  lo.workspace = {ws, ws_bytes};
  lo.device = ism::cuda::device_info();
  const ism::CausalMask causal;
  std::vector<ism::cuda::AttentionRequest<T, ism::CausalMask>> reqs;
  for (index_t r = 0; r < requests; ++r)
    reqs.push_back({ism::token_major<const T>(q.p + r * q_heads * dim, 1, q_heads, dim),
                    ism::token_major<const T>(k.p + r * n_k * kv_heads * dim, n_k, kv_heads, dim),
                    ism::token_major<const T>(v.p + r * n_k * kv_heads * dim, n_k, kv_heads, dim),
                    ism::token_major(out.p + r * q_heads * dim, 1, q_heads, dim), &causal, -1, nullptr});
  const double s = time_calls(state, [&] {
    if (requests == 1)
      ism::cuda::attention<T>(reqs[0].q, reqs[0].k, reqs[0].v, reqs[0].out, causal, {}, nullptr, lo, Kernels{});
    else ism::cuda::attention_batch(reqs, {}, nullptr, lo, Kernels{});
  });
  ISM_CUDA_CHECK(cudaFree(ws));
  const double bytes = 2.0 * double(requests * n_k * kv_heads * dim) * sizeof(T);
  state.counters["GB/s"] = bytes / s / 1e9;
  state.counters["us"] = s * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "cuda_attention_bench: no CUDA device on this machine, nothing to measure\n");
    return 1;
  }
  for (index_t dim : {64, 128})
    for (index_t n = 1024; n <= 32768; n *= 2) {
      const std::string suffix = "/N:" + std::to_string(n) + "/dim:" + std::to_string(dim);
      benchmark::RegisterBenchmark(("causal" + suffix).c_str(), [=](benchmark::State& s) {
        run(s, ism::causal_mask(), ism::causal_mask(), n, dim);
      })->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("prefix" + suffix).c_str(), [=](benchmark::State& s) {
        run(s, ism::prefix_mask(n / 2), ism::prefix_mask(n / 2), n, dim);
      })->UseManualTime()->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("ism" + suffix).c_str(), [=](benchmark::State& s) {
        const ism::SegmentMask host = ism::ism_mask(ism_boundaries(n));
        const ism::cuda::DeviceMask device(host);
        run(s, device.policy(), host.bounds(), n, dim);  // host bounds: plain ISM_HOST_DEVICE calls
      })->UseManualTime()->Unit(benchmark::kMillisecond);
    }
  for (index_t n_k : {4096, 16384, 65536, 131072})
    benchmark::RegisterBenchmark(("decode/n_k:" + std::to_string(n_k) + "/requests:1").c_str(),
                                 [=](benchmark::State& s) { decode(s, n_k, 1); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  for (index_t n_k : {4096, 16384})
    benchmark::RegisterBenchmark(("decode/n_k:" + std::to_string(n_k) + "/requests:32").c_str(),
                                 [=](benchmark::State& s) { decode(s, n_k, 32); })
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
