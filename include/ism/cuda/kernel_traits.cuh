#pragma once
// Tile shapes of the kernels, one set per compiled head dim (64, 80, 96, 128,
// 256). Any other dim up to 256 runs on the smallest of these that holds it,
// its extra columns zero-filled in shared memory (zeros change no dot product
// and the output never stores them).
#include "ism/core/config.hpp"

namespace ism::cuda {

inline constexpr int kMaxHeadDim = 256;

// The compiled head dims, smallest first.
template <int... Dims>
struct HeadDims {
  static constexpr bool has(int d) { return ((d == Dims) || ...); }
};
using AllHeadDims = HeadDims<64, 80, 96, 128, 256>;

// The kernel dim a head dim runs on (0 for dims the kernels do not take).
constexpr int kernel_dim(index_t dim) {
  return dim <= 0 ? 0 : dim <= 64 ? 64 : dim <= 80 ? 80 : dim <= 96 ? 96 : dim <= 128 ? 128 : dim <= 256 ? 256 : 0;
}

namespace detail {

// The prefill kernel: one thread block per (query block, query head, key
// split), 16 query rows per warp, all warps sharing each K/V tile.
template <int kDim_, int kBlockM_, int kBlockN_>
struct FwdTraits {
  static constexpr int kDim = kDim_;           // head dim held in shared memory (multiple of 16)
  static constexpr int kBlockM = kBlockM_;     // query rows per thread block
  static constexpr int kBlockN = kBlockN_;     // keys per tile
  static constexpr int kWarps = kBlockM / 16;  // each warp owns 16 query rows (one mma M)
  static constexpr int kThreads = kWarps * 32;
  // Rows padded by 16 bytes: ldmatrix's 8 row addresses then fall in 8
  // different 4-bank groups (row stride = 4 banks mod 32), so no conflicts.
  static constexpr int kStride = kDim + 8;
  static constexpr int kStages = 2;  // K/V double buffer: load tile i+1 while computing tile i
  static constexpr int kSmemElems = kBlockM * kStride + kStages * 2 * kBlockN * kStride;
  static_assert(kDim % 16 == 0 && kBlockN % 16 == 0 && kBlockM % 16 == 0, "tiles are whole mma shapes");
};

// 256 columns take smaller tiles so that shared memory stays under the
// 163 KiB an sm_80 block may have.
template <int D>
using FwdTraitsFor = FwdTraits<D, (D > 128 ? 64 : 128), (D > 128 ? 32 : 64)>;

// The decode kernel: one thread block per (16 packed rows of one KV head's
// query heads and tokens, KV head, key split). Every warp computes: the
// block's key tiles are dealt out to the warps, each with its own double
// buffer and softmax state, and the warps' states merge at the end.
template <int kDim_, int kBlockN_>
struct DecodeTraits {
  static constexpr int kDim = kDim_;
  static constexpr int kBlockN = kBlockN_;  // keys per warp tile
  static constexpr int kRows = 16;          // packed (token, head) rows per block: one mma M
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStride = kDim + 8;
  static constexpr int kStages = 2;
  static constexpr int kWarpElems = kStages * 2 * kBlockN * kStride;  // one warp's K/V stages
  static constexpr int kQElems = kRows * kStride;
  // After the loop the K/V space holds each warp's fp32 state for the merge:
  // o [kRows][kDim], then m and l [kRows].
  static constexpr int kStateFloats = kRows * (kDim + 2);
  static constexpr int kSmemElems = kQElems + kWarps * kWarpElems;
  static_assert(kWarps * kStateFloats * 4 <= kWarps * kWarpElems * 2, "the merge state fits in the K/V space");
  static_assert(kDim % 16 == 0 && kBlockN % 16 == 0, "tiles are whole mma shapes");
};

template <int D>
using DecodeTraitsFor = DecodeTraits<D, (D > 128 ? 16 : 32)>;

// Most packed rows (query tokens x query heads of one KV head) the decode
// kernel takes before the prefill kernel is the better fit.
inline constexpr index_t kDecodeMaxRows = 64;

}  // namespace detail
}  // namespace ism::cuda
