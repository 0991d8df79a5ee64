#pragma once
// What the fused kernel is measured against, and the helpers every benchmark
// binary shares:
//   - EigenAttention: the unfused path a user would write with Eigen (GEMM,
//     additive dense mask, row softmax, GEMM), materialising the N x N scores;
//   - Sgemm / AttentionGemms: the machine's SGEMM rate through Eigen and, when
//     ISM_HAVE_OPENBLAS is defined, OpenBLAS: the ceiling a fused kernel that
//     does the same multiply-adds can approach;
//   - random Q/K/V buffers, mask statistics from ism::BlockMap, and counters.
//
// Counters (names the report reads from the JSON):
//   flops    useful FLOP/s: 4 * dim * visible (query, key) pairs * query heads
//            per second. Only pairs the mask lets through count, so a kernel
//            that computes masked-out scores gains nothing from them.
//   bytes_per_second   bytes read per second, for memory-bound cases.
//   skipped  fraction of 64 x 64 tiles of the score matrix that are Empty.
//   density  visible pairs / (n_q * n_k).
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ism/ism.hpp"

#ifdef ISM_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace ism::bench {

// Tile edge used for the reported skipped-tile fraction. It is a property of
// the mask at a typical kernel tile size, not of any particular kernel.
inline constexpr index_t kStatTile = 64;

// ---------------------------------------------------------------------------
// Data

// Uniform [-1, 1) values, rounded to T. Fixed seeds: benchmarks must be
// repeatable run to run, and the values do not change the speed. splitmix64
// rather than <random>: a 64k-token cache is 10^8 values, filled per case.
template <class T>
void fill_random(std::vector<T>& buf, std::uint64_t seed) {
  std::uint64_t state = seed;
  for (T& x : buf) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    // Top 24 bits -> [0, 1) exactly representable in float, then [-1, 1).
    x = from_float<T>(float(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

// Q, K, V and output of one attention call, all [tokens, heads, dim] packed.
template <class T>
struct AttentionData {
  index_t n_q, n_k, q_heads, kv_heads, dim;
  std::vector<T> q_buf, k_buf, v_buf, out_buf;

  AttentionData(index_t n_q_, index_t n_k_, index_t q_heads_, index_t kv_heads_, index_t dim_, std::uint64_t seed = 42)
      : n_q(n_q_),
        n_k(n_k_),
        q_heads(q_heads_),
        kv_heads(kv_heads_),
        dim(dim_),
        q_buf(size_t(n_q_ * q_heads_ * dim_)),
        k_buf(size_t(n_k_ * kv_heads_ * dim_)),
        v_buf(size_t(n_k_ * kv_heads_ * dim_)),
        out_buf(size_t(n_q_ * q_heads_ * dim_)) {
    fill_random(q_buf, seed);
    fill_random(k_buf, seed + 1);
    fill_random(v_buf, seed + 2);
  }

  HeadsView<const T> q() const { return token_major<const T>(q_buf.data(), n_q, q_heads, dim); }
  HeadsView<const T> k() const { return token_major<const T>(k_buf.data(), n_k, kv_heads, dim); }
  HeadsView<const T> v() const { return token_major<const T>(v_buf.data(), n_k, kv_heads, dim); }
  HeadsView<T> out() { return token_major<T>(out_buf.data(), n_q, q_heads, dim); }
};

// ---------------------------------------------------------------------------
// The mask kinds of the standard cases

// Boundaries {0, ..., n} of `segments` equal segments (rounded down).
inline std::vector<index_t> equal_boundaries(index_t n, index_t segments) {
  std::vector<index_t> b{0};
  for (index_t s = 1; s < segments; ++s) b.push_back(n * s / segments);
  b.push_back(n);
  return b;
}

// ISM over [0, n) cut into `segments` equal segments, alternating query
// (Bidirectional) and answer (Causal).
inline SegmentMask equal_ism_mask(index_t n, index_t segments) { return ism_mask(equal_boundaries(n, segments)); }

// Mask kinds by name: "none" (ism::full_mask), "causal", "prefix" (prefix-LM
// with P = n/2) and "ismS" (ISM with S equal segments, e.g. "ism16"). Calls
// f(mask) with the concrete mask type, so each kind runs its own instantiation.
template <class F>
void with_mask(const std::string& kind, index_t n, F&& f) {
  if (kind == "none") return f(full_mask());
  if (kind == "causal") return f(causal_mask());
  if (kind == "prefix") return f(prefix_mask(n / 2));
  if (kind.rfind("ism", 0) == 0 && kind.size() > 3) return f(equal_ism_mask(n, std::stoll(kind.substr(3))));
  detail::fail("ism::bench::with_mask", "unknown mask kind '", kind, "'");
}

inline const std::vector<std::string>& standard_mask_kinds() {
  static const std::vector<std::string> kinds{"none", "causal", "prefix", "ism4", "ism16", "ism64"};
  return kinds;
}

// ---------------------------------------------------------------------------
// Mask statistics and counters

template <class Mask>
BlockMapStats mask_stats(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset) {
  return BlockMap(mask, n_q, n_k, q_offset, kStatTile, kStatTile).stats();
}

// 2 FLOPs per multiply-add, one dot product for the score and one axpy into
// the output per visible pair and dimension.
inline double attention_flops(const BlockMapStats& s, index_t q_heads, index_t dim) {
  return 4.0 * double(dim) * double(s.visible_pairs) * double(q_heads);
}

inline void set_attention_counters(benchmark::State& state, const BlockMapStats& s, index_t q_heads, index_t dim) {
  state.counters["flops"] =
      benchmark::Counter(attention_flops(s, q_heads, dim), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["skipped"] = benchmark::Counter(s.skipped_fraction());
  state.counters["density"] = benchmark::Counter(s.density());
}

// For GEMM ceilings: every multiply-add is useful.
inline void set_flops_counter(benchmark::State& state, double flops_per_iteration) {
  state.counters["flops"] = benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

// Keeps the compiler from dropping a computation whose result is never read.
template <class T>
void keep(std::vector<T>& buf) {
  benchmark::DoNotOptimize(buf.data());
  benchmark::ClobberMemory();
}

// ---------------------------------------------------------------------------
// Registration and main

// Every case is timed on the wall clock: the kernels run their own threads,
// whose CPU time the benchmark's thread does not see.
template <class F>
void register_case(const std::string& name, benchmark::TimeUnit unit, F&& fn) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(fn))->Unit(unit)->UseRealTime();
}

// main() of every binary once its cases are registered.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// ---------------------------------------------------------------------------
// GEMM backends

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using StridedMap = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

enum class Blas { Eigen, OpenBlas };

inline const char* to_string(Blas b) { return b == Blas::Eigen ? "eigen" : "openblas"; }

inline bool blas_available(Blas b) {
#ifdef ISM_HAVE_OPENBLAS
  (void)b;
  return true;
#else
  return b == Blas::Eigen;
#endif
}

// Eigen parallelises its GEMM with OpenMP only, and so do the baselines' own
// loops; without OpenMP setNbThreads is a no-op and a 2-thread baseline would
// silently measure one thread, so such cases are not registered.
inline bool openmp_threads_work(int threads) {
#ifdef _OPENMP
  (void)threads;
  return true;
#else
  return threads <= 1;
#endif
}

inline void set_blas_threads(Blas b, int threads) {
  if (b == Blas::Eigen) Eigen::setNbThreads(threads);
#ifdef ISM_HAVE_OPENBLAS
  else
    openblas_set_num_threads(threads);
#endif
}

// The kernel set OpenBLAS picked at load time (OPENBLAS_CORETYPE overrides it;
// Debian's build picks Haswell kernels on AVX-512 machines unless told
// OPENBLAS_CORETYPE=SkylakeX).
inline std::string blas_label(Blas b) {
#ifdef ISM_HAVE_OPENBLAS
  if (b == Blas::OpenBlas) return std::string("openblas:") + openblas_get_corename();
#endif
  return to_string(b);
}

// C[m x n] = alpha * A[m x k] * op(B), all row-major with explicit leading
// dimensions; op(B) = B^T (B is n x k) when b_transposed, else B (k x n).
inline void sgemm(Blas backend, index_t m, index_t n, index_t k, float alpha, const float* a, index_t lda,
                  const float* b, index_t ldb, bool b_transposed, float* c, index_t ldc) {
  if (backend == Blas::OpenBlas) {
#ifdef ISM_HAVE_OPENBLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), alpha, a,
                int(lda), b, int(ldb), 0.f, c, int(ldc));
    return;
#else
    detail::fail("ism::bench::sgemm", "OpenBLAS was not found at configure time");
#endif
  }
  ConstStridedMap A(a, m, k, Eigen::OuterStride<>(lda));
  StridedMap C(c, m, n, Eigen::OuterStride<>(ldc));
  if (b_transposed) {
    ConstStridedMap B(b, n, k, Eigen::OuterStride<>(ldb));
    C.noalias() = alpha * A * B.transpose();
  } else {
    ConstStridedMap B(b, k, n, Eigen::OuterStride<>(ldb));
    C.noalias() = alpha * A * B;
  }
}

// The two GEMMs of unmasked attention for one head, repeated per head:
// S = Q K^T (N x dim x N) and O = S V (N x N x dim), 4 * N^2 * dim FLOPs a head.
// This is the ceiling for a kernel on the same shape: it does every useful
// multiply-add at the machine's GEMM rate and nothing else (no softmax, no mask).
class AttentionGemms {
 public:
  AttentionGemms(index_t n_q, index_t n_k, index_t heads, index_t dim)
      : n_q_(n_q),
        n_k_(n_k),
        heads_(heads),
        dim_(dim),
        q_(size_t(n_q * dim)),
        k_(size_t(n_k * dim)),
        v_(size_t(n_k * dim)),
        o_(size_t(n_q * dim)),
        s_(size_t(n_q * n_k)) {
    fill_random(q_, 1);
    fill_random(k_, 2);
    fill_random(v_, 3);
  }
  double flops() const { return 4.0 * double(n_q_) * double(n_k_) * double(dim_) * double(heads_); }
  void run(Blas b) {
    for (index_t h = 0; h < heads_; ++h) {
      sgemm(b, n_q_, n_k_, dim_, 1.f, q_.data(), dim_, k_.data(), dim_, true, s_.data(), n_k_);
      sgemm(b, n_q_, dim_, n_k_, 1.f, s_.data(), n_k_, v_.data(), dim_, false, o_.data(), dim_);
    }
    keep(o_);
  }

 private:
  index_t n_q_, n_k_, heads_, dim_;
  std::vector<float> q_, k_, v_, o_, s_;
};

// A square SGEMM: the machine's best-case GEMM rate.
class SquareGemm {
 public:
  explicit SquareGemm(index_t n) : n_(n), a_(size_t(n * n)), b_(size_t(n * n)), c_(size_t(n * n)) {
    fill_random(a_, 4);
    fill_random(b_, 5);
  }
  double flops() const { return 2.0 * double(n_) * double(n_) * double(n_); }
  void run(Blas b) {
    sgemm(b, n_, n_, n_, 1.f, a_.data(), n_, b_.data(), n_, false, c_.data(), n_);
    keep(c_);
  }

 private:
  index_t n_;
  std::vector<float> a_, b_, c_;
};

// ---------------------------------------------------------------------------
// Unfused attention with Eigen

// What a user without a fused kernel writes: per head, S = scale * Q K^T as an
// Eigen GEMM on maps of the strided views, S += dense additive mask, row
// softmax, O = P V. It materialises two n_q x n_k float matrices (scores and
// mask), which is the cost a fused kernel avoids. Non-fp32 inputs are widened
// to fp32 per head first, since Eigen has no fast bf16/fp16 GEMM.
class EigenAttention {
 public:
  template <class Mask>
  EigenAttention(const Mask& mask, index_t n_q, index_t n_k, index_t q_offset)
      : mask_(dense_mask<float>(mask, n_q, n_k, q_offset)), scores_(n_q, n_k) {}

  template <class T>
  void run(HeadsView<const T> q, HeadsView<const T> k, HeadsView<const T> v, HeadsView<T> out, int threads) {
    Eigen::setNbThreads(threads);
    const index_t n_q = q.tokens, n_k = k.tokens, dim = q.dim, group = q.heads / k.heads;
    const float scale = 1.f / std::sqrt(float(dim));
    for (index_t h = 0; h < q.heads; ++h) {
      const index_t kh = h / group;
      if constexpr (std::is_same_v<T, float>) {
        ConstStridedMap Q(q.row(0, h), n_q, dim, Eigen::OuterStride<>(q.token_stride));
        ConstStridedMap K(k.row(0, kh), n_k, dim, Eigen::OuterStride<>(k.token_stride));
        ConstStridedMap V(v.row(0, kh), n_k, dim, Eigen::OuterStride<>(v.token_stride));
        StridedMap O(out.row(0, h), n_q, dim, Eigen::OuterStride<>(out.token_stride));
        scores_.noalias() = scale * Q * K.transpose();
        softmax_rows(threads);
        O.noalias() = scores_ * V;
      } else {
        widen(q, h, n_q, q_f_);
        widen(k, kh, n_k, k_f_);
        widen(v, kh, n_k, v_f_);
        scores_.noalias() = scale * q_f_ * k_f_.transpose();
        softmax_rows(threads);
        o_f_.noalias() = scores_ * v_f_;
        for (index_t t = 0; t < n_q; ++t)
          for (index_t d = 0; d < dim; ++d) out(t, h, d) = from_float<T>(o_f_(t, d));
      }
    }
  }

 private:
  template <class T>
  static void widen(HeadsView<const T> x, index_t h, index_t n, RowMatrix& dst) {
    dst.resize(n, x.dim);
    for (index_t t = 0; t < n; ++t)
      for (index_t d = 0; d < x.dim; ++d) dst(t, d) = to_float(x(t, h, d));
  }

  void softmax_rows(int threads) {
    scores_ += mask_;
    const index_t rows = scores_.rows();
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (index_t r = 0; r < rows; ++r) {
      auto row = scores_.row(r);
      const float m = row.maxCoeff();
      // A row that sees no key is all -inf: exp(-inf - -inf) would be NaN, and
      // the contract says such a row is 0.
      if (m == -std::numeric_limits<float>::infinity()) {
        row.setZero();
        continue;
      }
      row = (row.array() - m).exp();
      row /= row.sum();
    }
  }

  RowMatrix mask_, scores_;
  RowMatrix q_f_, k_f_, v_f_, o_f_;
};

// ---------------------------------------------------------------------------
// The timed loops every attention case shares

// ism::attention (fused) on data under mask; sets the attention counters.
template <class T, class Mask>
void time_fused(benchmark::State& state, AttentionData<T>& data, const Mask& mask, int threads, index_t q_offset) {
  AttentionOptions opt;
  opt.threads = threads;
  opt.q_offset = q_offset;
  for (auto _ : state) {
    attention(data.q(), data.k(), data.v(), data.out(), mask, opt);
    keep(data.out_buf);
  }
  set_attention_counters(state, mask_stats(mask, data.n_q, data.n_k, q_offset), data.q_heads, data.dim);
}

// The unfused Eigen path on the same problem (its dense mask built untimed).
template <class T, class Mask>
void time_unfused(benchmark::State& state, AttentionData<T>& data, const Mask& mask, int threads, index_t q_offset) {
  EigenAttention eigen(mask, data.n_q, data.n_k, q_offset);
  for (auto _ : state) {
    eigen.run(data.q(), data.k(), data.v(), data.out(), threads);
    keep(data.out_buf);
  }
  set_attention_counters(state, mask_stats(mask, data.n_q, data.n_k, q_offset), data.q_heads, data.dim);
}

}  // namespace ism::bench
