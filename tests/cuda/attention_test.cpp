// ism::cuda::attention against the fp64 reference on random shapes, layouts
// and data: every mask kind, fp16 and bf16, head dims 64, 128 and the generic
// path, GQA ratios, q_offset, LSE, strided views, and the split decode path.
// Without a GPU every test that needs one skips and says why.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/testing.hpp"
#include "cuda/runner.hpp"

namespace {

using ism::index_t;
using ism_cuda_test::MaskArg;
using ism_cuda_test::MaskKind;
using ism_test::Rng;
using ism_test::Tensor;

#define ISM_REQUIRE_GPU()                                                         \
  do {                                                                            \
    const std::string why = ism_cuda_test::gpu_unavailable_reason();              \
    if (!why.empty()) GTEST_SKIP() << "no GPU test run: " << why;                 \
  } while (0)

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
  int kv_splits = 0;
  bool want_lse = true;
  std::string describe() const {
    std::ostringstream os;
    os << "n_q " << n_q << " n_k " << n_k << " heads " << q_heads << "/" << kv_heads << " dim " << dim
       << " q_offset " << q_offset << " layouts " << q_token_major << kv_token_major << out_token_major << " pad "
       << pad << " scale " << scale << " kv_splits " << kv_splits;
    return os.str();
  }
};

const char* mask_name(MaskKind k) {
  switch (k) {
    case MaskKind::Full: return "full";
    case MaskKind::Causal: return "causal";
    case MaskKind::Prefix: return "prefix";
    case MaskKind::Segments: return "segments";
  }
  return "?";
}

// Runs one case on the GPU and against reference_attention_into<T, double,
// double>; `poison` (optional) overwrites keys/values before the run and
// must only touch keys no query row sees.
template <class T, class HostMask>
void check_case(Rng& rng, const Case& c, const MaskArg& arg, const HostMask& host_mask,
                const std::vector<index_t>& poison_keys = {}) {
  SCOPED_TRACE(::testing::Message() << ism::type_name<T>() << " " << mask_name(arg.kind) << " " << c.describe());
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

  ism::AttentionOptions opt;
  opt.q_offset = c.q_offset;
  opt.scale = c.scale;
  Tensor<double> want(c.n_q, c.q_heads, c.dim);
  std::vector<double> want_lse(size_t(c.q_heads * c.n_q));
  ism::reference_attention_into<T, double, double>(q.cview(), k.cview(), v.cview(), want.view, host_mask, opt,
                                                   want_lse.data());
  const T nan = T(std::numeric_limits<float>::quiet_NaN());
  for (index_t j : poison_keys)
    for (index_t h = 0; h < c.kv_heads; ++h)
      for (index_t d = 0; d < c.dim; ++d) k.view(j, h, d) = v.view(j, h, d) = nan;

  std::vector<float> got_lse(size_t(c.q_heads * c.n_q), 123.f);
  opt.lse = c.want_lse ? got_lse.data() : nullptr;
  ism_cuda_test::run_on_gpu<T>(q.cview(), k.cview(), v.cview(), out.view, arg, opt, c.kv_splits);

  const double u = unit_roundoff<T>();
  int reported = 0;
  std::vector<bool> in_view(out.buf.size(), false);
  for (index_t t = 0; t < c.n_q; ++t)
    for (index_t h = 0; h < c.q_heads; ++h)
      for (index_t d = 0; d < c.dim; ++d) {
        in_view[size_t(&out.view(t, h, d) - out.buf.data())] = true;
        const double g = double(float(out.view(t, h, d))), w = want.view(t, h, d);
        const double tol = 4 * u * (1 + std::abs(w));
        if (!(std::abs(g - w) <= tol) && reported++ < 5)
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
// random heads/GQA ratio, offsets and view layouts.
template <class T>
void random_case(Rng& rng, MaskKind kind, index_t dim, index_t max_n) {
  Case c;
  c.dim = dim;
  c.kv_heads = rng.uniform(1, 2);
  c.q_heads = c.kv_heads << rng.uniform(0, 2);  // GQA ratio 1, 2, 4
  c.q_token_major = rng.coin();
  c.kv_token_major = rng.coin();
  c.out_token_major = rng.coin();
  c.pad = rng.coin(0.3) ? rng.uniform(1, 9) : (rng.coin() ? 8 : 0);
  c.kv_splits = rng.coin(0.2) ? int(rng.uniform(1, 5)) : 0;
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
  SCOPED_TRACE(layout.describe());
  switch (kind) {
    case MaskKind::Full: return check_case<T>(rng, c, arg, ism::full_mask());
    case MaskKind::Causal: return check_case<T>(rng, c, arg, ism::causal_mask());
    case MaskKind::Prefix:
      arg.prefix = rng.uniform(0, length);
      return check_case<T>(rng, c, arg, ism::prefix_mask(arg.prefix));
    case MaskKind::Segments:
      arg.segments = &segments;
      return check_case<T>(rng, c, arg, segments);
  }
}

template <class T>
class CudaAttention : public ::testing::Test {};
using StorageTypes = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(CudaAttention, StorageTypes);

// Dims: the two tuned kernels and odd ones on the generic path (not multiples
// of 16, of 8, or even of 2; and the 256 maximum).
const index_t kDims[] = {64, 128, 8, 40, 72, 100, 3, 256};

TYPED_TEST(CudaAttention, EveryMaskDimAndGqaRatioMatchesReference) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (MaskKind kind : {MaskKind::Full, MaskKind::Causal, MaskKind::Prefix, MaskKind::Segments})
    for (index_t dim : kDims)
      for (int rep = 0; rep < 3; ++rep) {
        random_case<TypeParam>(rng, kind, dim, dim >= 128 ? 200 : 330);
        if (this->HasFailure()) return;
      }
}

// ISM proper: alternating query/answer turns from boundaries, prefill of the
// whole dialogue and a chunk of the last round against the cache.
TYPED_TEST(CudaAttention, IsmDialogueMatchesReference) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int rep = 0; rep < 6; ++rep) {
    std::vector<index_t> b{0};
    const index_t rounds = rng.uniform(1, 6);
    for (index_t r = 0; r < 2 * rounds; ++r) b.push_back(b.back() + rng.uniform(1, 90));
    const ism::SegmentMask mask = ism::ism_mask(b);
    MaskArg arg{MaskKind::Segments, 0, &mask};
    Case c;
    c.dim = rep % 2 ? 128 : 64;
    c.kv_heads = 2;
    c.q_heads = 4;
    c.n_k = mask.length();
    c.n_q = rep < 3 ? c.n_k : b[b.size() - 1] - b[b.size() - 3];  // whole dialogue, or the last round
    check_case<TypeParam>(rng, c, arg, mask);
    if (this->HasFailure()) return;
  }
}

// Decode: a few new tokens against a long cache, keys split across thread
// blocks and merged by LSE (forced split counts and the automatic choice).
TYPED_TEST(CudaAttention, DecodeSplitsMatchReference) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (int splits : {0, 1, 2, 3, 7, 16}) {
    Case c;
    c.dim = splits % 2 ? 128 : (splits == 16 ? 96 : 64);
    c.kv_heads = rng.uniform(1, 2);
    c.q_heads = c.kv_heads * 4;
    c.n_k = rng.uniform(700, 3000);
    c.n_q = rng.uniform(1, 5);
    c.kv_splits = splits;
    c.kv_token_major = rng.coin();
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Causal}, ism::causal_mask());
    // The last answer of an ISM dialogue, the query turn still visible whole.
    std::vector<index_t> b{0};
    while (b.back() < c.n_k - 120) b.push_back(b.back() + rng.uniform(20, 300));
    b.push_back(c.n_k);
    const ism::SegmentMask mask = ism::ism_mask(b);
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Segments, 0, &mask}, mask);
    if (this->HasFailure()) return;
  }
}

// Rows that see nothing (padding, or a window of keys that are not cached
// yet) give 0 and LSE -inf, never NaN, in both the direct and the split path.
TYPED_TEST(CudaAttention, RowsThatSeeNothingGiveZeroAndMinusInfinity) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  const ism::SegmentMask mask =
      ism::packed_mask({{{70, ism::Attend::Bidirectional}, {50, ism::Attend::Causal}}}, 90);
  for (int splits : {1, 3}) {
    Case c;
    c.n_q = 150;
    c.n_k = mask.length();
    c.q_offset = 60;  // rows 120.. are padding
    c.kv_splits = splits;
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Segments, 0, &mask}, mask);
    Case none = c;  // the second document's keys are not cached
    const ism::SegmentMask two = ism::packed_mask({{{40, ism::Attend::Causal}}, {{100, ism::Attend::Bidirectional}}});
    none.n_k = 40;
    none.n_q = 100;
    none.q_offset = 40;
    check_case<TypeParam>(rng, none, MaskArg{MaskKind::Segments, 0, &two}, two);
  }
}

// Key blocks that no row sees are never read: their keys and values are NaN,
// and any visit would turn the output into NaN (0 * NaN in P.V).
TYPED_TEST(CudaAttention, EmptyKeyBlocksAreNeverRead) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  // Three documents of 256 tokens; queries are the last one. The first two
  // documents' keys are whole 64-key (and 32-key) blocks nobody sees.
  const ism::SegmentMask mask = ism::packed_mask({{{100, ism::Attend::Bidirectional}, {156, ism::Attend::Causal}},
                                                  {{256, ism::Attend::Causal}},
                                                  {{64, ism::Attend::Bidirectional}, {192, ism::Attend::Causal}}});
  std::vector<index_t> hidden;
  for (index_t j = 0; j < 512; ++j) hidden.push_back(j);
  for (index_t dim : {64, 128, 40}) {
    Case c;
    c.dim = dim;
    c.n_k = 768;
    c.n_q = 256;
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Segments, 0, &mask}, mask, hidden);
    c.kv_splits = 3;
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Segments, 0, &mask}, mask, hidden);
  }
}

// Misaligned and oddly strided views take the element-wise load path.
TYPED_TEST(CudaAttention, OddStridesMatchReference) {
  ISM_REQUIRE_GPU();
  ISM_SEEDED_TEST_BODY(seed);
  Rng rng(seed);
  for (index_t pad : {1, 3, 5}) {
    Case c;
    c.dim = pad == 3 ? 128 : 64;
    c.pad = pad;
    c.n_k = rng.uniform(100, 300);
    c.n_q = c.n_k;
    c.q_token_major = false;
    c.q_heads = 2;
    check_case<TypeParam>(rng, c, MaskArg{MaskKind::Causal}, ism::causal_mask());
  }
}

// --- argument checks: no GPU needed, nothing reaches the device -----------

TEST(CudaAttentionArguments, BadShapesThrowBeforeAnyDeviceWork) {
  Tensor<Eigen::half> q(4, 2, 64), k(4, 1, 64), v(4, 1, 32), out(4, 2, 64);
  const MaskArg causal{MaskKind::Causal};
  EXPECT_THROW(ism_cuda_test::call_directly<Eigen::half>(q.cview(), k.cview(), v.cview(), out.view, causal, {}),
               ism::invalid_argument);
  Tensor<Eigen::half> q3(4, 3, 64), k2(4, 2, 64), v2(4, 2, 64), out3(4, 3, 64);
  try {
    ism_cuda_test::call_directly<Eigen::half>(q3.cview(), k2.cview(), v2.cview(), out3.view, causal, {});
    ADD_FAILURE() << "q.heads = 3 with k.heads = 2 did not throw";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q.heads = 3"), std::string::npos) << e.what();
  }
  Tensor<Eigen::bfloat16> qb(4, 1, 300), kb(4, 1, 300), vb(4, 1, 300), ob(4, 1, 300);
  try {
    ism_cuda_test::call_directly<Eigen::bfloat16>(qb.cview(), kb.cview(), vb.cview(), ob.view, causal, {});
    ADD_FAILURE() << "dim 300 did not throw";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q.dim = 300"), std::string::npos) << e.what();
  }
  const ism::SegmentMask short_mask = ism::ism_mask({0, 2, 3});
  EXPECT_THROW(ism_cuda_test::call_directly<Eigen::half>(q.cview(), k2.cview(), v2.cview(), out.view,
                                                         MaskArg{MaskKind::Segments, 0, &short_mask}, {}),
               ism::invalid_argument);
}

TEST(CudaAttentionArguments, HostPointersAreRefused) {
  ISM_REQUIRE_GPU();
  Tensor<Eigen::half> q(4, 1, 64), k(4, 1, 64), v(4, 1, 64), out(4, 1, 64);
  try {
    ism_cuda_test::call_directly<Eigen::half>(q.cview(), k.cview(), v.cview(), out.view, MaskArg{MaskKind::Causal},
                                              {});
    ADD_FAILURE() << "host buffers were accepted";
  } catch (const ism::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not device memory"), std::string::npos) << e.what();
  }
}

TEST(CudaErrors, FailedCallsThrowNamingTheCall) {
  try {
    ism_cuda_test::check_status(1 /* cudaErrorInvalidValue */, "cudaMemcpy(dst, src, n, kind)");
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaMemcpy(dst, src, n, kind)"), std::string::npos) << what;
    EXPECT_NE(what.find("runner.cu:"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(ism_cuda_test::check_status(0, "cudaFree(p)"));
}

}  // namespace
