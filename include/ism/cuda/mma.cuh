#pragma once
// The warp-level instructions the kernel is built from (sm_80 and newer):
// ldmatrix (shared memory -> mma fragments), mma.sync m16n8k16 with fp32
// accumulators, and cp.async (global -> shared without a register round trip).
//
// Fragment layout of mma.m16n8k16 for lane L, g = L / 4, t = L % 4 (PTX ISA,
// "Matrix Fragments for mma.m16n8k16"):
//   A (16x16, row-major): a0 = (g, 2t..2t+1)   a1 = (g+8, 2t..)   a2 = (g, 2t+8..)   a3 = (g+8, 2t+8..)
//   B (16x8, k x n):      b0 = (2t..2t+1, g)   b1 = (2t+8..2t+9, g)
//   C (16x8, fp32):       c0,c1 = (g, 2t..2t+1)   c2,c3 = (g+8, 2t..2t+1)
// Two C tiles side by side (16x16) are exactly the A fragment of the next
// product, which is how P = softmax(S) feeds P.V without leaving registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "ism/cuda/check.cuh"

#if !defined(ISM_CUDA_HOST_EMULATION)  // the emulator supplies its own versions
namespace ism::cuda::detail {

__device__ inline unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane L gives the address of row L % 8 of matrix L / 8.
__device__ inline void ldmatrix_x4(unsigned (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row_address)));
}

// As above, each matrix transposed on the way (for B operands stored k-major).
__device__ inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row_address)));
}

// c += a * b on one 16x8x16 tile.
template <class T>
__device__ inline void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_16816: fp16 or bf16 only");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 16 bytes global -> shared, asynchronously; with `valid` false the 16 bytes
// are zero-filled and nothing is read (rows past the end, columns past dim).
__device__ inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace ism::cuda::detail
#endif
