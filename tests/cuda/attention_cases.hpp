#pragma once
// The GPU tests' cases, shared by the real GPU run (attention_test.cpp) and the
// CPU emulation of the kernel (emulated_kernel_test.cpp): one case is random
// data in strided host tensors, a run of the kernel through `run`, and a
// comparison with the fp64 reference.
//
// `run(q, k, v, out, mask_arg, options, launch_arg)` runs the kernel on host
// tensors; options' lse, sinks and alibi_slopes are host pointers, and a
// LaunchArg with page_size > 0 asks for K/V through a paged cache that `run`
// builds from k and v (PagedCopy).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/testing.hpp"
#include "cuda/case_data.hpp"
#include "cuda/mask_arg.hpp"
#include "ism/reference.hpp"

namespace ism_cuda_test {

using ism::index_t;
using ism_test::Rng;
using ism_test::Tensor;


// Unit roundoff of the storage type. Bounds, as for the CPU fp16/bf16 paths:
// q, k, v are exact in T; scores, softmax and sums are fp32 (error ~1e-6);
// the kernel rounds the probabilities P to T before P.V (relative error u
// each, so at most u * max|v| on the output) and rounds the output to T
// (u * |out|). With |v| <= 1 the error is below 2u; the bound is 4u, which
// leaves room for fp32 accumulation over long rows and is still far below
// what a wrong mask (a missing or extra key moves a row by ~1/n_visible) or
// a wrong fragment layout (errors of order 1) produces.
template <class T>
double unit_roundoff() {
  return std::is_same_v<T, Eigen::bfloat16> ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
}

struct Case {
  index_t n_q = 1, n_k = 1, q_heads = 1, kv_heads = 1, dim = 64;
  index_t q_offset = -1;  // -1: the default (the cache's tail)
  bool q_token_major = true, kv_token_major = true, out_token_major = true;
  index_t pad = 0;  // extra elements per row/head: irregular strides
  float scale = 0.f;
  LaunchArg launch;
  bool want_lse = true;
  float softcap = 0.f;
  bool alibi = false, sinks = false;  // random slopes / sink logits per query head
  std::string describe() const {
    std::ostringstream os;
    os << "n_q " << n_q << " n_k " << n_k << " heads " << q_heads << "/" << kv_heads << " dim " << dim
       << " q_offset " << q_offset << " layouts " << q_token_major << kv_token_major << out_token_major << " pad "
       << pad << " scale " << scale << " kv_splits " << launch.kv_splits << " path " << int(launch.path)
       << " page_size " << launch.page_size << (launch.table64 ? " (int64 table)" : "") << " softcap " << softcap
       << " alibi " << alibi << " sinks " << sinks;
    return os.str();
  }
};

// The host policy of a MaskArg, for the reference: f(policy).
template <class F>
void with_host_mask(const MaskArg& arg, F&& f) {
  auto windowed = [&](const auto& m) {
    if (arg.window > 0) f(LocalWindow<std::decay_t<decltype(m)>>{m, arg.window});
    else f(m);
  };
  switch (arg.kind) {
    case MaskKind::Full: return windowed(ism::full_mask());
    case MaskKind::Causal: return windowed(ism::causal_mask());
    case MaskKind::Prefix: return windowed(ism::prefix_mask(arg.prefix));
    case MaskKind::Segments: return windowed(arg.segments->bounds());
  }
}

const char* mask_name(MaskKind k) {
  switch (k) {
    case MaskKind::Full: return "full";
    case MaskKind::Causal: return "causal";
    case MaskKind::Prefix: return "prefix";
    case MaskKind::Segments: return "segments";
  }
  return "?";
}

// Runs one case through `run` and against reference_attention_into<T,
// double, double>. `poison_keys` are overwritten with NaN after the reference
// ran (they must be keys no row sees); `nan_keys` before it (visible NaN keys:
// every row that sees one must come out NaN with a NaN LSE, as in the
// reference, whatever the splits).
template <class T, class Run>
void check_case(Run&& run, Rng& rng, const Case& c, const MaskArg& arg, const std::vector<index_t>& poison_keys = {},
                const std::vector<index_t>& nan_keys = {}) {
  SCOPED_TRACE(::testing::Message() << ism::type_name<T>() << " " << mask_name(arg.kind) << " window " << arg.window
                                    << " " << c.describe());
  Tensor<T> q(c.n_q, c.q_heads, c.dim, c.q_token_major, c.pad);
  Tensor<T> k(c.n_k, c.kv_heads, c.dim, c.kv_token_major, c.pad);
  Tensor<T> v(c.n_k, c.kv_heads, c.dim, c.kv_token_major, c.pad);
  Tensor<T> out(c.n_q, c.q_heads, c.dim, c.out_token_major, c.pad);
  q.fill_random(rng, -1.5, 1.5);
  k.fill_random(rng, -1.5, 1.5);
  v.fill_random(rng, -1, 1);
  // A sentinel in every element of out's buffer: the view's elements must be
  // overwritten, the padding between them must survive.
  const T sentinel = T(7.0f);
  std::fill(out.buf.begin(), out.buf.end(), sentinel);
  const T nan = T(std::numeric_limits<float>::quiet_NaN());
  for (index_t j : nan_keys)
    for (index_t h = 0; h < c.kv_heads; ++h) k.view(j, h, rng.uniform(0, c.dim - 1)) = nan;

  ism::AttentionOptions opt;
  opt.q_offset = c.q_offset;
  opt.scale = c.scale;
  opt.softcap = c.softcap;
  std::vector<float> slopes, sinks;
  for (index_t h = 0; h < c.q_heads; ++h) {
    slopes.push_back(float(rng.real(0.0, 0.5)));
    // Some heads without a sink (-inf), some with one far above the scores.
    sinks.push_back(h % 4 == 3 ? -std::numeric_limits<float>::infinity() : float(rng.real(-3, h % 4 == 2 ? 30 : 3)));
  }
  if (c.alibi) opt.alibi_slopes = slopes.data();
  if (c.sinks) opt.sinks = sinks.data();
  Tensor<double> want(c.n_q, c.q_heads, c.dim);
  std::vector<double> want_lse(size_t(c.q_heads * c.n_q));
  with_host_mask(arg, [&](const auto& host_mask) {
    ism::reference_attention_into<T, double, double>(q.cview(), k.cview(), v.cview(), want.view, host_mask, opt,
                                                     want_lse.data());
  });
  for (index_t j : poison_keys)
    for (index_t h = 0; h < c.kv_heads; ++h)
      for (index_t d = 0; d < c.dim; ++d) k.view(j, h, d) = v.view(j, h, d) = nan;

  std::vector<float> got_lse(size_t(c.q_heads * c.n_q), 123.f);
  opt.lse = c.want_lse ? got_lse.data() : nullptr;
  run(q.cview(), k.cview(), v.cview(), out.view, arg, opt, c.launch);

  const double u = unit_roundoff<T>();
  int reported = 0;
  std::vector<bool> in_view(out.buf.size(), false);
  for (index_t t = 0; t < c.n_q; ++t)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t d = 0; d < c.dim; ++d) {
        in_view[size_t(&out.view(t, h, d) - out.buf.data())] = true;
        const double g = double(float(out.view(t, h, d))), w = want.view(t, h, d);
        const double tol = 4 * u * (1 + std::abs(w));
        const bool ok = std::isnan(w) ? std::isnan(g) : std::abs(g - w) <= tol;
        if (!ok && reported++ < 5)
          ADD_FAILURE() << "out(" << t << ", " << h << ", " << d << ") = " << g << ", reference " << w
                        << " (tolerance " << tol << ")";
      }
  for (size_t i = 0; i < out.buf.size(); ++i)
    if (!in_view[i] && !(float(out.buf[i]) == float(sentinel)) && reported++ < 10)
      ADD_FAILURE() << "element " << i << " of out's buffer lies outside the view but was written";
  if (!c.want_lse) return;
  for (index_t h = 0; h < c.q_heads; ++h)
    for (index_t t = 0; t < c.n_q; ++t) {
      const double g = got_lse[size_t(h * c.n_q + t)], w = want_lse[size_t(h * c.n_q + t)];
      if (std::isnan(w)) {
        if (!std::isnan(g) && reported++ < 10) ADD_FAILURE() << "lse(" << h << ", " << t << ") = " << g << ", want NaN";
        continue;
      }
      if (std::isinf(w)) {
        if (!(std::isinf(g) && g < 0) && reported++ < 10)
          ADD_FAILURE() << "lse(" << h << ", " << t << ") = " << g << " for a row that sees no key (want -inf)";
        continue;
      }
      if (!(std::abs(g - w) <= 2e-4 * (1 + std::abs(w))) && reported++ < 10)
        ADD_FAILURE() << "lse(" << h << ", " << t << ") = " << g << ", reference " << w;
    }
}

// One random problem for a mask kind: a layout long enough for the window,
// random heads/GQA ratio, offsets and view layouts, and now and then a forced
// path, a paged cache or a sliding window. The tests' kernel sets
// (dispatch.hpp) decide what goes with what: masks other than a DeviceMask's
// bounds run at head dims up to 64, paged caches up to 128.
template <class T, class Run>
void random_case(Run&& run, Rng& rng, MaskKind kind, index_t dim, index_t max_n, index_t max_kv_heads = 2) {
  Case c;
  c.dim = dim;
  c.kv_heads = rng.uniform(1, max_kv_heads);
  c.q_heads = c.kv_heads << rng.uniform(0, 2);  // GQA ratio 1, 2, 4
  c.q_token_major = rng.coin();
  c.kv_token_major = rng.coin();
  c.out_token_major = rng.coin();
  c.pad = rng.coin(0.3) ? rng.uniform(1, 9) : (rng.coin() ? 8 : 0);
  c.launch.kv_splits = rng.coin(0.2) ? int(rng.uniform(1, 5)) : 0;
  c.launch.path = rng.coin(0.7) ? PathArg::Auto : rng.coin() ? PathArg::Decode : PathArg::Prefill;
  if (rng.coin(0.1)) c.scale = float(rng.real(-0.3, 0.3));

  ism_test::RandomLayout layout;
  ism::SegmentMask segments;
  index_t length = rng.uniform(1, max_n);
  if (kind == MaskKind::Segments) {
    layout = ism_test::random_layout(rng, 3, 8, std::max<index_t>(1, max_n / 8));
    segments = layout.mask();
    length = segments.length();
  }
  c.n_k = rng.uniform(1, length);
  const bool prefill = rng.coin();
  c.n_q = prefill ? c.n_k : rng.uniform(1, std::min<index_t>(c.n_k, 80));
  if (rng.coin(0.3)) {
    c.q_offset = rng.uniform(0, length - c.n_q);  // a chunk anywhere in the layout
  }
  MaskArg arg;
  arg.kind = kind;
  if (kind == MaskKind::Segments) arg.segments = &segments;
  if (kind == MaskKind::Prefix) arg.prefix = rng.uniform(0, length);
  if (dim <= 64 && rng.coin(0.2)) arg.window = rng.uniform(1, std::max<index_t>(1, length));
  if (kind == MaskKind::Segments && arg.window == 0 && (dim <= 64 || (dim > 96 && dim <= 128)) && rng.coin(0.2)) {
    c.launch.page_size = index_t(1) << rng.uniform(0, 6);
    c.launch.table64 = rng.coin();
  }
  SCOPED_TRACE(layout.describe());
  check_case<T>(run, rng, c, arg);
}

// --- the cases, run by both backends ----------------------------------------
// Budget keeps the CPU emulation's share small.
struct Budget {
  int reps = 3;                                       // random problems per (mask, dim)
  index_t max_n = 330;                                // longest layout (200 for dims >= 128)
  std::vector<index_t> dims{64, 128, 80, 96, 256, 8, 40, 72, 100, 3, 200};
  index_t max_kv_heads = 2;
  index_t decode_min_nk = 700, decode_max_nk = 3000;  // cache length of the decode cases
  std::vector<int> decode_splits{0, 1, 2, 3, 7, 16};     // LaunchOptions::kv_splits of the decode cases
};

template <class T, class Run>
void every_mask_dim_and_gqa_ratio(Run&& run, Rng& rng, const Budget& b) {
  // Every head dim on a DeviceMask's bounds (the tuned dims and odd ones that
  // run on the next larger kernel, zero-padded: not multiples of 16, of 8,
  // or even of 2); the other masks at the dims their kernel set has.
  for (MaskKind kind : {MaskKind::Full, MaskKind::Causal, MaskKind::Prefix, MaskKind::Segments})
    for (index_t dim : b.dims) {
      if (kind != MaskKind::Segments && dim > 64) continue;
      for (int rep = 0; rep < b.reps; ++rep) {
        random_case<T>(run, rng, kind, dim, dim >= 128 ? std::min<index_t>(b.max_n, 200) : b.max_n, b.max_kv_heads);
        if (::testing::Test::HasFailure()) return;
      }
    }
}

// ISM proper: alternating query/answer turns from boundaries, prefill of the
// whole dialogue and a chunk of the last round against the cache.
template <class T, class Run>
void ism_dialogue(Run&& run, Rng& rng, const Budget& b) {
  for (int rep = 0; rep < 2 * b.reps; ++rep) {
    std::vector<index_t> bounds{0};
    const index_t rounds = rng.uniform(1, 6);
    const index_t turn = std::max<index_t>(2, b.max_n / 4);
    for (index_t r = 0; r < 2 * rounds; ++r) bounds.push_back(bounds.back() + rng.uniform(1, turn));
    const ism::SegmentMask mask = ism::ism_mask(bounds);
    Case c;
    c.dim = rep % 2 ? 128 : 64;
    c.kv_heads = b.max_kv_heads;
    c.q_heads = 2 * c.kv_heads;
    c.n_k = mask.length();
    // The whole dialogue, or its last round against the cache.
    c.n_q = rep < b.reps ? c.n_k : bounds[bounds.size() - 1] - bounds[bounds.size() - 3];
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask});
    if (::testing::Test::HasFailure()) return;
  }
}

// Decode: a few new tokens against a long cache on the decode kernel (a KV
// head's query heads packed), keys split across thread blocks and merged by
// LSE (forced split counts and the automatic choice).
template <class T, class Run>
void decode_splits(Run&& run, Rng& rng, const Budget& b) {
  for (int splits : b.decode_splits) {
    Case c;
    c.dim = splits % 2 ? 128 : (splits == 16 ? 96 : 64);
    c.kv_heads = rng.uniform(1, b.max_kv_heads);
    c.q_heads = c.kv_heads * (splits == 3 ? 8 : 4);
    c.n_k = rng.uniform(b.decode_min_nk, b.decode_max_nk);
    c.n_q = rng.uniform(1, 5);
    c.launch.kv_splits = splits;
    c.kv_token_major = rng.coin();
    if (c.dim <= 64) check_case<T>(run, rng, c, MaskArg{MaskKind::Causal});
    // The last answer of an ISM dialogue, the query turn still visible whole.
    std::vector<index_t> bounds{0};
    while (bounds.back() < c.n_k - 120)
      bounds.push_back(std::min(c.n_k - 60, bounds.back() + rng.uniform(20, 300)));
    bounds.push_back(c.n_k);
    const ism::SegmentMask mask = ism::ism_mask(bounds);
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask});
    // The same on the prefill kernel.
    c.launch.path = PathArg::Prefill;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask});
    if (::testing::Test::HasFailure()) return;
  }
}

// Rows that see nothing (padding, or a window of keys that are not cached
// yet) give 0 and LSE -inf, never NaN, in both the direct and the split path,
// on both kernels.
template <class T, class Run>
void rows_that_see_nothing(Run&& run, Rng& rng) {
  const ism::SegmentMask padded =
      ism::packed_mask({{{70, ism::Attend::Bidirectional}, {50, ism::Attend::Causal}}}, 90);
  const ism::SegmentMask two =
      ism::packed_mask({{{40, ism::Attend::Causal}}, {{100, ism::Attend::Bidirectional}}});
  for (int splits : {1, 3}) {
    Case c;
    c.n_q = 150;
    c.n_k = padded.length();
    c.q_offset = 60;  // rows 120.. are padding
    c.launch.kv_splits = splits;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &padded});
    Case none = c;  // the second document's keys are not cached
    none.n_k = 40;
    none.n_q = 100;
    none.q_offset = 40;
    check_case<T>(run, rng, none, MaskArg{MaskKind::Segments, 0, &two});
    none.n_q = 3;  // the decode kernel: 3 tokens x 4 heads
    none.q_heads = 4;
    check_case<T>(run, rng, none, MaskArg{MaskKind::Segments, 0, &two});
  }
}

// Key blocks that no row sees are never read: their keys and values are NaN,
// and any visit would turn the output into NaN (0 * NaN in P.V).
template <class T, class Run>
void empty_key_blocks_are_never_read(Run&& run, Rng& rng, const std::vector<index_t>& dims) {
  // Three documents of 256 tokens; queries are the last one. The first two
  // documents' keys are whole 64-key (and 32-key) blocks nobody sees.
  const ism::SegmentMask mask = ism::packed_mask({{{100, ism::Attend::Bidirectional}, {156, ism::Attend::Causal}},
                                                  {{256, ism::Attend::Causal}},
                                                  {{64, ism::Attend::Bidirectional}, {192, ism::Attend::Causal}}});
  std::vector<index_t> hidden;
  for (index_t j = 0; j < 512; ++j) hidden.push_back(j);
  for (index_t dim : dims) {
    Case c;
    c.dim = dim;
    c.n_k = 768;
    c.n_q = 256;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask}, hidden);
    c.launch.kv_splits = 3;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask}, hidden);
    c.n_q = 2;  // decode kernel
    c.q_heads = 4;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask}, hidden);
  }
}

// Misaligned and oddly strided views take the element-wise load path.
template <class T, class Run>
void odd_strides(Run&& run, Rng& rng, index_t max_n) {
  for (index_t pad : {1, 3, 5}) {
    Case c;
    c.dim = pad == 3 ? 40 : 64;
    c.pad = pad;
    c.n_k = rng.uniform(std::min<index_t>(100, max_n), max_n);
    c.n_q = pad == 5 ? 2 : c.n_k;  // pad 5: the decode kernel
    c.q_token_major = false;
    c.q_heads = 2;
    check_case<T>(run, rng, c, MaskArg{MaskKind::Causal});
  }
}

// A NaN in a key that rows see makes those rows NaN with a NaN LSE (the
// reference's answer), with one split or many, on both kernels; rows that do
// not see it stay exact. Issue 16: the split path used to drop the NaN split
// and return a finite, wrong row.
template <class T, class Run>
void nan_in_visible_key(Run&& run, Rng& rng, index_t n_k) {
  // Rows n_k - 4 and n_k - 3 belong to the first document (they see key 5);
  // the last two rows are a document of their own.
  const ism::SegmentMask mask =
      ism::packed_mask({{{n_k - 2, ism::Attend::Causal}}, {{2, ism::Attend::Bidirectional}}});
  for (PathArg path : {PathArg::Decode, PathArg::Prefill})
    for (int splits : {1, 8}) {
      Case c;
      c.n_k = n_k;
      c.n_q = 4;
      c.q_heads = 2;
      c.launch.kv_splits = splits;
      c.launch.path = path;
      check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask}, {}, {5});
      Case one = c;  // the case: one query, causal
      one.n_q = 1;
      one.q_heads = 1;
      check_case<T>(run, rng, one, MaskArg{MaskKind::Causal}, {}, {5});
      if (::testing::Test::HasFailure()) return;
    }
}

// Softcap, ALiBi and sinks, alone and together, on both kernels, split or
// not, with GQA, an ISM layout and a sliding window; softcap on huge scores
// stays finite.
template <class T, class Run>
void modifiers(Run&& run, Rng& rng, index_t max_n) {
  for (int combo = 0; combo < 8; ++combo)
    for (PathArg path : {PathArg::Decode, PathArg::Prefill}) {
      std::vector<index_t> bounds{0};
      while (bounds.back() < max_n) bounds.push_back(bounds.back() + rng.uniform(1, max_n / 3));
      const ism::SegmentMask mask = ism::ism_mask(bounds);
      Case c;
      c.dim = combo % 2 ? 128 : 64;
      c.kv_heads = 2;
      c.q_heads = 4;
      c.n_k = mask.length();
      c.n_q = path == PathArg::Decode ? rng.uniform(1, 3) : rng.uniform(1, c.n_k);
      c.launch.path = path;
      c.launch.kv_splits = combo % 3 == 0 ? 3 : 0;
      c.softcap = combo & 1 ? float(rng.real(2, 30)) : 0.f;
      c.alibi = (combo & 2) != 0;
      c.sinks = (combo & 4) != 0 || combo == 0;
      if (combo == 7) {
        c.scale = 40.f;  // scores far beyond the cap: tanh saturates, no inf
        c.softcap = 5.f;
      }
      check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask});
      if (::testing::Test::HasFailure()) return;
    }
}

// Sliding windows (tests' own LocalWindow policy) over causal and ISM masks:
// windows of 1, a few keys, the whole sequence and more, on both kernels.
template <class T, class Run>
void sliding_windows(Run&& run, Rng& rng, index_t n) {
  std::vector<index_t> bounds{0};
  while (bounds.back() < n) bounds.push_back(bounds.back() + rng.uniform(1, n / 4 + 1));
  const ism::SegmentMask mask = ism::ism_mask(bounds);
  for (index_t window : {index_t(1), index_t(7), rng.uniform(2, mask.length()), mask.length(), mask.length() + 50})
    for (PathArg path : {PathArg::Decode, PathArg::Prefill}) {
      Case c;
      c.n_k = mask.length();
      c.n_q = path == PathArg::Decode ? 2 : c.n_k;
      c.q_heads = 4;
      c.kv_heads = 2;
      c.launch.path = path;
      c.launch.kv_splits = window == 7 ? 2 : 0;
      check_case<T>(run, rng, c, MaskArg{MaskKind::Causal, 0, nullptr, window});
      check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask, window});
      if (::testing::Test::HasFailure()) return;
    }
}

// K/V through a paged cache with shuffled pages (int32 and int64 tables,
// page sizes that do and do not divide the key tiles), decode and prefill.
template <class T, class Run>
void paged_cache(Run&& run, Rng& rng, index_t max_n) {
  for (index_t page : {1, 5, 16, 64})
    for (PathArg path : {PathArg::Decode, PathArg::Prefill}) {
      std::vector<index_t> bounds{0};
      while (bounds.back() < max_n) bounds.push_back(bounds.back() + rng.uniform(1, max_n / 3));
      const ism::SegmentMask mask = ism::ism_mask(bounds);
      Case c;
      c.dim = page == 16 ? 128 : 64;
      c.kv_heads = 2;
      c.q_heads = 8;
      c.n_k = rng.uniform(1, mask.length());
      c.n_q = path == PathArg::Decode ? rng.uniform(1, std::min<index_t>(c.n_k, 4)) : c.n_k;
      c.launch.path = path;
      c.launch.page_size = page;
      c.launch.table64 = page % 2 == 1;
      c.launch.kv_splits = page == 5 ? 3 : 0;
      check_case<T>(run, rng, c, MaskArg{MaskKind::Segments, 0, &mask});
      if (::testing::Test::HasFailure()) return;
    }
}

// KV-cache reuse on the kernel: rows before a round boundary come out the
// same whether the later rounds exist or not, bit for bit. A masked key adds
// exactly nothing (its probability is exactly 0 and the running max, hence the
// rescale factor 1, does not move), so this is equality, not a tolerance.
template <class T, class Run>
void ism_kv_reuse(Run&& run, Rng& rng, index_t dim) {
  std::vector<index_t> bounds{0};
  for (int r = 0; r < 6; ++r) bounds.push_back(bounds.back() + rng.uniform(1, 70));
  const ism::SegmentMask mask = ism::ism_mask(bounds);
  const index_t n = mask.length(), split = bounds[size_t(2 * rng.uniform(1, 2))];
  ASSERT_TRUE(mask.is_safe_split(split));
  SCOPED_TRACE(::testing::Message() << ism::type_name<T>() << " n " << n << " split " << split << " dim " << dim);
  Tensor<T> q(n, 2, dim), k(n, 1, dim), v(n, 1, dim), all(n, 2, dim), early(split, 2, dim);
  q.fill_random(rng, -1.5, 1.5);
  k.fill_random(rng, -1.5, 1.5);
  v.fill_random(rng, -1, 1);
  auto first = [&](const Tensor<T>& t) {
    auto view = t.cview();
    view.tokens = split;
    return view;
  };
  const MaskArg arg{MaskKind::Segments, 0, &mask};
  ism::AttentionOptions opt;
  opt.q_offset = 0;
  LaunchArg one;
  one.kv_splits = 1;
  run(q.cview(), k.cview(), v.cview(), all.view, arg, opt, one);
  run(first(q), first(k), first(v), early.view, arg, opt, one);
  int reported = 0;
  for (index_t t = 0; t < split; ++t)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < dim; ++d)
        if (!(float(all.view(t, h, d)) == float(early.view(t, h, d))) && reported++ < 5)
          ADD_FAILURE() << "row " << t << " head " << h << " col " << d << ": " << float(all.view(t, h, d))
                        << " with the later rounds, " << float(early.view(t, h, d)) << " without";
}

// --- batches ------------------------------------------------------------------

// One request of a batch, on host tensors.
template <class T>
struct BatchItem {
  Tensor<T> q, k, v, out;
  ism::SegmentMask mask;
  index_t q_offset = -1;
  std::vector<float> lse;
};

// A continuous-batching step: decode requests (a token or two) and prefill
// chunks, each with its own ISM layout, cache length and offset, run by
// `run_batch(views, options, launch_arg)` in one call and compared one by one
// with the reference. More requests than one launch holds.
template <class T, class RunBatch>
void batch_of_requests(RunBatch&& run_batch, Rng& rng, index_t max_n, index_t requests, const LaunchArg& la) {
  std::vector<BatchItem<T>> items;
  const index_t dim = rng.coin() ? 64 : 128, q_heads = 4, kv_heads = 2;
  for (index_t r = 0; r < requests; ++r) {
    std::vector<index_t> bounds{0};
    while (bounds.back() < max_n) bounds.push_back(bounds.back() + rng.uniform(1, max_n / 3));
    ism::SegmentMask mask = ism::ism_mask(bounds);
    const index_t n_k = rng.uniform(1, mask.length());
    const index_t n_q = r % 3 == 0 ? rng.uniform(1, n_k) : rng.uniform(1, std::min<index_t>(2, n_k));
    BatchItem<T> it{Tensor<T>(n_q, q_heads, dim), Tensor<T>(n_k, kv_heads, dim), Tensor<T>(n_k, kv_heads, dim),
                    Tensor<T>(n_q, q_heads, dim), std::move(mask), -1, std::vector<float>(size_t(q_heads * n_q))};
    it.q.fill_random(rng, -1.5, 1.5);
    it.k.fill_random(rng, -1.5, 1.5);
    it.v.fill_random(rng, -1, 1);
    items.push_back(std::move(it));
  }
  ism::AttentionOptions opt;
  opt.softcap = 0.f;
  SCOPED_TRACE(::testing::Message() << ism::type_name<T>() << " batch of " << requests << " dim " << dim
                                    << " page_size " << la.page_size);
  std::vector<BatchView<T>> views;
  for (BatchItem<T>& it : items)
    views.push_back({it.q.cview(), it.k.cview(), it.v.cview(), it.out.view, &it.mask, it.q_offset, it.lse.data()});
  run_batch(views, opt, la);
  const double u = unit_roundoff<T>();
  int reported = 0;
  for (size_t r = 0; r < items.size(); ++r) {
    const BatchItem<T>& it = items[r];
    Tensor<double> want(it.q.view.tokens, q_heads, dim);
    std::vector<double> want_lse(it.lse.size());
    ism::reference_attention_into<T, double, double>(it.q.cview(), it.k.cview(), it.v.cview(), want.view,
                                                     it.mask.bounds(), opt, want_lse.data());
    for (index_t t = 0; t < it.q.view.tokens; ++t)
      for (index_t h = 0; h < q_heads; ++h) {
        for (index_t d = 0; d < dim; ++d) {
          const double g = float(it.out.view(t, h, d)), w = want.view(t, h, d);
          if (!(std::abs(g - w) <= 4 * u * (1 + std::abs(w))) && reported++ < 10)
            ADD_FAILURE() << "request " << r << " out(" << t << ", " << h << ", " << d << ") = " << g
                          << ", reference " << w;
        }
        const double g = it.lse[size_t(h * it.q.view.tokens + t)], w = want_lse[size_t(h * it.q.view.tokens + t)];
        const bool ok = std::isinf(w) ? std::isinf(g) && g < 0 : std::abs(g - w) <= 2e-4 * (1 + std::abs(w));
        if (!ok && reported++ < 10) ADD_FAILURE() << "request " << r << " lse(" << h << ", " << t << ") = " << g
                                                  << ", reference " << w;
      }
  }
}

}  // namespace ism_cuda_test
