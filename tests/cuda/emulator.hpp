#pragma once
// A CPU emulation of the handful of CUDA features the kernels use, so that
// their own source (kernel_fwd.cuh, decode.cuh, merge.cuh) runs, slowly, on
// any machine: CI has nvcc but no GPU, and this is where the kernels' index
// arithmetic, masking, online softmax, split/merge and epilogues actually run.
//
// The CUDA runtime itself is emulated too (emulated_runtime.cpp, which the
// test links instead of libcudart): "device" memory is host memory, streams
// run at once, and every call is counted (RuntimeCounts), so a test can check
// what the library's host code asks of the runtime per call.
//
// Every CUDA thread of a block is a fiber (ucontext) on the calling OS
// thread; the blocks of a grid run one after another, so one static array is
// every block's shared memory. A fiber runs until it meets a barrier
// (__syncthreads, __syncwarp, or a warp collective) and then yields; the
// scheduler resumes the fibers round-robin, so a barrier opens once all its
// threads have arrived. Warp instructions (ldmatrix, mma.sync, shfl) are
// collectives: each lane posts its operand, the warp meets at a barrier, each
// lane computes its own result from the PTX ISA's fragment tables, and the
// warp meets again before the slots are reused. cp.async copies at once (so
// it cannot show a missing wait). One OS thread and no lock: a test of a few
// thousand thread blocks takes seconds and loads one core.
// Include this before any ism/cuda header.
#define ISM_CUDA_HOST_EMULATION 1
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <ucontext.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

// The emulated thread's coordinates: the scheduler sets them before it
// resumes a fiber.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace ism_emu {

// Calls into the emulated CUDA runtime, by kind.
struct RuntimeCounts {
  std::atomic<long> allocations{0};     // cudaMalloc, cudaMallocAsync
  std::atomic<long> frees{0};           // cudaFree, cudaFreeAsync
  std::atomic<long> copies{0};          // cudaMemcpy(Async), cudaMemsetAsync
  std::atomic<long> bytes_copied{0};
  std::atomic<long> syncs{0};           // anything that waits for the device
  std::atomic<long> pointer_queries{0};  // cudaPointerGetAttributes
  std::atomic<long> device_queries{0};   // cudaGetDevice, cudaDeviceGetAttribute
  std::atomic<long> func_attributes{0};  // cudaFuncSetAttribute
  std::atomic<long> launches{0};
  std::atomic<long> error_polls{0};  // cudaGetLastError (returns at once)
};
RuntimeCounts& counts();
inline void count_launch() { ++counts().launches; }
// True for memory from the emulated cudaMalloc / cudaMallocAsync.
bool is_device_memory(const void* p);

// The fibers of the block being run.
struct Scheduler {
  ucontext_t main{};
  std::vector<ucontext_t> fibers;
  std::vector<char> done;
  std::vector<std::unique_ptr<char[]>> stacks;
  int current = 0;
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
};
inline Scheduler* scheduler = nullptr;

// Back to the scheduler; it resumes this fiber on its next round.
inline void yield() { swapcontext(&scheduler->fibers[size_t(scheduler->current)], &scheduler->main); }

// The last of `expected` threads to arrive opens it; the others yield until
// then. Atomic only so that the loop re-reads the generation after a yield.
struct Barrier {
  int expected;
  int arrived = 0;
  std::atomic<unsigned> generation{0};
  explicit Barrier(int n) : expected(n) {}
  void arrive_and_wait() {
    const unsigned g = generation.load(std::memory_order_relaxed);
    if (++arrived == expected) {
      arrived = 0;
      generation.store(g + 1, std::memory_order_relaxed);
      return;
    }
    while (generation.load(std::memory_order_relaxed) == g) yield();
  }
};

struct Warp {
  Barrier meet{32};
  std::array<const void*, 32> address{};
  std::array<std::array<unsigned, 4>, 32> a{};
  std::array<std::array<unsigned, 2>, 32> b{};
  std::array<float, 32> value{};
};

struct Block {
  Barrier meet;
  std::vector<std::unique_ptr<Warp>> warps;
  explicit Block(int threads) : meet(threads) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>());
  }
};

inline Block* block = nullptr;
inline int lane = 0, warp = 0;
inline Warp& this_warp() { return *block->warps[size_t(warp)]; }

inline void fiber_main() {
  scheduler->entry(scheduler->arg);
  scheduler->done[size_t(scheduler->current)] = 1;
}  // returns to uc_link: the scheduler

// A fresh fiber that runs fiber_main on `stack`, then returns to `link`. Out
// of line: getcontext returns twice, which would put its caller's loop
// variables at risk (and gcc says so).
[[gnu::noinline]] inline void start_fiber(ucontext_t& f, char* stack, size_t size, ucontext_t* link) {
  getcontext(&f);
  f.uc_stack.ss_sp = stack;
  f.uc_stack.ss_size = size;
  f.uc_link = link;
  makecontext(&f, fiber_main, 0);
}

// Runs `kernel()` as every thread of every block of `grid`.
template <class Kernel>
void run_grid(dim3 grid, int threads, Kernel kernel) {
  constexpr size_t kStack = 256 * 1024;
  Scheduler s;
  s.fibers.resize(size_t(threads));
  s.done.resize(size_t(threads));
  for (int t = 0; t < threads; ++t) s.stacks.emplace_back(new char[kStack]);
  s.entry = [](void* k) { (*static_cast<Kernel*>(k))(); };
  s.arg = &kernel;
  Scheduler* outer = scheduler;
  scheduler = &s;
  blockDim = dim3(unsigned(threads));
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b(threads);
        block = &b;
        blockIdx = {x, y, z};
        for (int t = 0; t < threads; ++t) {
          start_fiber(s.fibers[size_t(t)], s.stacks[size_t(t)].get(), kStack, &s.main);
          s.done[size_t(t)] = 0;
        }
        for (int left = threads; left > 0;)
          for (int t = 0; t < threads; ++t) {
            if (s.done[size_t(t)]) continue;
            s.current = t;
            threadIdx = {unsigned(t), 0, 0};
            lane = t % 32;
            warp = t / 32;
            swapcontext(&s.main, &s.fibers[size_t(t)]);
            if (s.done[size_t(t)]) --left;
          }
      }
  scheduler = outer;
}

// One 16-bit element as float, in the kernel's element type.
template <class T>
float widen(std::uint16_t bits) {
  if constexpr (std::is_same_v<T, __half>) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  } else {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
}

inline unsigned pack_bits(std::uint16_t lo, std::uint16_t hi) { return unsigned(lo) | (unsigned(hi) << 16); }

}  // namespace ism_emu

inline void __syncthreads() { ism_emu::block->meet.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ism_emu::this_warp().meet.arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  auto& w = ism_emu::this_warp();
  w.value[size_t(ism_emu::lane)] = v;
  w.meet.arrive_and_wait();
  const float r = w.value[size_t(ism_emu::lane ^ lane_mask)];
  w.meet.arrive_and_wait();
  return r;
}

namespace ism::cuda::detail {

// ldmatrix.x4: lane L posts the start of row L % 8 of matrix L / 8 and gets,
// from matrix i, (L/4, 2(L%4)) and (L/4, 2(L%4)+1); transposed: (2(L%4), L/4)
// and (2(L%4)+1, L/4).
inline void emulate_ldmatrix(unsigned (&r)[4], const void* row_address, bool trans) {
  auto& w = ism_emu::this_warp();
  const int L = ism_emu::lane;
  w.address[size_t(L)] = row_address;
  w.meet.arrive_and_wait();
  auto element = [&](int i, int row, int col) {
    return static_cast<const std::uint16_t*>(w.address[size_t(8 * i + row)])[col];
  };
  for (int i = 0; i < 4; ++i) {
    const int g = L / 4, c = 2 * (L % 4);
    r[i] = trans ? ism_emu::pack_bits(element(i, c, g), element(i, c + 1, g))
                 : ism_emu::pack_bits(element(i, g, c), element(i, g, c + 1));
  }
  w.meet.arrive_and_wait();
}
inline void ldmatrix_x4(unsigned (&r)[4], const void* p) { emulate_ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) { emulate_ldmatrix(r, p, true); }

// mma.m16n8k16.row.col.f32, g = L/4, t = L%4: a_i = (g + 8(i%2), 2t + 8(i/2)
// and +1), b_i = (k = 2t + 8i and +1, n = g), c_i = (g + 8(i/2), 2t + i%2).
template <class T>
void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  auto& w = ism_emu::this_warp();
  const int L = ism_emu::lane;
  for (int i = 0; i < 4; ++i) w.a[size_t(L)][size_t(i)] = a[i];
  w.b[size_t(L)] = {b0, b1};
  w.meet.arrive_and_wait();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h)
        A[g + 8 * (i % 2)][2 * t + 8 * (i / 2) + h] =
            ism_emu::widen<T>(std::uint16_t(w.a[size_t(l)][size_t(i)] >> (16 * h)));
    for (int i = 0; i < 2; ++i)
      for (int h = 0; h < 2; ++h)
        B[2 * t + 8 * i + h][g] = ism_emu::widen<T>(std::uint16_t(w.b[size_t(l)][size_t(i)] >> (16 * h)));
  }
  w.meet.arrive_and_wait();
  const int g = L / 4, t = L % 4;
  for (int i = 0; i < 4; ++i) {
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += A[g + 8 * (i / 2)][k] * B[k][2 * t + i % 2];
    c[i] += sum;
  }
}

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  if (valid) std::memcpy(smem, gmem, 16);
  else std::memset(smem, 0, 16);
}
inline void cp_async_commit() {}
inline void cp_async_wait_all() {}

// Every block's dynamic shared memory (blocks run one at a time).
alignas(16) inline unsigned char smem_raw[256 * 1024];

}  // namespace ism::cuda::detail

namespace ism_emu {

// ism::cuda's launches land here (launch.cuh calls it under
// ISM_CUDA_HOST_EMULATION): the kernel runs on the emulator at once, as if
// its stream were already idle.
template <class P>
void launch(void (*kernel)(P), dim3 grid, int threads, size_t smem, cudaStream_t, const P& params) {
  if (smem > sizeof(ism::cuda::detail::smem_raw)) throw std::runtime_error("emulated launch: shared memory too large");
  count_launch();
  run_grid(grid, threads, [&] { kernel(params); });
}

}  // namespace ism_emu

#include "ism/cuda.hpp"
