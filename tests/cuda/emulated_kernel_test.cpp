// The CUDA kernels' own source and ism::cuda's own host code, run on the CPU
// emulator (emulator.hpp: kernels on std::threads, the runtime emulated and
// counted) against the fp64 reference, through the same cases as the GPU
// tests on a smaller budget: this is what CI runs of the kernels where it has
// no GPU. It checks the kernels' logic (tile plans, masking, modifiers,
// softmax, fragments, GQA packing, splits and their merge, paged reads,
// batches, epilogues) and what the host code asks of the runtime per call;
// not timing, async-copy hazards or the hardware's rounding.
#include "cuda/emulator.hpp"  // first: it defines the emulation hooks

#include <gtest/gtest.h>

#include <optional>

#include "common/testing.hpp"
#include "cuda/attention_cases.hpp"
#include "cuda/dispatch.hpp"

namespace {

using ism::index_t;
using ism_cuda_test::LaunchArg;
using ism_cuda_test::MaskArg;
using ism_cuda_test::MaskKind;
using ism_test::Rng;
using ism_test::Tensor;

// Host memory is the emulator's device memory: the views go as they are.
template <class T>
void emulated(ism::HeadsView<const T> q, ism::HeadsView<const T> k, ism::HeadsView<const T> v, ism::HeadsView<T> out,
              const MaskArg& mask, const ism::AttentionOptions& options, const LaunchArg& la) {
  ism_cuda_test::KernelArgs<T> a{q, k, v, out, options, {}};
  if (mask.segments != nullptr) a.bounds = mask.segments->bounds();
  std::optional<ism_cuda_test::PagedCopy<T>> paged;
  if (la.page_size > 0) {
    paged.emplace(k, v, la.page_size, std::uint64_t(k.tokens * 1000 + la.page_size));
    a.k_pages = paged->k.data();
    a.v_pages = paged->v.data();
    a.table = la.table64 ? static_cast<const void*>(paged->table64.data()) : paged->table32.data();
    a.num_pages = paged->num_pages;
  }
  ism_cuda_test::call_attention(a, mask, la, nullptr);
}

template <class T>
void emulated_batch(const std::vector<ism_cuda_test::BatchView<T>>& items, const ism::AttentionOptions& opt,
                    const LaunchArg& la) {
  std::vector<ism_cuda_test::PagedCopy<T>> pools;
  std::vector<ism_cuda_test::BatchArgs<T>> args;
  pools.reserve(items.size());
  for (const auto& it : items) {
    ism_cuda_test::BatchArgs<T> b{it.q, it.k, it.v, it.out, it.mask->bounds(), it.q_offset, it.lse};
    if (la.page_size > 0) {
      pools.emplace_back(it.k, it.v, la.page_size, std::uint64_t(pools.size()));
      b.k_pages = pools.back().k.data();
      b.v_pages = pools.back().v.data();
      b.table = pools.back().table32.data();
      b.num_pages = pools.back().num_pages;
    }
    args.push_back(b);
  }
  ism_cuda_test::call_batch(args, opt, la, nullptr);
}

template <class T>
class EmulatedCudaKernel : public ::testing::Test {};
using StorageTypes = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(EmulatedCudaKernel, StorageTypes);

// Emulated warps are slow: short layouts, each dim path once.
ism_cuda_test::Budget small_budget() {
  ism_cuda_test::Budget b;
  b.reps = 1;
  b.max_n = 120;
  b.dims = {64, 128, 80, 96, 256, 40, 3};
  b.max_kv_heads = 1;
  b.decode_min_nk = 150;
  b.decode_max_nk = 300;
  b.decode_splits = {0, 3, 16};
  return b;
}

#define ISM_EMULATED_CASE(name, call) \
  TYPED_TEST(EmulatedCudaKernel, name) { \
    ISM_SEEDED_TEST_BODY(seed);          \
    Rng rng(seed);                       \
    call;                                \
  }

ISM_EMULATED_CASE(EveryMaskAndDimMatchesReference,
                  ism_cuda_test::every_mask_dim_and_gqa_ratio<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(IsmDialogueMatchesReference,
                  ism_cuda_test::ism_dialogue<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(DecodeSplitsMatchReference,
                  ism_cuda_test::decode_splits<TypeParam>(emulated<TypeParam>, rng, small_budget()))
ISM_EMULATED_CASE(RowsThatSeeNothingGiveZeroAndMinusInfinity,
                  ism_cuda_test::rows_that_see_nothing<TypeParam>(emulated<TypeParam>, rng))
ISM_EMULATED_CASE(EmptyKeyBlocksAreNeverRead,
                  ism_cuda_test::empty_key_blocks_are_never_read<TypeParam>(emulated<TypeParam>, rng, {64}))
ISM_EMULATED_CASE(OddStridesMatchReference, ism_cuda_test::odd_strides<TypeParam>(emulated<TypeParam>, rng, 100))
ISM_EMULATED_CASE(IsmEarlierRoundsDoNotDependOnLaterOnes,
                  ism_cuda_test::ism_kv_reuse<TypeParam>(emulated<TypeParam>, rng, 64))
ISM_EMULATED_CASE(NanInAVisibleKeyGivesNanWithOneOrManySplits,
                  ism_cuda_test::nan_in_visible_key<TypeParam>(emulated<TypeParam>, rng, 600))
ISM_EMULATED_CASE(SoftcapAlibiAndSinksMatchReference,
                  ism_cuda_test::modifiers<TypeParam>(emulated<TypeParam>, rng, 90))
ISM_EMULATED_CASE(SlidingWindowPoliciesMatchReference,
                  ism_cuda_test::sliding_windows<TypeParam>(emulated<TypeParam>, rng, 70))
ISM_EMULATED_CASE(PagedCacheMatchesReference, ism_cuda_test::paged_cache<TypeParam>(emulated<TypeParam>, rng, 100))
ISM_EMULATED_CASE(BatchOfRequestsMatchesReference, {
  ism_cuda_test::batch_of_requests<TypeParam>(emulated_batch<TypeParam>, rng, 60, 19, LaunchArg{});
  LaunchArg paged;
  paged.page_size = 16;
  ism_cuda_test::batch_of_requests<TypeParam>(emulated_batch<TypeParam>, rng, 60, 5, paged);
})

// --- what the host code asks of the runtime ---------------------------------

struct Snapshot {
  long allocations, frees, copies, bytes, syncs, pointers, devices, attributes, launches;
  static Snapshot now() {
    auto& c = ism_emu::counts();
    return {c.allocations, c.frees, c.copies, c.bytes_copied, c.syncs, c.pointer_queries, c.device_queries,
            c.func_attributes, c.launches};
  }
  Snapshot operator-(const Snapshot& o) const {
    return {allocations - o.allocations, frees - o.frees,       copies - o.copies,
            bytes - o.bytes,             syncs - o.syncs,       pointers - o.pointers,
            devices - o.devices,         attributes - o.attributes, launches - o.launches};
  }
};

// An engine's decode loop: each step appends a token to the dialogue, brings
// the device mask up to date and attends one token against the cache, with
// the engine's workspace and device info. Per step that is two launches
// (kernel and split merge) and two 8-byte uploads (the new row's bounds):
// no allocation, no synchronisation, no pointer or device query.
TEST(EmulatedCudaRuntime, DecodeStepsMakeNoAllocationSyncOrQuery) {
  using T = Eigen::bfloat16;
  const index_t cap = 200, dim = 64, steps = 20;
  ism::SegmentMask mask = ism::ism_mask({0, 40, 90});  // the answer turn is Causal
  Tensor<T> q(1, 4, dim), k(cap, 2, dim), v(cap, 2, dim), out(1, 4, dim);
  Rng rng(7);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  std::vector<float> lse(4);
  ism::cuda::DeviceMask device_mask(mask);
  ism::cuda::LaunchOptions lo;
  lo.kv_splits = 4;
  void* ws = nullptr;
  const size_t ws_bytes = ism::cuda::workspace_bytes(4, dim, 4);
  ASSERT_EQ(cudaMalloc(&ws, ws_bytes), cudaSuccess);
  lo.workspace = {ws, ws_bytes};
  lo.device = ism::cuda::device_info();
  ism::AttentionOptions opt;
  opt.lse = lse.data();
  auto step = [&] {
    mask.extend_last(1);
    device_mask.update(mask);
    auto kk = k.cview(), vv = v.cview();
    kk.tokens = vv.tokens = mask.length();
    ism::cuda::attention<T>(q.cview(), kk, vv, out.view, device_mask, opt, nullptr, lo,
                            ism_cuda_test::DimsVariants{});
  };
  step();  // first use: the kernels' shared-memory opt-in
  const Snapshot before = Snapshot::now();
  for (index_t s = 0; s < steps; ++s) step();
  const Snapshot d = Snapshot::now() - before;
  EXPECT_EQ(d.allocations, 0);
  EXPECT_EQ(d.frees, 0);
  EXPECT_EQ(d.syncs, 0);
  EXPECT_EQ(d.pointers, 0);
  EXPECT_EQ(d.devices, 0);
  EXPECT_EQ(d.attributes, 0);
  EXPECT_EQ(d.launches, 2 * steps);
  EXPECT_EQ(d.copies, 2 * steps);
  EXPECT_EQ(d.bytes, 2 * steps * long(sizeof(index_t)));
  EXPECT_EQ(device_mask.rows_uploaded(), 1);
  // And the last step is right.
  auto kk = k.cview(), vv = v.cview();
  kk.tokens = vv.tokens = mask.length();
  Tensor<double> want(1, 4, dim);
  ism::reference_attention_into<T, double, double>(q.cview(), kk, vv, want.view, mask, ism::AttentionOptions{},
                                                   nullptr);
  for (index_t h = 0; h < 4; ++h)
    for (index_t c = 0; c < dim; ++c)
      ASSERT_NEAR(float(out.view(0, h, c)), want.view(0, h, c), 0.02) << "head " << h << " col " << c;
  cudaFree(ws);
}

// Without a workspace a split allocates stream-ordered and frees on the same
// stream; a workspace too small for a forced split is refused before any
// launch; an automatic split shrinks to what the workspace holds.
TEST(EmulatedCudaRuntime, WorkspaceRules) {
  using T = Eigen::half;
  const index_t n = 1000, dim = 64;
  Tensor<T> q(2, 2, dim), k(n, 1, dim), v(n, 1, dim), out(2, 2, dim);
  Rng rng(3);
  q.fill_random(rng);
  k.fill_random(rng);
  v.fill_random(rng);
  ism::cuda::LaunchOptions lo;
  lo.kv_splits = 3;
  Snapshot before = Snapshot::now();
  ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, lo,
                          ism_cuda_test::NativeVariants{});
  Snapshot d = Snapshot::now() - before;
  EXPECT_EQ(d.allocations, 1);
  EXPECT_EQ(d.frees, 1);
  EXPECT_EQ(d.syncs, 0);
  EXPECT_EQ(d.launches, 2);

  std::vector<float> small(16);
  lo.workspace = {small.data(), small.size() * sizeof(float)};
  before = Snapshot::now();
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, lo,
                                ism_cuda_test::NativeVariants{});
      },
      {"launch.workspace.bytes = 64", "launch.kv_splits = 3"});
  d = Snapshot::now() - before;
  EXPECT_EQ(d.launches, 0);
  EXPECT_EQ(d.allocations, 0);

  lo.kv_splits = 0;  // automatic: 132 SMs want 4 splits of 32 key tiles; 64 bytes hold none
  before = Snapshot::now();
  ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, lo,
                          ism_cuda_test::NativeVariants{});
  d = Snapshot::now() - before;
  EXPECT_EQ(d.launches, 1);  // no split, so no merge
  EXPECT_EQ(d.allocations, 0);
}

// Pointer checks are opt-in: off, no runtime query; on, host memory is
// refused naming the buffer, and device memory passes.
TEST(EmulatedCudaRuntime, PointerChecksAreOptIn) {
  using T = Eigen::half;
  const index_t n = 20, dim = 64;
  Tensor<T> q(n, 1, dim), k(n, 1, dim), v(n, 1, dim), out(n, 1, dim);
  ism::cuda::LaunchOptions lo;
  Snapshot before = Snapshot::now();
  ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, lo,
                          ism_cuda_test::NativeVariants{});
  EXPECT_EQ((Snapshot::now() - before).pointers, 0);
  lo.check_pointers = true;
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, lo,
                                ism_cuda_test::NativeVariants{});
      },
      {"q.data", "not device memory"});
  // The same views copied into emulated device memory pass.
  void* buf = nullptr;
  const size_t bytes = q.buf.size() * sizeof(T);
  ASSERT_EQ(cudaMalloc(&buf, 4 * bytes), cudaSuccess);
  T* d = static_cast<T*>(buf);
  auto on_device = [&](const Tensor<T>& t, int i) {
    std::copy(t.buf.begin(), t.buf.end(), d + i * q.buf.size());
    auto view = t.view;
    view.data = d + i * q.buf.size();
    return view;
  };
  const auto dq = on_device(q, 0), dk = on_device(k, 1), dv = on_device(v, 2), dout = on_device(out, 3);
  before = Snapshot::now();
  ism::cuda::attention<T>(ism::as_const(dq), ism::as_const(dk), ism::as_const(dv), dout, ism::causal_mask(), {},
                          nullptr, lo, ism_cuda_test::NativeVariants{});
  EXPECT_EQ((Snapshot::now() - before).pointers, 4);
  cudaFree(buf);
}

// Bounds in memory are checked through a window too (a window over a
// DeviceMask is sliding_window(device_mask.policy(), w)): null bounds always,
// host bounds with check_pointers.
TEST(EmulatedCudaRuntime, WindowsOverBoundsInMemoryAreChecked) {
  using T = Eigen::half;
  const index_t n = 20, dim = 64;
  Tensor<T> q(n, 1, dim), k(n, 1, dim), v(n, 1, dim), out(n, 1, dim);
  const ism::RowBoundsMask null_bounds{nullptr, nullptr, n};
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::sliding_window(null_bounds, 4), {},
                                nullptr, {}, ism_cuda_test::NativeVariants{});
      },
      {"null bounds"});
  // Views in emulated device memory, bounds left in host memory.
  void* buf = nullptr;
  const size_t elems = q.buf.size();
  ASSERT_EQ(cudaMalloc(&buf, 4 * elems * sizeof(T)), cudaSuccess);
  T* d = static_cast<T*>(buf);
  auto on_device = [&](const Tensor<T>& t, size_t i) {
    std::copy(t.buf.begin(), t.buf.end(), d + i * elems);
    auto view = t.view;
    view.data = d + i * elems;
    return view;
  };
  const auto dq = on_device(q, 0), dk = on_device(k, 1), dv = on_device(v, 2), dout = on_device(out, 3);
  const ism::SegmentMask host = ism::ism_mask({0, 7, 12, 20});
  ism::cuda::LaunchOptions checked;
  checked.check_pointers = true;
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(ism::as_const(dq), ism::as_const(dk), ism::as_const(dv), dout,
                                ism::sliding_window(host.bounds(), 4), {}, nullptr, checked,
                                ism_cuda_test::NativeVariants{});
      },
      {"mask.lo", "not device memory"});
  cudaFree(buf);
}

// A call that needs a kernel its Variants leave out is refused, naming it,
// before anything runs.
TEST(EmulatedCudaRuntime, VariantsLeftOutAreRefused) {
  using T = Eigen::half;
  Tensor<T> q(3, 1, 80), k(3, 1, 80), v(3, 1, 80), out(3, 1, 80);
  const Snapshot before = Snapshot::now();
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(q.cview(), k.cview(), v.cview(), out.view, ism::causal_mask(), {}, nullptr, {},
                                ism_cuda_test::NativeVariants{});
      },
      {"q.dim = 80", "head-dim-80"});
  Tensor<T> q64(3, 1, 64), k64(3, 1, 64), v64(3, 1, 64), out64(3, 1, 64);
  ism::AttentionOptions opt;
  opt.softcap = 10.f;
  ism_test::expect_invalid(
      [&] {
        ism::cuda::attention<T>(q64.cview(), k64.cview(), v64.cview(), out64.view, ism::causal_mask(), opt, nullptr,
                                {}, ism_cuda_test::NativeVariants{});
      },
      {"options.softcap"});
  EXPECT_EQ((Snapshot::now() - before).launches, 0);
}

// The paged and batched entry points refuse bad input, naming the argument,
// before anything runs (the contiguous entry's checks: attention_test.cpp).
TEST(EmulatedCudaRuntime, PagedAndBatchedBadInputThrowsBeforeAnyLaunch) {
  using T = Eigen::half;
  const index_t dim = 64;
  Tensor<T> q(2, 2, dim), out(2, 2, dim), k(40, 1, dim), v(40, 1, dim);
  std::vector<T> pages(size_t(4 * 16 * dim));
  std::vector<std::int32_t> table{0, 1, 2};
  const Snapshot before = Snapshot::now();
  auto paged = [&](index_t page_size, index_t num_pages, const std::int32_t* t, index_t tokens) {
    const ism::PagedKV<T, std::int32_t> kv(pages.data(), pages.data(), num_pages, page_size, 1, dim, t, tokens);
    ism::cuda::attention<T>(q.cview(), kv, out.view, ism::causal_mask(), {}, nullptr, {},
                            ism_cuda_test::PagedVariants{});
  };
  ism_test::expect_invalid([&] { paged(0, 4, table.data(), 40); }, {"kv.page_size = 0"});
  ism_test::expect_invalid([&] { paged(16, 2, table.data(), 40); }, {"kv.tokens = 40", "kv.num_pages = 2"});
  ism_test::expect_invalid([&] { paged(16, 4, nullptr, 40); }, {"kv.block_table is null"});
  ism_test::expect_invalid(
      [&] {
        const ism::PagedKV<T, std::int32_t> kv(pages.data(), pages.data(), 4, 16, 1, dim, table.data(), 40);
        auto over = out.view;
        over.data = pages.data() + 8;  // out inside the pool
        ism::cuda::attention<T>(q.cview(), kv, over, ism::causal_mask(), {}, nullptr, {},
                                ism_cuda_test::PagedVariants{});
      },
      {"out overlaps k"});

  const ism::SegmentMask mask = ism::ism_mask({0, 10, 40});
  const ism::RowBoundsMask bounds = mask.bounds();
  using Req = ism::cuda::AttentionRequest<T, ism::RowBoundsMask>;
  Tensor<T> q2(2, 2, 32), out2(2, 2, dim);
  auto batch = [&](std::vector<Req> reqs, ism::AttentionOptions opt) {
    ism::cuda::attention_batch(reqs, opt, nullptr, {}, ism_cuda_test::PagedVariants{});
  };
  const Req good{q.cview(), k.cview(), v.cview(), out.view, &bounds, -1, nullptr};
  ism::AttentionOptions offset;
  offset.q_offset = 3;
  ism_test::expect_invalid([&] { batch({good}, offset); }, {"options.q_offset = 3"});
  Req null_mask = good;
  null_mask.mask = nullptr;
  ism_test::expect_invalid([&] { batch({good, null_mask}, {}); }, {"requests[1].mask is null"});
  Req other_dim = good;
  other_dim.q = q2.cview();
  other_dim.out = out2.view;
  ism_test::expect_invalid([&] { batch({good, other_dim}, {}); }, {"requests[1]"});
  Req writes_input = good;
  writes_input.out = ism::HeadsView<T>{const_cast<T*>(k.cview().data), 2, 2, dim, 2 * dim, dim};
  Req reads = good;
  reads.out = out2.view;
  ism_test::expect_invalid([&] { batch({reads, writes_input}, {}); }, {"overlaps"});
  EXPECT_EQ((Snapshot::now() - before).launches, 0);
}

// DeviceMask: a decoded answer uploads one row per token; the buffer grows
// geometrically (amortised O(1) allocations); a Bidirectional last segment
// that grows re-uploads its own rows (they see the new token); a truncated or
// unrelated layout is found by comparing segments. After every update the
// device rows equal the host's.
TEST(EmulatedCudaRuntime, DeviceMaskGrowsInPlace) {
  ism::SegmentMask mask = ism::ism_mask({0, 30, 50});
  ism::cuda::DeviceMask dm(mask);
  auto same = [&](const ism::SegmentMask& m) {
    ASSERT_EQ(dm.length(), m.length());
    const ism::RowBoundsMask d = dm.policy(), h = m.bounds();
    for (index_t i = 0; i < m.length(); ++i) {
      ASSERT_EQ(d.lo[i], h.lo[i]) << "row " << i;
      ASSERT_EQ(d.hi[i], h.hi[i]) << "row " << i;
    }
  };
  same(mask);
  const Snapshot before = Snapshot::now();
  for (int t = 0; t < 3000; ++t) {
    mask.extend_last(1);
    dm.update(mask);
    ASSERT_EQ(dm.rows_uploaded(), 1);
  }
  const Snapshot d = Snapshot::now() - before;
  EXPECT_LE(d.allocations, 5);  // 256 -> 512 -> ... -> 4096
  EXPECT_EQ(d.syncs, 0);
  same(mask);
  // A new user turn (Bidirectional), then tokens appended to it.
  mask.append({10, ism::Attend::Bidirectional});
  dm.update(mask);
  EXPECT_EQ(dm.rows_uploaded(), 10);
  mask.extend_last(2);
  dm.update(mask);
  EXPECT_EQ(dm.rows_uploaded(), 12);  // the turn's old rows now see the new tokens
  same(mask);
  // An unrelated, shorter layout: everything from its first differing segment.
  const ism::SegmentMask other = ism::ism_mask({0, 30, 45, 60});
  dm.update(other);
  EXPECT_EQ(dm.rows_uploaded(), 15);  // its answer is the old answer's start: rows from 45 on
  same(other);
}

}  // namespace
