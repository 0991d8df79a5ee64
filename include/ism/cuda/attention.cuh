#pragma once
// ism::cuda::attention and attention_batch: the docs/DESIGN.md section 2 contract on
// device buffers and a stream, with K/V as strided views or a paged cache.
// q, k, v, out, options.lse, options.sinks and options.alibi_slopes are device
// pointers; the mask is any mask policy whose keys() the device can call (the
// simple masks, a DeviceMask, a sliding window over either, a policy of your
// own: trivially copyable, ISM_HOST_DEVICE keys(q) giving one interval per
// row with non-decreasing ends). Arguments are checked on the host before
// anything is launched (nothing is written when a call throws); values in
// device memory (block tables, sinks, slopes) cannot be read there and are the
// caller's to get right. Launches are asynchronous on `stream`.
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "ism/core/options.hpp"
#include "ism/core/validate.hpp"
#include "ism/cuda/check.cuh"
#include "ism/cuda/element.cuh"
#include "ism/cuda/kernel_traits.cuh"
#include "ism/cuda/launch.cuh"
#include "ism/cuda/mask_device.cuh"
#include "ism/cuda/params.cuh"
#include "ism/kv/paged_view.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/simple_masks.hpp"
#include "ism/mask/sliding_window.hpp"

namespace ism::cuda {

// One sequence of a batched call (ism::attention_batch's request, on device
// buffers). `mask` points to a host object: a policy or a DeviceMask.
template <class T, class Mask>
struct AttentionRequest {
  HeadsView<const T> q, k, v;
  HeadsView<T> out;
  const Mask* mask = nullptr;
  index_t q_offset = -1;  // -1: k.tokens - q.tokens
  float* lse = nullptr;   // optional [q.heads][q.tokens], device memory
};

// The same with K/V in a paged cache (pools and block table in device memory).
template <class T, class I, class Mask>
struct PagedAttentionRequest {
  HeadsView<const T> q;
  PagedKV<T, I> kv;
  HeadsView<T> out;
  const Mask* mask = nullptr;
  index_t q_offset = -1;
  float* lse = nullptr;
};

namespace detail {

using ism::detail::check_requests_disjoint;
using ism::detail::check_view;
using ism::detail::float_span;
using ism::detail::RequestSpans;

// What the kernel receives for a mask argument.
template <class M>
M device_policy(const M& m) {
  static_assert(!std::is_same_v<M, SegmentMask>,
                "a SegmentMask lives in host memory: keep an ism::cuda::DeviceMask of it and pass that");
  static_assert(std::is_trivially_copyable_v<M>,
                "the mask policy goes to the kernel by value: it must be trivially copyable");
  return m;
}
inline RowBoundsMask device_policy(const DeviceMask& m) { return m.policy(); }

// Memory the kernel can dereference: device, managed, or host memory mapped
// at the same address. Anything else would fault inside the kernel, far from
// the call that passed it. Only with LaunchOptions::check_pointers.
inline void check_device_pointer(const char* where, const char* name, const void* p) {
  if (p == nullptr) return;
  cudaPointerAttributes a{};
  check(cudaPointerGetAttributes(&a, p), "cudaPointerGetAttributes", __FILE__, __LINE__);
  const bool ok = a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ||
                  (a.type == cudaMemoryTypeHost && a.devicePointer == p);
  if (!ok) ism::detail::fail(where, name, " = ", p, " is not device memory (allocate it with cudaMalloc)");
}
template <class M>
void check_mask_pointers(const char*, const M&) {}
inline void check_mask_pointers(const char* where, const RowBoundsMask& m) {
  check_device_pointer(where, "mask.lo (keep a SegmentMask in an ism::cuda::DeviceMask)", m.lo);
  check_device_pointer(where, "mask.hi (keep a SegmentMask in an ism::cuda::DeviceMask)", m.hi);
}
template <class M>
void check_mask_pointers(const char* where, const SlidingWindowMask<M>& m) {
  check_mask_pointers(where, m.inner);
}
// A policy with bounds in memory must have them.
template <class M>
void check_mask_value(const char*, const M&) {}
inline void check_mask_value(const char* where, const RowBoundsMask& m) {
  if (m.n > 0 && (m.lo == nullptr || m.hi == nullptr))
    ism::detail::fail(where, "mask has length ", m.n, " but null bounds");
}
template <class M>
void check_mask_value(const char* where, const SlidingWindowMask<M>& m) {
  check_mask_value(where, m.inner);
}

template <class T>
bool vec_ok(const HeadsView<T>& v) {
  return reinterpret_cast<std::uintptr_t>(v.data) % 16 == 0 && v.token_stride % 8 == 0 && v.head_stride % 8 == 0 &&
         v.dim % 8 == 0;
}
template <class T, class I>
bool vec_ok(const PagedKV<T, I>& kv) {
  return reinterpret_cast<std::uintptr_t>(kv.k_pages()) % 16 == 0 &&
         reinterpret_cast<std::uintptr_t>(kv.v_pages()) % 16 == 0 && kv.dim() % 8 == 0;
}

// check_attention with the device arrays of the options kept out of its
// reach (it reads sinks and slopes on the host), then the checks it would have
// made of them that need no read: they must not overlap what is written.
template <class Q, class KV, class O, class Mask>
AttentionShape check_views(const char* where, const HeadsView<Q>& q, const HeadsView<KV>& k, const HeadsView<KV>& v,
                           const HeadsView<O>& out, const Mask& mask, const AttentionOptions& opt) {
  AttentionOptions host = opt;
  host.sinks = nullptr;
  host.alibi_slopes = nullptr;
  const AttentionShape s = check_attention(where, q, k, v, out, mask, host);
  if (opt.alibi_slopes) ism::detail::check_alibi_positions(where, s);
  if (s.dim > kMaxHeadDim)
    ism::detail::fail(where, "q.dim = ", s.dim, " exceeds the largest head dim the CUDA kernels take (", kMaxHeadDim,
                      ")");
  const ism::detail::ByteSpan so = ism::detail::check_view(where, "out", out);
  const ism::detail::ByteSpan sl = ism::detail::float_span(opt.lse, s.q_heads * s.n_q);
  for (const float* p : {opt.sinks, opt.alibi_slopes}) {
    const ism::detail::ByteSpan sp = ism::detail::float_span(p, s.q_heads);
    if (so.overlaps(sp)) ism::detail::fail(where, "out overlaps options.", p == opt.sinks ? "sinks" : "alibi_slopes");
    if (sl.overlaps(sp))
      ism::detail::fail(where, "options.lse overlaps options.", p == opt.sinks ? "sinks" : "alibi_slopes");
  }
  check_mask_value(where, mask);
  return s;
}

// A paged view's sizes and pools (check_paged_kv without the block table
// entries, which are in device memory: check_block_table reads them).
template <class T, class I>
std::pair<ism::detail::ByteSpan, ism::detail::ByteSpan> check_paged_sizes(const char* where,
                                                                          const PagedKV<T, I>& kv) {
  using ism::detail::fail;
  if (kv.page_size() <= 0) fail(where, "kv.page_size = ", kv.page_size(), " must be positive");
  if (kv.num_pages() < 0) fail(where, "kv.num_pages = ", kv.num_pages(), " is negative");
  if (kv.tokens() < 0) fail(where, "kv.tokens = ", kv.tokens(), " is negative");
  index_t pool_tokens = 0, row = 0;
  if (ism::detail::mul_overflows(kv.num_pages(), kv.page_size(), &pool_tokens))
    fail(where, "kv.num_pages * kv.page_size overflows: ", kv.num_pages(), " * ", kv.page_size());
  if (kv.heads() <= 0) fail(where, "kv.heads = ", kv.heads(), " must be positive");
  if (kv.dim() <= 0) fail(where, "kv.dim = ", kv.dim(), " must be positive");
  if (ism::detail::mul_overflows(kv.heads(), kv.dim(), &row))
    fail(where, "kv.heads * kv.dim overflows: ", kv.heads(), " * ", kv.dim());
  const auto k = ism::detail::check_view(
      where, "kv.k_pages", ism::detail::pool_view(kv.k_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  const auto v = ism::detail::check_view(
      where, "kv.v_pages", ism::detail::pool_view(kv.v_pages(), kv.num_pages(), kv.page_size(), kv.heads(), kv.dim()));
  if (kv.tokens() > 0) {
    if (kv.num_blocks() > kv.num_pages())
      fail(where, "kv.tokens = ", kv.tokens(), " needs ", kv.num_blocks(), " pages of ", kv.page_size(),
           " tokens, more than kv.num_pages = ", kv.num_pages());
    if (kv.block_table() == nullptr) fail(where, "kv.block_table is null with kv.tokens = ", kv.tokens());
  }
  return {k, v};
}

// The paged call's shape: the checks of a contiguous call on views of the
// pools' first kv.tokens slots (inside the pools, so their overlap checks are
// conservative), then out against the whole pools.
template <class T, class I, class Mask>
AttentionShape check_paged(const char* where, const HeadsView<const T>& q, const PagedKV<T, I>& kv,
                           const HeadsView<T>& out, const Mask& mask, const AttentionOptions& opt,
                           ism::detail::RequestSpans* spans) {
  const auto pools = check_paged_sizes(where, kv);
  const index_t row = kv.heads() * kv.dim();
  const HeadsView<const T> k{kv.k_pages(), kv.tokens(), kv.heads(), kv.dim(), row, kv.dim()};
  const HeadsView<const T> v{kv.v_pages(), kv.tokens(), kv.heads(), kv.dim(), row, kv.dim()};
  const AttentionShape s = check_views(where, q, k, v, out, mask, opt);
  const auto so = ism::detail::check_view(where, "out", out);
  if (so.overlaps(pools.first)) ism::detail::fail(where, "out overlaps kv.k_pages");
  if (so.overlaps(pools.second)) ism::detail::fail(where, "out overlaps kv.v_pages");
  const auto sl = ism::detail::float_span(opt.lse, s.q_heads * s.n_q);
  if (sl.overlaps(pools.first) || sl.overlaps(pools.second)) ism::detail::fail(where, "options.lse overlaps kv");
  // The table (device memory) is read while out and lse are written.
  const auto st = ism::detail::block_table_span(kv);
  if (so.overlaps(st)) ism::detail::fail(where, "out overlaps kv.block_table");
  if (sl.overlaps(st)) ism::detail::fail(where, "options.lse overlaps kv.block_table");
  if (spans != nullptr)
    *spans = {ism::detail::check_view(where, "q", q), pools.first, pools.second, so, sl, st};
  return s;
}

inline ScoreParams score_params(const AttentionOptions& opt, const AttentionShape& s, int* mods) {
  ScoreParams sp{};
  sp.scale_log2 = s.scale * kLog2e;
  if (opt.softcap > 0.f) {
    sp.softcap_in = s.scale / opt.softcap;
    sp.softcap_log2 = opt.softcap * kLog2e;
  }
  sp.alibi = opt.alibi_slopes;
  sp.sinks = opt.sinks;
  *mods = (opt.softcap > 0.f ? kModSoftcap : 0) | (opt.alibi_slopes != nullptr ? kModAlibi : 0);
  return sp;
}

inline void check_launch(const char* where, const LaunchOptions& lo, index_t rows, index_t dim) {
  if (lo.kv_splits < 0) ism::detail::fail(where, "launch.kv_splits = ", lo.kv_splits, " is negative");
  if (lo.kv_splits > kMaxSplits)
    ism::detail::fail(where, "launch.kv_splits = ", lo.kv_splits, " exceeds ", kMaxSplits);
  if (lo.workspace.data == nullptr && lo.workspace.bytes != 0)
    ism::detail::fail(where, "launch.workspace.bytes = ", lo.workspace.bytes, " with null launch.workspace.data");
  if (lo.workspace.data != nullptr && reinterpret_cast<std::uintptr_t>(lo.workspace.data) % 16 != 0)
    ism::detail::fail(where, "launch.workspace.data = ", lo.workspace.data, " is not 16-byte aligned");
  // A forced split must fit (an automatic one shrinks to fit).
  if (lo.kv_splits > 1 && lo.workspace.data != nullptr && workspace_bytes(rows, dim, lo.kv_splits) > lo.workspace.bytes)
    ism::detail::fail(where, "launch.workspace.bytes = ", lo.workspace.bytes, " is less than the ",
                      workspace_bytes(rows, dim, lo.kv_splits), " bytes launch.kv_splits = ", lo.kv_splits,
                      " needs (ism::cuda::workspace_bytes)");
}

inline bool decode_path(Path path, index_t n_q, index_t group) {
  return path == Path::Decode || (path == Path::Auto && n_q * group <= kDecodeMaxRows);
}

// Requests of one launch group: at most as many as fit in a launch's
// parameter space (4 KiB, the limit of every architecture and toolkit).
template <class Req>
constexpr int max_requests() {
  constexpr size_t fixed = 256;
  constexpr size_t n = (4096 - fixed) / sizeof(Req);
  return n < 1 ? 1 : n > 16 ? 16 : int(n);
}

// Runs checked requests: decode and prefill requests in separate launches,
// each in groups of what one launch holds.
template <class V, int kMax, class T, class KV, class Mask>
void run_requests(const Request<T, KV, Mask>* reqs, const bool* decode, int count, int dim, const ScoreParams& score,
                  bool vec, int mods, const LaunchOptions& lo, cudaStream_t stream) {
  const DeviceInfo dev = resolve_device(lo.device);
  for (int path = 0; path < 2; ++path) {
    LaunchParams<T, KV, Mask, kMax> p{};
    p.dim = dim;
    p.score = score;
    auto flush = [&] {
      if (p.count > 0) run_group<V>(p, path == 1, vec, mods, lo, dev, stream);
      p.count = 0;
    };
    for (int r = 0; r < count; ++r) {
      if (decode[r] != (path == 1)) continue;
      p.req[p.count++] = reqs[r];
      if (p.count == kMax) flush();
    }
    flush();
  }
}

// A view's strides, without its element type.
struct Strides {
  index_t token_stride, head_stride;
};
template <class T>
Strides strides(const HeadsView<T>& v) {
  return {v.token_stride, v.head_stride};
}

template <class T, class KV, class Mask>
Request<T, KV, Mask> make_request(const void* q, const Strides& qv, void* out, const Strides& ov, float* lse,
                                  const KV& kv, const Mask& mask, const AttentionShape& s) {
  Request<T, KV, Mask> r{};
  r.q = static_cast<const T*>(q);
  r.q_token_stride = qv.token_stride;
  r.q_head_stride = qv.head_stride;
  r.out = static_cast<T*>(out);
  r.out_token_stride = ov.token_stride;
  r.out_head_stride = ov.head_stride;
  r.lse = lse;
  r.kv = kv;
  r.mask = mask;
  r.n_q = s.n_q;
  r.n_k = s.n_k;
  r.q_offset = s.q_offset;
  r.q_heads = s.q_heads;
  r.group = s.group;
  return r;
}

template <class E, class T>
ContiguousSource<E> contiguous_source(const HeadsView<const T>& k, const HeadsView<const T>& v) {
  return {reinterpret_cast<const E*>(k.data), reinterpret_cast<const E*>(v.data), k.token_stride, k.head_stride,
          v.token_stride, v.head_stride};
}
template <class E, class T, class I>
PagedSource<E, I> paged_source(const PagedKV<T, I>& kv) {
  return {reinterpret_cast<const E*>(kv.k_pages()), reinterpret_cast<const E*>(kv.v_pages()), kv.block_table(),
          kv.page_size(), kv.heads(), kv.dim()};
}

template <class T>
void check_buffers(const char* where, const HeadsView<const T>& q, const HeadsView<T>& out,
                   const AttentionOptions& opt) {
  check_device_pointer(where, "q.data", q.data);
  check_device_pointer(where, "out.data", out.data);
  check_device_pointer(where, "options.lse", opt.lse);
  check_device_pointer(where, "options.sinks", opt.sinks);
  check_device_pointer(where, "options.alibi_slopes", opt.alibi_slopes);
}

template <class T>
constexpr void check_element() {
  static_assert(device_element<T>::supported,
                "ism::cuda::attention runs on tensor cores: T must be __half, __nv_bfloat16, Eigen::half or "
                "Eigen::bfloat16");
}

// The rest of a single call, once its views are checked: launch options,
// variants, opt-in pointer checks (check_kv for the K/V source), the launch.
template <class V, class T, class KV, class Policy, class CheckKV>
void run_one(const char* where, const HeadsView<const T>& q, const HeadsView<T>& out, const KV& kv,
             const Policy& policy, const AttentionShape& s, bool vec, const AttentionOptions& options,
             cudaStream_t stream, const LaunchOptions& launch, CheckKV&& check_kv) {
  check_launch(where, launch, s.q_heads * s.n_q, s.dim);
  int mods = 0;
  const ScoreParams score = score_params(options, s, &mods);
  check_variants<V>(where, s.dim, vec, mods, launch.kv_splits);
  if (s.n_q == 0) return;
  if (launch.check_pointers) {
    check_buffers(where, q, out, options);
    check_kv();
    check_mask_pointers(where, policy);
  }
  using E = device_element_t<T>;
  const auto req = make_request<E>(q.data, strides(q), out.data, strides(out), options.lse, kv, policy, s);
  const bool decode = decode_path(launch.path, s.n_q, s.group);
  run_requests<V, 1>(&req, &decode, 1, int(s.dim), score, vec, mods, launch, stream);
}

}  // namespace detail

// out = masked softmax attention of q over k, v (DESIGN section 1), with the
// options' scale, q_offset, lse, softcap, ALiBi and sinks. q.heads must be a
// multiple of k.heads (GQA / MQA). T: __half, __nv_bfloat16, Eigen::half or
// Eigen::bfloat16; head dims up to 256. options.threads and parallel_for are
// the CPU's and ignored here. The last argument, a Variants value, narrows
// the kernels this call compiles (default: all).
template <class T, class Mask, class V = AllVariants>
void attention(HeadsView<const ism::detail::type_identity_t<T>> q,
               HeadsView<const ism::detail::type_identity_t<T>> k,
               HeadsView<const ism::detail::type_identity_t<T>> v, HeadsView<T> out, const Mask& mask,
               const AttentionOptions& options = {}, cudaStream_t stream = nullptr, const LaunchOptions& launch = {},
               V = {}) {
  const char* where = "ism::cuda::attention";
  detail::check_element<T>();
  const auto policy = detail::device_policy(mask);
  const AttentionShape s = detail::check_views(where, q, k, v, out, policy, options);
  const bool vec = detail::vec_ok(q) && detail::vec_ok(k) && detail::vec_ok(v) && detail::vec_ok(out);
  using E = device_element_t<T>;
  detail::run_one<V>(where, q, out, detail::contiguous_source<E>(k, v), policy, s, vec, options, stream, launch, [&] {
    detail::check_device_pointer(where, "k.data", k.data);
    detail::check_device_pointer(where, "v.data", v.data);
  });
}

// The same with K and V read through a paged cache's block table (int32 or
// int64), all in device memory.
template <class T, class I, class Mask, class V = AllVariants>
void attention(HeadsView<const ism::detail::type_identity_t<T>> q, const PagedKV<T, I>& kv, HeadsView<T> out,
               const Mask& mask, const AttentionOptions& options = {}, cudaStream_t stream = nullptr,
               const LaunchOptions& launch = {}, V = {}) {
  const char* where = "ism::cuda::attention(paged)";
  detail::check_element<T>();
  const auto policy = detail::device_policy(mask);
  const AttentionShape s = detail::check_paged(where, q, kv, out, policy, options, nullptr);
  const bool vec = detail::vec_ok(q) && detail::vec_ok(kv) && detail::vec_ok(out);
  using E = device_element_t<T>;
  detail::run_one<V>(where, q, out, detail::paged_source<E>(kv), policy, s, vec, options, stream, launch, [&] {
    detail::check_device_pointer(where, "kv.k_pages", kv.k_pages());
    detail::check_device_pointer(where, "kv.v_pages", kv.v_pages());
    detail::check_device_pointer(where, "kv.block_table", kv.block_table());
  });
}

namespace detail {

// One checked request of a batch, by kind of K/V source.
template <class T, class Mask>
auto batch_item(const char* where, const AttentionRequest<T, Mask>& r, const AttentionOptions& o,
                RequestSpans* spans, AttentionShape* shape, bool* vec) {
  const auto policy = device_policy(*r.mask);
  *shape = check_views(where, r.q, r.k, r.v, r.out, policy, o);
  *spans = {check_view(where, "q", r.q), check_view(where, "k", r.k), check_view(where, "v", r.v),
            check_view(where, "out", r.out), float_span(r.lse, shape->q_heads * shape->n_q), ism::detail::ByteSpan{}};
  *vec = vec_ok(r.q) && vec_ok(r.k) && vec_ok(r.v) && vec_ok(r.out);
  using E = device_element_t<T>;
  return make_request<E>(r.q.data, strides(r.q), r.out.data, strides(r.out), r.lse, contiguous_source<E>(r.k, r.v),
                         policy, *shape);
}
template <class T, class I, class Mask>
auto batch_item(const char* where, const PagedAttentionRequest<T, I, Mask>& r, const AttentionOptions& o,
                RequestSpans* spans, AttentionShape* shape, bool* vec) {
  const auto policy = device_policy(*r.mask);
  *shape = check_paged(where, r.q, r.kv, r.out, policy, o, spans);
  *vec = vec_ok(r.q) && vec_ok(r.kv) && vec_ok(r.out);
  using E = device_element_t<T>;
  return make_request<E>(r.q.data, strides(r.q), r.out.data, strides(r.out), r.lse, paged_source<E>(r.kv), policy,
                         *shape);
}

template <class V, class Req>
void batch(const Req* requests, size_t count, const AttentionOptions& opt, cudaStream_t stream,
           const LaunchOptions& launch) {
  const char* where = "ism::cuda::attention_batch";
  if (opt.q_offset != -1)
    ism::detail::fail(where, "options.q_offset = ", opt.q_offset, " must be -1 (set each request's q_offset)");
  if (opt.lse != nullptr) ism::detail::fail(where, "options.lse must be null (set each request's lse)");
  using Item = decltype(batch_item(where, requests[0], opt, nullptr, nullptr, nullptr));
  std::vector<Item> items(count);
  std::vector<RequestSpans> spans(count);
  std::vector<char> decode(count);
  bool vec = true;
  index_t rows = 0;
  AttentionShape first{};
  for (size_t i = 0; i < count; ++i) {
    if (requests[i].mask == nullptr) ism::detail::fail(where, "requests[", i, "].mask is null");
    AttentionOptions o = opt;
    o.q_offset = requests[i].q_offset;
    o.lse = requests[i].lse;
    AttentionShape s{};
    bool v = true;
    // Messages name the request.
    const std::string here = std::string(where) + " requests[" + std::to_string(i) + "]";
    items[i] = batch_item(here.c_str(), requests[i], o, &spans[i], &s, &v);
    if (i == 0) first = s;
    // One launch shares the head dim (one tile shape) and the per-head
    // options (sinks, slopes: [q.heads]).
    if (s.dim != first.dim)
      ism::detail::fail(where, "requests[", i, "].q.dim = ", s.dim, " differs from requests[0].q.dim = ", first.dim);
    if (s.q_heads != first.q_heads)
      ism::detail::fail(where, "requests[", i, "].q.heads = ", s.q_heads, " differs from requests[0].q.heads = ",
                        first.q_heads);
    if (opt.scale == 0.f && s.scale != first.scale)
      ism::detail::fail(where, "requests[", i, "] has another default scale than requests[0]");
    vec = vec && v;
    decode[i] = decode_path(launch.path, s.n_q, s.group);
    rows += s.q_heads * s.n_q;
  }
  if (count == 0) return;
  check_requests_disjoint(where, spans);
  check_launch(where, launch, rows, first.dim);
  int mods = 0;
  const ScoreParams score = score_params(opt, first, &mods);
  check_variants<V>(where, first.dim, vec, mods, launch.kv_splits);
  if (launch.check_pointers)
    for (size_t i = 0; i < count; ++i) {
      AttentionOptions o = opt;
      o.lse = requests[i].lse;
      check_buffers(where, requests[i].q, requests[i].out, o);
    }
  static_assert(sizeof(bool) == sizeof(char));
  constexpr int kMax = max_requests<Item>();
  run_requests<V, kMax>(items.data(), reinterpret_cast<const bool*>(decode.data()), int(count), int(first.dim), score,
                        vec, mods, launch, stream);
}

}  // namespace detail

// Many sequences in few launches (continuous batching): each request has its
// own views (or paged cache), mask, q_offset and LSE; decode requests run on
// the decode kernel and the others on the prefill kernel, as many per launch
// as one launch holds. scale and the modifiers come from `options` and apply
// to all requests, which must share the head dim and q.heads; options.q_offset
// and options.lse must stay at their defaults. All requests are checked, and
// checked not to write what another reads or writes, before anything runs.
template <class T, class Mask, class V = AllVariants>
void attention_batch(const AttentionRequest<T, Mask>* requests, size_t count, const AttentionOptions& options = {},
                     cudaStream_t stream = nullptr, const LaunchOptions& launch = {}, V = {}) {
  detail::check_element<T>();
  detail::batch<V>(requests, count, options, stream, launch);
}
template <class T, class Mask, class V = AllVariants>
void attention_batch(const std::vector<AttentionRequest<T, Mask>>& requests, const AttentionOptions& options = {},
                     cudaStream_t stream = nullptr, const LaunchOptions& launch = {}, V variants = {}) {
  attention_batch(requests.data(), requests.size(), options, stream, launch, variants);
}
template <class T, class I, class Mask, class V = AllVariants>
void attention_batch(const PagedAttentionRequest<T, I, Mask>* requests, size_t count,
                     const AttentionOptions& options = {}, cudaStream_t stream = nullptr,
                     const LaunchOptions& launch = {}, V = {}) {
  detail::check_element<T>();
  detail::batch<V>(requests, count, options, stream, launch);
}
template <class T, class I, class Mask, class V = AllVariants>
void attention_batch(const std::vector<PagedAttentionRequest<T, I, Mask>>& requests,
                     const AttentionOptions& options = {}, cudaStream_t stream = nullptr,
                     const LaunchOptions& launch = {}, V variants = {}) {
  attention_batch(requests.data(), requests.size(), options, stream, launch, variants);
}

// Reads a paged view's block table back (synchronously: a debugging aid, not
// for the per-step path) and checks every entry against kv.num_pages.
template <class T, class I>
void check_block_table(const PagedKV<T, I>& kv, cudaStream_t stream = nullptr) {
  const char* where = "ism::cuda::check_block_table";
  detail::check_paged_sizes(where, kv);
  std::vector<I> table(size_t(kv.num_blocks()));
  if (table.empty()) return;
  ISM_CUDA_CHECK(cudaMemcpyAsync(table.data(), kv.block_table(), table.size() * sizeof(I), cudaMemcpyDeviceToHost,
                                 stream));
  ISM_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (size_t b = 0; b < table.size(); ++b)
    if (table[b] < 0 || index_t(table[b]) >= kv.num_pages())
      ism::detail::fail(where, "kv.block_table[", b, "] = ", index_t(table[b]), " is outside [0, kv.num_pages = ",
                        kv.num_pages(), ")");
}

}  // namespace ism::cuda
