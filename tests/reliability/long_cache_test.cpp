// Memory of long caches: decoding one query row against 256k cached tokens
// (one head, dim 64) must not allocate anything proportional to N x N (that
// would be 256 GiB for the scores alone). Every allocation of this binary is
// counted by replacing the global operator new / delete, and the peak of
// bytes live during the call is what the test bounds and prints.
#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "reliability/reliability.hpp"

// The replaced operator delete frees with std::free what the replaced operator
// new got from std::malloc; GCC sees only the new/free pair and warns.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<long long> g_live{0}, g_peak{0};

void count(void* p) {
  if (!p) return;
  const long long now = g_live.fetch_add(static_cast<long long>(malloc_usable_size(p))) +
                        static_cast<long long>(malloc_usable_size(p));
  long long peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
void uncount(void* p) {
  if (p) g_live.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
}
void* allocate(std::size_t n, std::size_t align) {
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) p = std::malloc(n ? n : 1);
  else if (posix_memalign(&p, align, n ? n : 1) != 0) p = nullptr;
  count(p);
  return p;
}
void release(void* p) {
  uncount(p);
  std::free(p);
}

// Peak bytes allocated while f runs, above what was live when it started.
template <class F>
long long peak_during(F&& f) {
  const long long base = g_live.load();
  g_peak.store(base);
  f();
  return g_peak.load() - base;
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = allocate(n, 0)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = allocate(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }

namespace {

using ism::index_t;

constexpr index_t N = 256 * 1024, D = 64;
// N x N fp32 scores would be 256 GiB; K and V themselves are 64 MiB each. The
// bound is far below both: the call may keep O(tile) scratch per thread and
// O(chunks) merge state, nothing that grows with N.
constexpr long long kBound = 4ll << 20;

template <class Mask>
void decode_one_row(const Mask& mask, const char* what, std::uint64_t seed) {
  // A cheap hash fills the 32M cache values (a Mersenne twister takes seconds
  // under sanitizers); the seed still varies the data.
  std::uint64_t state = seed | 1;
  const auto next = [&] {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return float(double(state >> 11) * 0x1.0p-53 * 2 - 1);
  };
  const size_t cache = static_cast<size_t>(N * D), row = static_cast<size_t>(D);
  std::vector<float> k(cache), v(cache), q(row), out(row), lse(1);
  for (auto* b : {&k, &v, &q})
    for (auto& x : *b) x = next();
  const auto kv = [&](std::vector<float>& b) { return ism::token_major<const float>(b.data(), N, 1, D); };
  ism::AttentionOptions opt;
  opt.lse = lse.data();
  const long long peak = peak_during([&] {
    ism::attention<float>(ism::token_major<const float>(q.data(), 1, 1, D), kv(k), kv(v),
                          ism::token_major(out.data(), 1, 1, D), mask, opt);
  });
  std::printf("[ memory ] %s: decode of 1 row over %lld keys, dim %lld: peak %lld bytes allocated during the call "
              "(N x N x 4 = %lld)\n",
              what, (long long)N, (long long)D, peak, (long long)N * N * 4);
  EXPECT_LT(peak, kBound) << what;

  std::vector<double> ref(row);
  double ref_lse = 0;
  ism::reference_attention_into<float, double, double>(ism::token_major<const float>(q.data(), 1, 1, D), kv(k),
                                                       kv(v), ism::token_major(ref.data(), 1, 1, D), mask, {},
                                                       &ref_lse);
  for (index_t d = 0; d < D; ++d) ASSERT_NEAR(out[size_t(d)], ref[size_t(d)], 1e-5) << what << " d " << d;
  ASSERT_NEAR(lse[0], ref_lse, 1e-4) << what;
}

TEST(LongCache, DecodeOver256kKeysCausal) {
  ISM_SEEDED_TEST_BODY(seed);
  decode_one_row(ism::causal_mask(), "causal", seed);
}

// An ISM layout of 256k tokens: the mask itself is O(N) (two index arrays),
// built before the measurement; the call must not copy or densify it.
TEST(LongCache, DecodeOver256kKeysIsm) {
  ISM_SEEDED_TEST_BODY(seed);
  std::vector<index_t> b{0};
  ism_test::Rng rng(seed);
  while (b.back() < N) b.push_back(std::min(N, b.back() + rng.uniform(1, 4096)));
  // The decoded row is the last token; it must be an answer (causal) turn for
  // the row to be a true decode step, so fix the parity of the turn count.
  const ism::Attend first = (b.size() - 1) % 2 == 0 ? ism::Attend::Bidirectional : ism::Attend::Causal;
  const ism::SegmentMask mask = ism::ism_mask(b, first);
  decode_one_row(mask, "ism", seed);
}

// Rejected sizes are rejected before anything is allocated.
TEST(LongCache, HugeLayoutsAreRejectedWithoutAllocating) {
  using ism::Attend;
  const index_t huge = ism::SegmentMask::max_length() / 4;
  const long long peak = peak_during([&] {
    EXPECT_THROW(ism::packed_mask({{{huge, Attend::Causal}}, {{huge, Attend::Causal}}}, 3 * huge),
                 ism::invalid_argument);
    EXPECT_THROW(ism::dense_mask<float>(ism::causal_mask(), index_t(1) << 40, index_t(1) << 40),
                 ism::invalid_argument);
  });
  EXPECT_LT(peak, 1 << 16);
}

}  // namespace
