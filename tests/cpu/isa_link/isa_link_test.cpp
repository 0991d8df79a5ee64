// Two instruction sets linked into one program (issue 11): isa_link_path.cpp
// compiled with -mavx2 and ISM_SIMD=avx2, and again with AVX-512 flags,
// linked AVX-512 object first (so where both define the same inline function,
// GNU ld keeps the AVX-512 copy). Each path must report its own instruction
// set and match an fp64 attention (and its backward pass) computed here. This file includes no ism
// header, so it contributes no copy of anything.
//
// CTest also runs this binary under `qemu-x86_64 -cpu Haswell` (when qemu-user
// is installed): an AVX2 CPU without AVX-512, where any AVX-512 instruction
// reached from the AVX2 path is a SIGILL; and scans the two objects for
// functions they share whose AVX-512 copy holds EVEX instructions
// (isa_link_symbols.sh).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/isa_link/isa_link.hpp"

namespace {

struct Case {
  int tokens = 150, heads = 4, kv_heads = 2, dim = 72;
  std::vector<int> boundaries{0, 20, 45, 46, 90, 150};
  std::vector<float> q, k, v, dout;
  Case() {
    std::mt19937 rng(12345);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    q.resize(size_t(tokens * heads * dim));
    k.resize(size_t(tokens * kv_heads * dim));
    v.resize(k.size());
    for (float& x : q) x = u(rng);
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
    dout.resize(q.size());
    for (float& x : dout) x = u(rng);
  }
  isa_link::Problem problem() const {
    return {tokens, heads, kv_heads, dim, int(boundaries.size()) - 1, boundaries.data(), q.data(), k.data(), v.data(),
            dout.data()};
  }
  // The ISM rule written out: segments alternate Bidirectional, Causal, ...
  bool visible(int i, int j) const {
    int si = 0, sj = 0;
    while (boundaries[size_t(si) + 1] <= i) ++si;
    while (boundaries[size_t(sj) + 1] <= j) ++sj;
    return j <= i || (si == sj && si % 2 == 0);
  }
  double qa(int i, int h, int d) const { return q[size_t((i * heads + h) * dim + d)]; }
  double ka(int j, int g, int d) const { return k[size_t((j * kv_heads + g) * dim + d)]; }
  double va(int j, int g, int d) const { return v[size_t((j * kv_heads + g) * dim + d)]; }
  // fp64 attention (scale 1/sqrt(dim)), its LSE and, for the upstream
  // gradient dout, the gradients of q, k and v.
  void reference(std::vector<double>& out, std::vector<double>& lse, std::vector<double>& dq, std::vector<double>& dk,
                 std::vector<double>& dv) const {
    reference(out, lse);
    dq.assign(q.size(), 0.0);
    dk.assign(k.size(), 0.0);
    dv.assign(k.size(), 0.0);
    const int group = heads / kv_heads;
    const double scale = 1.0 / std::sqrt(double(dim));
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < tokens; ++i) {
        const int g = h / group;
        double delta = 0;  // dout_i . out_i
        for (int d = 0; d < dim; ++d)
          delta += double(dout[size_t((i * heads + h) * dim + d)]) * out[size_t((i * heads + h) * dim + d)];
        for (int j = 0; j < tokens; ++j) {
          if (!visible(i, j)) continue;
          double dot = 0, dp = 0;
          for (int d = 0; d < dim; ++d) {
            dot += qa(i, h, d) * ka(j, g, d);
            dp += double(dout[size_t((i * heads + h) * dim + d)]) * va(j, g, d);
          }
          const double prob = std::exp(dot * scale - lse[size_t(h * tokens + i)]);
          const double ds = prob * (dp - delta) * scale;
          for (int d = 0; d < dim; ++d) {
            dv[size_t((j * kv_heads + g) * dim + d)] += prob * double(dout[size_t((i * heads + h) * dim + d)]);
            dq[size_t((i * heads + h) * dim + d)] += ds * ka(j, g, d);
            dk[size_t((j * kv_heads + g) * dim + d)] += ds * qa(i, h, d);
          }
        }
      }
  }
  void reference(std::vector<double>& out, std::vector<double>& lse) const {
    out.assign(q.size(), 0.0);
    lse.assign(size_t(heads * tokens), 0.0);
    const int group = heads / kv_heads;
    const double scale = 1.0 / std::sqrt(double(dim));
    std::vector<double> s(static_cast<size_t>(tokens));
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < tokens; ++i) {
        double mx = -INFINITY;
        for (int j = 0; j < tokens; ++j) {
          if (!visible(i, j)) continue;
          double dot = 0;
          for (int d = 0; d < dim; ++d)
            dot += double(q[size_t((i * heads + h) * dim + d)]) * double(k[size_t((j * kv_heads + h / group) * dim + d)]);
          s[size_t(j)] = dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double sum = 0;
        for (int j = 0; j < tokens; ++j)
          if (visible(i, j)) sum += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
        for (int j = 0; j < tokens; ++j)
          if (visible(i, j))
            for (int d = 0; d < dim; ++d)
              out[size_t((i * heads + h) * dim + d)] += s[size_t(j)] / sum * v[size_t((j * kv_heads + h / group) * dim + d)];
        lse[size_t(h * tokens + i)] = mx + std::log(sum);
      }
  }
};

double max_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

void check_path(const char* (*entry)(const isa_link::Problem*, isa_link::Outputs*), const char* want) {
  const Case c;
  std::vector<float> f32(c.q.size()), lse(size_t(c.heads * c.tokens)), bf16(c.q.size()), mixed(c.q.size());
  std::vector<float> dq(c.q.size()), dk(c.k.size()), dv(c.k.size());
  const isa_link::Problem p = c.problem();
  isa_link::Outputs o{f32.data(), lse.data(), bf16.data(), mixed.data(), false, dq.data(), dk.data(), dv.data()};
  const char* name = entry(&p, &o);
  std::printf("path %s ran\n", name);
  EXPECT_STREQ(name, want);
  std::vector<double> ref, ref_lse, ref_dq, ref_dk, ref_dv;
  c.reference(ref, ref_lse, ref_dq, ref_dk, ref_dv);
  // fp32 accumulation: errors of ~1e-6 here; a wrong path or a broken build
  // of one is off by 1e-2 and more. bf16 rounds inputs to 8 bits (2^-9
  // relative) and the output; fp16 K/V to 11 bits.
  EXPECT_LE(max_diff(f32, ref), 2e-5);
  EXPECT_LE(max_diff(lse, ref_lse), 2e-5);
  EXPECT_LE(max_diff(bf16, ref), 3e-2);
  EXPECT_LE(max_diff(mixed, ref), 3e-3);
  EXPECT_TRUE(o.entry_points_agree) << "attention_batch or AttentionPlan differs from ism::attention";
  EXPECT_LE(max_diff(dq, ref_dq), 1e-4);
  EXPECT_LE(max_diff(dk, ref_dk), 1e-4);
  EXPECT_LE(max_diff(dv, ref_dv), 1e-4);
}

// ISM_ISA_LINK_REQUIRE=avx2 (or avx512, or both, comma-separated) makes a path
// that cannot run here a failure instead of a skip: the qemu run sets it, so
// it cannot pass without running the AVX2 path.
bool required(const char* isa) {
  const char* r = std::getenv("ISM_ISA_LINK_REQUIRE");
  return r && std::strstr(r, isa) != nullptr;
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

TEST(IsaLink, Avx2PathRunsItsOwnCode) {
  if (!cpu_has_avx2()) {
    ASSERT_FALSE(required("avx2")) << "ISM_ISA_LINK_REQUIRE names avx2, but this CPU lacks AVX2/FMA/F16C";
    GTEST_SKIP() << "this CPU lacks AVX2/FMA/F16C";
  }
  check_path(&ism_isa_link_avx2, "avx2");
}

TEST(IsaLink, Avx512PathRunsItsOwnCode) {
  if (!cpu_has_avx512()) {
    ASSERT_FALSE(required("avx512")) << "ISM_ISA_LINK_REQUIRE names avx512, but this CPU lacks it";
    GTEST_SKIP() << "this CPU lacks AVX-512 (F, BW, VL, DQ): only the AVX2 path runs";
  }
  check_path(&ism_isa_link_avx512, "avx512");
}

}  // namespace
