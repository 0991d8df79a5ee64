// The kernel's fragment bookkeeping (ism/cuda/fragment.hpp), checked on the
// host: ldmatrix and mma.m16n8k16 are emulated here from the PTX ISA's
// fragment tables (written out independently below), fed with the kernel's
// address functions in the kernel's loop order, and must yield Q K^T and P V.
#include "ism/cuda/fragment.hpp"

#include <gtest/gtest.h>

#include <array>
#include <vector>

#include "common/testing.hpp"

namespace {

namespace frag = ism::cuda::frag;

// A row-major matrix in "shared memory", with a padded row stride like the kernel's.
struct Smem {
  int rows, cols, stride;
  std::vector<float> x;
  Smem(int r, int c) : rows(r), cols(c), stride(c + 8), x(size_t(r * (c + 8)), -1e9f) {}
  float& at(int r, int c) { return x[size_t(r * stride + c)]; }
  float at(int r, int c) const { return x[size_t(r * stride + c)]; }
};

using Reg = std::array<float, 2>;  // one 32-bit register: two b16 elements, low first
using Frag4 = std::array<Reg, 4>;

// ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lane L gives the start (row, col)
// of row L % 8 of matrix L / 8; lane L receives from matrix i the elements
// (L/4, 2(L%4)) and (L/4, 2(L%4)+1), or transposed (2(L%4), L/4), (2(L%4)+1, L/4).
template <class RowOf, class ColOf>
std::array<Frag4, 32> ldmatrix_x4(const Smem& m, int row0, int col0, RowOf row_of, ColOf col_of, bool trans) {
  std::array<Frag4, 32> out{};
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int r = lane / 4, c = 2 * (lane % 4);
      auto element = [&](int mr, int mc) {  // element (mr, mc) of matrix i
        const int supplier = 8 * i + mr;
        return m.at(row0 + row_of(supplier), col0 + col_of(supplier) + mc);
      };
      out[size_t(lane)][size_t(i)] = trans ? Reg{element(c, r), element(c + 1, r)} : Reg{element(r, c), element(r, c + 1)};
    }
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32: fragment layouts from the PTX ISA,
// g = lane / 4, t = lane % 4:
//   A: a_i holds (g + 8 (i % 2), 2t + 8 (i / 2)) and the next column
//   B: b_i holds (k = 2t + 8 i, n = g) and k + 1
//   C: c_i holds (g + 8 (i / 2), 2t + i % 2)
void mma_16816(std::array<std::array<float, 4>, 32>& c, const std::array<Frag4, 32>& a,
               const std::array<std::array<Reg, 2>, 32>& b) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h) A[g + 8 * (i % 2)][2 * t + 8 * (i / 2) + h] = a[size_t(lane)][size_t(i)][size_t(h)];
    for (int i = 0; i < 2; ++i)
      for (int h = 0; h < 2; ++h) B[2 * t + 8 * i + h][g] = b[size_t(lane)][size_t(i)][size_t(h)];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float sum = 0;
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      c[size_t(lane)][size_t(i)] += sum;
    }
  }
}

std::array<std::array<Reg, 2>, 32> pick(const std::array<Frag4, 32>& r, int first) {
  std::array<std::array<Reg, 2>, 32> b{};
  for (int lane = 0; lane < 32; ++lane) b[size_t(lane)] = {r[size_t(lane)][size_t(first)], r[size_t(lane)][size_t(first + 1)]};
  return b;
}

// The kernel's S = Q K^T for one warp (16 query rows) and a key tile, then
// O = P V with P taken straight from the S accumulators, exactly as in
// attention_fwd_kernel. Small integers keep every sum exact.
TEST(CudaFragments, KernelLoopsComputeQKtAndPV) {
  ISM_SEEDED_TEST_BODY(seed);
  ism_test::Rng rng(seed);
  constexpr int D = 48, BN = 32;
  Smem q(16, D), k(BN, D), v(BN, D);
  for (int r = 0; r < 16; ++r)
    for (int d = 0; d < D; ++d) q.at(r, d) = float(rng.uniform(-3, 3));
  for (int r = 0; r < BN; ++r)
    for (int d = 0; d < D; ++d) {
      k.at(r, d) = float(rng.uniform(-3, 3));
      v.at(r, d) = float(rng.uniform(-3, 3));
    }

  std::array<std::array<std::array<float, 4>, 32>, BN / 8> s{};
  for (int kk = 0; kk < D / 16; ++kk) {
    const auto a = ldmatrix_x4(q, 0, kk * 16, frag::a_row, frag::a_col, false);
    for (int j = 0; j < BN / 8; j += 2) {
      const auto bk = ldmatrix_x4(k, j * 8, kk * 16, frag::bt_row, frag::bt_col, false);
      mma_16816(s[size_t(j)], a, pick(bk, 0));
      mma_16816(s[size_t(j + 1)], a, pick(bk, 2));
    }
  }
  for (int j = 0; j < BN / 8; ++j)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const int row = frag::c_row(lane, e), key = j * 8 + frag::c_col(lane, e);
        float want = 0;
        for (int d = 0; d < D; ++d) want += q.at(row, d) * k.at(key, d);
        ASSERT_EQ(s[size_t(j)][size_t(lane)][size_t(e)], want) << "S(" << row << ", " << key << ") lane " << lane;
      }

  // Any P will do: use S itself (scaled down) as the probabilities.
  float P[16][BN];
  for (int j = 0; j < BN / 8; ++j)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        float& x = s[size_t(j)][size_t(lane)][size_t(e)];
        x = float(int(x) % 5);
        P[frag::c_row(lane, e)][j * 8 + frag::c_col(lane, e)] = x;
      }
  std::array<std::array<std::array<float, 4>, 32>, D / 8> o{};
  for (int c = 0; c < BN / 16; ++c) {
    std::array<Frag4, 32> a{};
    for (int lane = 0; lane < 32; ++lane) {
      const auto& s0 = s[size_t(2 * c)][size_t(lane)];
      const auto& s1 = s[size_t(2 * c + 1)][size_t(lane)];
      a[size_t(lane)] = {Reg{s0[0], s0[1]}, Reg{s0[2], s0[3]}, Reg{s1[0], s1[1]}, Reg{s1[2], s1[3]}};
    }
    for (int n = 0; n < D / 8; n += 2) {
      const auto bv = ldmatrix_x4(v, c * 16, n * 8, frag::b_row, frag::b_col, true);
      mma_16816(o[size_t(n)], a, pick(bv, 0));
      mma_16816(o[size_t(n + 1)], a, pick(bv, 2));
    }
  }
  for (int n = 0; n < D / 8; ++n)
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < 4; ++e) {
        const int row = frag::c_row(lane, e), col = n * 8 + frag::c_col(lane, e);
        float want = 0;
        for (int key = 0; key < BN; ++key) want += P[row][key] * v.at(key, col);
        ASSERT_EQ(o[size_t(n)][size_t(lane)][size_t(e)], want) << "O(" << row << ", " << col << ") lane " << lane;
      }
}

// Every lane's address is a distinct row start inside the tile, so one
// ldmatrix.x4 reads each of the 32 row segments of its 16x16 block once.
TEST(CudaFragments, LdmatrixAddressesCoverTheBlockOnce) {
  for (auto fn : {std::make_pair(frag::a_row, frag::a_col), std::make_pair(frag::bt_row, frag::bt_col),
                  std::make_pair(frag::b_row, frag::b_col)}) {
    bool seen[16][2] = {};
    for (int lane = 0; lane < 32; ++lane) {
      const int r = fn.first(lane), c = fn.second(lane);
      ASSERT_TRUE(r >= 0 && r < 16 && (c == 0 || c == 8));
      EXPECT_FALSE(seen[r][c / 8]) << "lane " << lane;
      seen[r][c / 8] = true;
    }
  }
}

}  // namespace
