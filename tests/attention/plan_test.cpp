// AttentionPlan and attention_batch against single ism::attention calls.
//
// An engine plans a step once (requests of mixed masks, lengths and offsets:
// prefill chunks next to decode rows) and runs it for every layer with new
// buffers, contiguous or from one shared page pool, from whatever threads it
// has. Every such run must give the single calls' results bit for bit (the
// plan's promise), and those the fp64 reference's to fp32 rounding.
#include "attention/plan_testing.hpp"

namespace ism_test {
namespace {

using ism::AttentionOptions;
using ism::AttentionPlan;
using Bf16 = Eigen::bfloat16;
using Fp16 = Eigen::half;

std::vector<ism::PlanRequest> plan_requests(const Step& st) {
  std::vector<ism::PlanRequest> reqs;
  for (const RequestSpec& r : st.requests)
    reqs.push_back(std::visit([&](const auto& m) { return ism::plan_request(r.shape, m); }, r.mask));
  return reqs;
}

// Plans cut for 1 and 3 threads and for a caller's parallel_for: how tasks
// are cut depends on the budget, the bits must not.
std::vector<AttentionPlan> plans_for(const Step& st) {
  std::vector<AttentionPlan> plans;
  ism::HostExecution one, three, pf;
  one.threads = 1;
  three.threads = 3;
  pf.parallel_for = threaded_parallel_for(2);
  for (const ism::HostExecution& budget : {one, three, pf}) plans.emplace_back(plan_requests(st), budget);
  return plans;
}

// One ism::attention call per request: the bits every other way must give.
template <class TQ, class TK>
std::vector<unsigned char> single_calls(const Step& st, StepData<TQ, TK>& d, int threads) {
  d.poison();
  for (size_t i = 0; i < st.requests.size(); ++i) {
    AttentionOptions o = st.mods.options();
    o.q_offset = st.requests[i].shape.q_offset;
    o.lse = d.lse[i].data();
    o.threads = threads;
    std::visit([&](const auto& m) { ism::attention(d.q[i].cview(), d.k[i].cview(), d.v[i].cview(), d.out[i].view, m, o); },
               st.requests[i].mask);
  }
  return d.bits();
}

// attention_batch takes one element type and one mask type: the step's masks
// behind AnyMaskRef.
template <class T>
std::vector<unsigned char> batch_call(const Step& st, StepData<T, T>& d) {
  d.poison();
  std::vector<AnyMaskRef> masks;
  for (const RequestSpec& r : st.requests) masks.push_back({&r.mask});
  std::vector<ism::AttentionRequest<T, AnyMaskRef>> reqs;
  for (size_t i = 0; i < st.requests.size(); ++i)
    reqs.push_back({d.q[i].cview(), d.k[i].cview(), d.v[i].cview(), d.out[i].view, &masks[i],
                    st.requests[i].shape.q_offset, d.lse[i].data()});
  AttentionOptions o = st.mods.options();
  o.threads = 2;
  ism::attention_batch(reqs, o);
  return d.bits();
}

// Random steps, each planned once and run for two layers of new buffers in
// every mode: the bits of single calls, within the reference's bound.
template <class TQ, class TK>
void expect_plan_equals_single_calls(int steps) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < steps; ++it) {
    const Step st = random_step(rng, false);
    SCOPED_TRACE(st.describe());
    std::vector<AttentionPlan> plans = plans_for(st);
    // A plan moved after planning (into a container, out of a function)
    // still runs.
    AttentionPlan moved = std::move(plans.back());
    plans.back() = std::move(moved);
    for (int layer = 0; layer < 2; ++layer) {
      SCOPED_TRACE(::testing::Message() << "layer " << layer);
      StepData<TQ, TK> d(st, rng);  // new buffers, at new addresses
      const auto want = single_calls(st, d, int(rng.uniform(1, 3)));
      const StepReference ref = reference(st, d);
      expect_close(st, d, ref, "single calls");
      if constexpr (std::is_same_v<TQ, TK>) {
        EXPECT_TRUE(batch_call(st, d) == want) << "attention_batch differs from single calls";
      }
      for (int mode = 0; mode < run_modes; ++mode) {
        d.poison();
        run_plan(mode, plans[size_t(mode % 3)], d.contiguous(), st.mods.options(), rng);
        EXPECT_TRUE(d.bits() == want) << mode_name(mode) << " (plan " << mode % 3 << ") differs from single calls";
        expect_close(st, d, ref, mode_name(mode));
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

TEST(AttentionPlan, Fp32RunsEqualSingleCallsInEveryMode) { expect_plan_equals_single_calls<float, float>(6); }
TEST(AttentionPlan, Fp32QueriesBf16CacheRunsEqualSingleCalls) { expect_plan_equals_single_calls<float, Bf16>(3); }
TEST(AttentionPlan, Fp32QueriesFp16CacheRunsEqualSingleCalls) { expect_plan_equals_single_calls<float, Fp16>(3); }
TEST(AttentionPlan, Bf16RunsEqualSingleCalls) { expect_plan_equals_single_calls<Bf16, Bf16>(2); }

// Many sequences in one page pool, block tables of int32 or int64: single
// paged calls and the plan run on paged buffers give the contiguous bits.
template <class TQ, class TK, class I>
void expect_paged_equals_contiguous(int steps) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int it = 0; it < steps; ++it) {
    const Step st = random_step(rng, /*uniform=*/true);
    SCOPED_TRACE(st.describe());
    std::vector<AttentionPlan> plans = plans_for(st);
    for (int layer = 0; layer < 2; ++layer) {
      SCOPED_TRACE(::testing::Message() << "layer " << layer);
      StepData<TQ, TK> d(st, rng);
      const auto want = single_calls(st, d, 2);
      const StepReference ref = reference(st, d);
      const ism::RequestShape& s0 = st.requests[0].shape;
      const SharedPool<TK, I> pool(d.k, d.v, s0.kv_heads, s0.dim, rng);
      SCOPED_TRACE(::testing::Message() << "page size " << pool.page_size << ", " << pool.num_pages << " pages");
      d.poison();
      for (size_t i = 0; i < st.requests.size(); ++i) {
        AttentionOptions o = st.mods.options();
        o.q_offset = st.requests[i].shape.q_offset;
        o.lse = d.lse[i].data();
        const ism::PagedKV<TK, I> kv = pool.view(i, st.requests[i].shape.n_k);
        std::visit([&](const auto& m) { ism::attention(d.q[i].cview(), kv, d.out[i].view, m, o); },
                   st.requests[i].mask);
      }
      EXPECT_TRUE(d.bits() == want) << "single paged calls differ from contiguous ones";
      for (int k = 0; k < 4; ++k) {
        const int mode = int(rng.uniform(0, run_modes - 1));
        d.poison();
        run_plan(mode, plans[size_t(mode % 3)], pool.buffers(d), st.mods.options(), rng);
        EXPECT_TRUE(d.bits() == want) << mode_name(mode) << " on the page pool differs from contiguous single calls";
        expect_close(st, d, ref, mode_name(mode) + " (paged)");
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

TEST(AttentionPlan, PagedInt64Fp32EqualsContiguous) { expect_paged_equals_contiguous<float, float, std::int64_t>(3); }
TEST(AttentionPlan, PagedInt32Bf16CacheEqualsContiguous) { expect_paged_equals_contiguous<float, Bf16, std::int32_t>(3); }
TEST(AttentionPlan, PagedInt32Fp16CacheEqualsContiguous) { expect_paged_equals_contiguous<float, Fp16, std::int32_t>(2); }
TEST(AttentionPlan, PagedInt64Bf16EqualsContiguous) { expect_paged_equals_contiguous<Bf16, Bf16, std::int64_t>(2); }

// Plans without work: a default plan, one of no requests, requests with no
// rows; they run in every mode and write nothing.
TEST(AttentionPlan, EmptyPlansRun) {
  using Buffers = std::vector<ism::RequestBuffers<float, ism::ContiguousKV<float>>>;
  Rng rng(1);
  AttentionPlan none;
  EXPECT_EQ(none.size(), 0);
  EXPECT_EQ(none.tasks(), 0);
  for (int mode = 0; mode < run_modes; ++mode) run_plan(mode, none, Buffers{}, {}, rng);
  AttentionPlan empty(std::vector<ism::PlanRequest>{});
  EXPECT_EQ(empty.tasks(), 0);
  empty.run(Buffers{});

  std::vector<ism::PlanRequest> reqs;
  reqs.push_back(ism::plan_request({0, 10, 4, 2, 8, -1}, ism::causal_mask()));
  reqs.push_back(ism::plan_request({0, 0, 4, 2, 8, -1}, ism::full_mask()));
  AttentionPlan rowless(std::move(reqs));
  EXPECT_EQ(rowless.tasks(), 0);
  Tensor<float> q(0, 4, 8), out(0, 4, 8), k(10, 2, 8);
  Buffers b{{q.cview(), {k.cview(), k.cview()}, out.view, nullptr},
            {q.cview(), {k.cview(), k.cview()}, out.view, nullptr}};
  b[1].kv.k.tokens = b[1].kv.v.tokens = 0;
  for (int mode = 0; mode < run_modes; ++mode) run_plan(mode, rowless, b, {}, rng);
}

// A run whose parallel_for throws after some tasks ran leaves split-key merge
// counts half done; the plan must still give the single call's bits next time.
TEST(AttentionPlan, RunAfterAThrowingRunIsExact) {
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const index_t n_k = 20000, heads = 4, kv_heads = 2, dim = 16;
  Tensor<float> q(1, heads, dim), k(n_k, kv_heads, dim), v(n_k, kv_heads, dim), out(1, heads, dim), want(1, heads, dim);
  for (auto* t : {&q, &k, &v}) t->fill_random(rng);
  AttentionOptions o;
  o.threads = 2;
  ism::attention<float>(q.cview(), k.cview(), v.cview(), want.view, ism::causal_mask(), o);
  ism::HostExecution budget;
  budget.threads = 2;
  std::vector<ism::PlanRequest> reqs{ism::plan_request({1, n_k, heads, kv_heads, dim, -1}, ism::causal_mask())};
  AttentionPlan plan(std::move(reqs), budget);
  ASSERT_GT(plan.tasks(), 2) << "the request must split its keys for this test to mean anything";
  const std::vector<ism::RequestBuffers<float, ism::ContiguousKV<float>>> b{
      {q.cview(), {k.cview(), v.cview()}, out.view, nullptr}};
  struct Stop {};
  for (index_t ran_first = 1; ran_first < plan.tasks(); ++ran_first) {
    AttentionOptions throwing;
    throwing.parallel_for = [ran_first](index_t n, const std::function<void(index_t)>& body) {
      for (index_t i = 0; i < std::min(n, ran_first); ++i) body(i);
      throw Stop{};
    };
    EXPECT_THROW(plan.run(b, throwing), Stop);
    plan.run(b, o);
    EXPECT_TRUE(out.buf == want.buf) << "the run after one that threw after " << ran_first << " tasks differs";
  }
  EXPECT_EQ(plan.request(0).shape().n_k, n_k);
  expect_invalid([&] { (void)plan.request(1); }, {"ism::AttentionPlan::request", "i = 1"});
}

// --- bad input: a clear error naming the argument, nothing written ---------

// A valid step of three requests and its plan, outputs filled with a pattern.
struct BadInputFixture {
  Rng rng{11};
  Step st;
  StepData<float, float> d;
  AttentionPlan plan;
  std::vector<unsigned char> before;
  static Step make_step() {
    Step st;
    Rng rng(7);
    const index_t n_k[] = {40, 1100, 9}, n_q[] = {40, 1, 9};
    const MaskKind kinds[] = {MaskKind::Ism, MaskKind::Causal, MaskKind::Packed};
    for (int i = 0; i < 3; ++i) {
      RequestSpec r;
      r.shape = {n_q[i], n_k[i], 4, 2, 16, -1};
      r.q_offset = n_k[i] - n_q[i];
      r.mask = make_mask(kinds[i], n_k[i], rng, &r.desc);
      st.requests.push_back(std::move(r));
    }
    return st;
  }
  BadInputFixture() : st(make_step()), d(st, rng), plan(plan_requests(st)) {
    for (auto& o : d.out) std::fill(o.buf.begin(), o.buf.end(), 7.f);
    for (auto& l : d.lse) std::fill(l.begin(), l.end(), 7.f);
    before = d.bits();
  }
  // f throws ism::invalid_argument naming the needles and writes nothing.
  template <class F>
  void expect_rejected(F&& f, std::initializer_list<const char*> needles) {
    expect_invalid(f, needles);
    EXPECT_TRUE(d.bits() == before) << "a rejected run wrote output";
  }
};

TEST(AttentionPlan, RejectsBuffersOfAnotherShape) {
  BadInputFixture fx;
  using B = std::vector<ism::RequestBuffers<float, ism::ContiguousKV<float>>>;
  // Buffers of other shapes, valid in themselves, in place of request 1's.
  Tensor<float> q2(2, 4, 16), q_h(1, 2, 16), q_d(1, 4, 8), out2(2, 4, 16), out_h(1, 2, 16), out_d(1, 4, 8),
      k_t(1101, 2, 16), k_h(1100, 1, 16), k_d(1100, 2, 8);
  struct Case {
    const char* field;
    const char* got;
    const char* want;
    std::function<void(B&)> change;
  };
  const std::vector<Case> cases = {
      {"requests[1].q.tokens", "= 2", "plan's n_q = 1", [&](B& b) { b[1].q = q2.cview(); }},
      {"requests[1].q.heads", "= 2", "plan's q_heads = 4", [&](B& b) { b[1].q = q_h.cview(); }},
      {"requests[1].q.dim", "= 8", "plan's dim = 16", [&](B& b) { b[1].q = q_d.cview(); }},
      {"requests[1].out.tokens", "= 2", "plan's n_q = 1", [&](B& b) { b[1].out = out2.view; }},
      {"requests[1].out.heads", "= 2", "plan's q_heads = 4", [&](B& b) { b[1].out = out_h.view; }},
      {"requests[1].out.dim", "= 8", "plan's dim = 16", [&](B& b) { b[1].out = out_d.view; }},
      {"requests[1].kv.tokens", "= 1101", "plan's n_k = 1100", [&](B& b) { b[1].kv = {k_t.cview(), k_t.cview()}; }},
      {"requests[1].kv.heads", "= 1", "plan's kv_heads = 2", [&](B& b) { b[1].kv = {k_h.cview(), k_h.cview()}; }},
      {"requests[1].kv.dim", "= 8", "plan's dim = 16", [&](B& b) { b[1].kv = {k_d.cview(), k_d.cview()}; }},
  };
  Rng rng(3);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    B b = fx.d.contiguous();
    c.change(b);
    for (int mode : {0, 5, 6, 8, 10}) {
      SCOPED_TRACE(mode_name(mode));
      fx.expect_rejected([&] { run_plan(mode, fx.plan, b, {}, rng); }, {c.field, c.got, c.want});
    }
  }
  // The plan still runs on the buffers it was built for.
  StepData<float, float>& d = fx.d;
  d.poison();
  fx.plan.run(d.contiguous());
  const auto planned = d.bits();
  EXPECT_TRUE(single_calls(fx.st, d, 1) == planned);
}

TEST(AttentionPlan, RejectsBadRunArguments) {
  BadInputFixture fx;
  using B = std::vector<ism::RequestBuffers<float, ism::ContiguousKV<float>>>;
  const B good = fx.d.contiguous();
  B fewer(good.begin(), good.begin() + 2);
  fx.expect_rejected([&] { fx.plan.run(fewer); }, {"got 2 request buffers", "plan of 3 requests"});
  fx.expect_rejected([&] { fx.plan.bind(good.data(), 4, {}); }, {"got 4 request buffers"});

  AttentionOptions o;
  o.q_offset = 3;
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.q_offset = 3", "must be -1"});
  float lse[64];
  o = {};
  o.lse = lse;
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.lse must be null"});
  o = {};
  o.softcap = -1.f;
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.softcap = -1"});
  o = {};
  o.scale = std::numeric_limits<float>::infinity();
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.scale = inf"});
  o = {};
  o.threads = -2;
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.threads = -2"});
  std::vector<float> sinks(4, 0.f), slopes(4, 0.5f);
  sinks[3] = std::numeric_limits<float>::quiet_NaN();
  o = {};
  o.sinks = sinks.data();
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.sinks[3] = nan"});
  slopes[2] = std::numeric_limits<float>::infinity();
  o = {};
  o.alibi_slopes = slopes.data();
  fx.expect_rejected([&] { fx.plan.run(good, o); }, {"options.alibi_slopes[2] = inf"});

  // The caller's workers: ith outside [0, nth).
  fx.expect_rejected([&] { fx.plan.run(good, {}, 2, 2); }, {"ith = 2", "nth = 2"});
  fx.expect_rejected([&] { fx.plan.run(good, {}, -1, 2); }, {"ith = -1"});
  fx.expect_rejected([&] { fx.plan.run(good, {}, 0, 0); }, {"nth = 0"});
  const auto bound = fx.plan.bind(good, {});
  fx.expect_rejected([&] { bound.run_task(bound.tasks()); }, {"task", std::to_string(bound.tasks()).c_str()});
  fx.expect_rejected([&] { bound.run_task(-1); }, {"task", "-1"});
  fx.expect_rejected([&] { bound.run_share(3, 3); }, {"ith = 3", "nth = 3"});

  // Requests run at the same time: one's output may not be another's.
  B shared = good;
  shared[2].out.data = shared[0].out.data;
  fx.expect_rejected([&] { fx.plan.run(shared); }, {"requests[0].out", "requests[2].out", "overlaps"});
  B lse_shared = good;
  lse_shared[1].lse = good[0].lse;
  fx.expect_rejected([&] { fx.plan.run(lse_shared); }, {"requests[0].lse", "requests[1].lse", "overlaps"});
  B reads_output = good;
  reads_output[1].q.data = good[0].out.data;
  fx.expect_rejected([&] { fx.plan.run(reads_output); }, {"requests[0].out overlaps requests[1].q"});
  // And a request's own checks, named.
  B own = good;
  own[0].out.data = const_cast<float*>(own[0].q.data);
  fx.expect_rejected([&] { fx.plan.run(own); }, {"out overlaps q"});
  B null_q = good;
  null_q[2].q.data = nullptr;
  fx.expect_rejected([&] { fx.plan.run(null_q); }, {"q.data is null"});
  B negative_stride = good;
  negative_stride[0].kv.v.token_stride = -1;
  fx.expect_rejected([&] { fx.plan.run(negative_stride); }, {"v.token_stride = -1"});
}

TEST(AttentionPlan, RejectsBadPagedBuffers) {
  BadInputFixture fx;
  Rng rng(5);
  const SharedPool<float, std::int32_t> pool(fx.d.k, fx.d.v, 2, 16, rng);
  auto good = pool.buffers(fx.d);
  auto b = good;
  std::vector<std::int32_t> table(pool.tables[1]);
  table.back() = std::int32_t(pool.num_pages);
  b[1].kv = {pool.kp.data(), pool.vp.data(), pool.num_pages, pool.page_size, 2, 16, table.data(), 1100};
  fx.expect_rejected([&] { fx.plan.run(b); }, {"kv.block_table[", std::to_string(pool.num_pages).c_str()});
  b = good;
  b[0].kv = {pool.kp.data(), pool.vp.data(), pool.num_pages, 0, 2, 16, pool.tables[0].data(), 40};
  fx.expect_rejected([&] { fx.plan.run(b); }, {"kv.page_size = 0"});
  b = good;
  b[2].out = {const_cast<float*>(pool.kp.data()), 9, 4, 16, 64, 16};
  fx.expect_rejected([&] { fx.plan.run(b); }, {"out overlaps kv.k_pages"});
  // The block table is read while outputs are written: its own request's and
  // every other request's outputs must stay off it.
  b = good;
  std::vector<std::int32_t> table1(pool.tables[1].begin(), pool.tables[1].end());
  table1.resize(table1.size() + 64);  // room for the LSE laid over it
  b[1].kv = {pool.kp.data(), pool.vp.data(), pool.num_pages, pool.page_size, 2, 16, table1.data(), 1100};
  auto own = b;
  own[1].lse = reinterpret_cast<float*>(table1.data());
  fx.expect_rejected([&] { fx.plan.run(own); }, {"options.lse overlaps kv.block_table"});
  auto other = b;
  other[2].lse = reinterpret_cast<float*>(table1.data());
  fx.expect_rejected([&] { fx.plan.run(other); }, {"requests[2].lse overlaps requests[1].kv.block_table"});
  fx.plan.run(good);
  EXPECT_TRUE(fx.d.bits() != fx.before);  // the good buffers do run
}

TEST(AttentionPlan, RejectsBadRequests) {
  const ism::SegmentMask m = ism::ism_mask({0, 5, 9, 20});
  using ism::plan_request;
  expect_invalid([&] { plan_request({-1, 4, 2, 1, 8, -1}, m); }, {"ism::plan_request", "shape.n_q = -1"});
  expect_invalid([&] { plan_request({1, -4, 2, 1, 8, -1}, m); }, {"shape.n_k = -4"});
  expect_invalid([&] { plan_request({1, 4, 0, 1, 8, -1}, m); }, {"shape.q_heads = 0"});
  expect_invalid([&] { plan_request({1, 4, 2, 0, 8, -1}, m); }, {"shape.kv_heads = 0"});
  expect_invalid([&] { plan_request({1, 4, 2, 1, 0, -1}, m); }, {"shape.dim = 0"});
  expect_invalid([&] { plan_request({1, 4, 6, 4, 8, -1}, m); }, {"shape.q_heads = 6", "shape.kv_heads = 4"});
  expect_invalid([&] { plan_request({1, 4, 2, 1, 8, -2}, m); }, {"shape.q_offset = -2"});
  expect_invalid([&] { plan_request({5, 4, 2, 1, 8, -1}, m); }, {"shape.n_q = 5", "shape.n_k = 4"});
  // The window must lie inside the mask's layout (20 positions).
  expect_invalid([&] { plan_request({1, 21, 2, 1, 8, 0}, m); }, {"n_k = 21", "layout length 20"});
  expect_invalid([&] { plan_request({3, 10, 2, 1, 8, 18}, m); }, {"query rows [18, 21)", "layout length 20"});
  // Plans are cut for a thread budget, which cannot be negative.
  std::vector<ism::PlanRequest> reqs;
  reqs.push_back(plan_request({1, 4, 2, 1, 8, -1}, m));
  ism::HostExecution budget;
  budget.threads = -1;
  expect_invalid([&] { AttentionPlan p(std::move(reqs), budget); }, {"budget.threads = -1"});
}

}  // namespace
}  // namespace ism_test
