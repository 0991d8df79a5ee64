// A few calls of ism::cuda for compute-sanitizer (memcheck, racecheck,
// synccheck) on a GPU machine: scripts/gpu_check.sh runs this binary under
// each tool. Small enough that the tools' slowdown keeps it to seconds, and
// covering every kernel: a prefill of an ISM dialogue (prefill kernel, Full
// and Partial tiles, ragged edges, vector and element-wise loads), a long
// decode split across blocks (decode kernel, per-warp pipelines, the warps'
// merge, the split merge) with modifiers, a paged decode, and a batch. It
// checks that each result is finite where it must be, so it is not only a
// sanitizer target; exit status 0 means every call ran and looked sane.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

#include "ism/cuda.hpp"

namespace {

using ism::index_t;
using T = __nv_bfloat16;
// The kernels these calls need (dim 100 runs on the 128 kernel).
using Plain = ism::cuda::Variants<ism::cuda::HeadDims<128>, false>;
using Modified = ism::cuda::Variants<ism::cuda::HeadDims<128>, true, false>;

__global__ void fill(T* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned x = unsigned(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    p[i] = __float2bfloat16(float(x & 0xffff) / 32768.f - 1.f);
  }
}

template <class U>
U* device_alloc(size_t n) {
  U* p = nullptr;
  ISM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(U)));
  return p;
}

T* random_tensor(size_t n, unsigned seed) {
  T* p = device_alloc<T>(n);
  fill<<<256, 256>>>(p, n, seed);
  ISM_CUDA_CHECK(cudaGetLastError());
  return p;
}

bool finite_output(const T* out, size_t n, const char* what) {
  std::vector<T> host(n);
  ISM_CUDA_CHECK(cudaMemcpy(host.data(), out, n * sizeof(T), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(__bfloat162float(host[i]))) {
      std::fprintf(stderr, "%s: element %zu is not finite\n", what, i);
      return false;
    }
  std::printf("%s: %zu outputs, all finite\n", what, n);
  return true;
}

bool run_all() {
  bool ok = true;
  cudaStream_t stream;
  ISM_CUDA_CHECK(cudaStreamCreate(&stream));

  {  // Prefill: an ISM dialogue of 1000 tokens, dim 128 and an odd dim (100: element-wise loads).
    std::vector<index_t> bounds{0};
    while (bounds.back() < 1000) bounds.push_back(std::min<index_t>(1000, bounds.back() + 97));
    const ism::SegmentMask mask = ism::ism_mask(bounds);
    const ism::cuda::DeviceMask device_mask(mask, stream);
    for (index_t dim : {128, 100}) {
      const index_t n = mask.length(), heads = 4;
      T* q = random_tensor(size_t(n * heads * dim), 1);
      T* k = random_tensor(size_t(n * 2 * dim), 2);
      T* v = random_tensor(size_t(n * 2 * dim), 3);
      T* out = device_alloc<T>(size_t(n * heads * dim));
      float* lse = device_alloc<float>(size_t(n * heads));
      ism::AttentionOptions opt;
      opt.lse = lse;
      ism::cuda::attention<T>(ism::token_major<const T>(q, n, heads, dim), ism::token_major<const T>(k, n, 2, dim),
                              ism::token_major<const T>(v, n, 2, dim), ism::token_major(out, n, heads, dim),
                              device_mask, opt, stream, {}, Plain{});
      ISM_CUDA_CHECK(cudaStreamSynchronize(stream));
      ok = finite_output(out, size_t(n * heads * dim), dim == 128 ? "prefill dim 128" : "prefill dim 100") && ok;
      for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)lse}) ISM_CUDA_CHECK(cudaFree(p));
    }
  }
  {  // Decode: 2 new tokens, 32 query heads over 8 KV heads, 40000 cached keys, 16 splits, all modifiers.
    const index_t n_k = 40000, n_q = 2, q_heads = 32, kv_heads = 8, dim = 128;
    T* q = random_tensor(size_t(n_q * q_heads * dim), 4);
    T* k = random_tensor(size_t(n_k * kv_heads * dim), 5);
    T* v = random_tensor(size_t(n_k * kv_heads * dim), 6);
    T* out = device_alloc<T>(size_t(n_q * q_heads * dim));
    float* params = device_alloc<float>(size_t(2 * q_heads));
    std::vector<float> host(size_t(2 * q_heads));
    for (index_t h = 0; h < q_heads; ++h) {
      host[size_t(h)] = 0.01f * float(h % 8);  // slopes
      host[size_t(q_heads + h)] = float(h % 5) - 2.f;  // sinks
    }
    ISM_CUDA_CHECK(cudaMemcpy(params, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    const size_t ws_bytes = ism::cuda::workspace_bytes(n_q * q_heads, dim, 16);
    void* ws = device_alloc<char>(ws_bytes);
    ism::AttentionOptions opt;
    opt.softcap = 30.f;
    opt.alibi_slopes = params;
    opt.sinks = params + q_heads;
    ism::cuda::LaunchOptions lo;
    lo.kv_splits = 16;
    lo.workspace = {ws, ws_bytes};
    ism::cuda::attention<T>(ism::token_major<const T>(q, n_q, q_heads, dim),
                            ism::token_major<const T>(k, n_k, kv_heads, dim),
                            ism::token_major<const T>(v, n_k, kv_heads, dim), ism::token_major(out, n_q, q_heads, dim),
                            ism::causal_mask(), opt, stream, lo, Modified{});
    ISM_CUDA_CHECK(cudaStreamSynchronize(stream));
    ok = finite_output(out, size_t(n_q * q_heads * dim), "split decode with modifiers") && ok;

    // The same cache through a paged view (pages of 16 tokens, reversed).
    const index_t page = 16, pages = (n_k + page - 1) / page;
    std::vector<std::int32_t> table(static_cast<size_t>(pages));
    for (index_t b = 0; b < pages; ++b) table[size_t(b)] = std::int32_t(pages - 1 - b);
    std::int32_t* dtable = device_alloc<std::int32_t>(table.size());
    ISM_CUDA_CHECK(cudaMemcpy(dtable, table.data(), table.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
    T* kp = random_tensor(size_t(pages * page * kv_heads * dim), 7);
    T* vp = random_tensor(size_t(pages * page * kv_heads * dim), 8);
    const ism::PagedKV<T, std::int32_t> kv(kp, vp, pages, page, kv_heads, dim, dtable, n_k);
    ism::cuda::check_block_table(kv, stream);
    ism::cuda::attention<T>(ism::token_major<const T>(q, n_q, q_heads, dim), kv, ism::token_major(out, n_q, q_heads, dim),
                            ism::causal_mask(), {}, stream, lo, Plain{});
    ISM_CUDA_CHECK(cudaStreamSynchronize(stream));
    ok = finite_output(out, size_t(n_q * q_heads * dim), "paged split decode") && ok;

    // A batch: the paged decode beside a contiguous prefill chunk of 300 rows.
    std::vector<ism::cuda::AttentionRequest<T, ism::CausalMask>> reqs;
    const ism::CausalMask causal;
    T* q2 = random_tensor(size_t(300 * q_heads * dim), 9);
    T* out2 = device_alloc<T>(size_t(300 * q_heads * dim));
    reqs.push_back({ism::token_major<const T>(q, n_q, q_heads, dim), ism::token_major<const T>(k, n_k, kv_heads, dim),
                    ism::token_major<const T>(v, n_k, kv_heads, dim), ism::token_major(out, n_q, q_heads, dim),
                    &causal, -1, nullptr});
    reqs.push_back({ism::token_major<const T>(q2, 300, q_heads, dim), ism::token_major<const T>(k, 2000, kv_heads, dim),
                    ism::token_major<const T>(v, 2000, kv_heads, dim), ism::token_major(out2, 300, q_heads, dim),
                    &causal, 1000, nullptr});
    lo.kv_splits = 0;
    ism::cuda::attention_batch(reqs, {}, stream, lo, Plain{});
    ISM_CUDA_CHECK(cudaStreamSynchronize(stream));
    ok = finite_output(out2, size_t(300 * q_heads * dim), "batch: prefill chunk") && ok;
    ok = finite_output(out, size_t(n_q * q_heads * dim), "batch: decode") && ok;
    for (void* p : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)params, ws, (void*)dtable, (void*)kp, (void*)vp,
                    (void*)q2, (void*)out2})
      ISM_CUDA_CHECK(cudaFree(p));
  }
  ISM_CUDA_CHECK(cudaStreamDestroy(stream));
  return ok;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "cuda_sanitizer_cases: no CUDA device on this machine, nothing to run\n");
    return 1;
  }
  try {
    const bool ok = run_all();
    std::printf(ok ? "sanitizer cases: all ran\n" : "sanitizer cases: FAILED\n");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_sanitizer_cases: %s\n", e.what());
    return 1;
  }
}
