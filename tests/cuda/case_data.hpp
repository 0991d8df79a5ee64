#pragma once
// Test data both backends of the CUDA tests build the same way: a paged copy
// of K/V, and the views of one request of a batch. Light on purpose: nvcc
// compiles it into the GPU runner (no GoogleTest, no CPU kernels).
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "ism/core/config.hpp"
#include "ism/core/views.hpp"
#include "ism/mask/segment_mask.hpp"

namespace ism_cuda_test {

using ism::index_t;

// K and V copied into a pool of pages in shuffled order, with its block
// table (kv/paged_view.hpp's layout: pages of [page_size][heads][dim]).
template <class T>
struct PagedCopy {
  std::vector<T> k, v;
  std::vector<std::int32_t> table32;
  std::vector<std::int64_t> table64;
  index_t num_pages = 0, page_size = 1, heads = 1, dim = 1;
  PagedCopy(ism::HeadsView<const T> kk, ism::HeadsView<const T> vv, index_t page, std::uint64_t seed)
      : page_size(page), heads(kk.heads), dim(kk.dim) {
    const index_t blocks = (kk.tokens + page - 1) / page;
    num_pages = blocks + 2;  // two pages nobody uses
    std::vector<index_t> order(static_cast<size_t>(num_pages));
    for (index_t i = 0; i < num_pages; ++i) order[size_t(i)] = i;
    std::mt19937_64 rng(seed);
    for (index_t i = num_pages - 1; i > 0; --i)
      std::swap(order[size_t(i)], order[size_t(std::uniform_int_distribution<index_t>(0, i)(rng))]);
    const size_t elems = size_t(num_pages * page * heads * dim);
    // Unused slots hold NaN: reading one would show.
    k.assign(elems, T(std::numeric_limits<float>::quiet_NaN()));
    v = k;
    for (index_t b = 0; b < blocks; ++b) {
      table32.push_back(std::int32_t(order[size_t(b)]));
      table64.push_back(order[size_t(b)]);
    }
    for (index_t t = 0; t < kk.tokens; ++t)
      for (index_t h = 0; h < heads; ++h)
        for (index_t d = 0; d < dim; ++d) {
          const size_t at = size_t(((order[size_t(t / page)] * page + t % page) * heads + h) * dim + d);
          k[at] = kk(t, h, d);
          v[at] = vv(t, h, d);
        }
  }
};

// One request of a batch: host views, its layout, offset and LSE.
template <class T>
struct BatchView {
  ism::HeadsView<const T> q, k, v;
  ism::HeadsView<T> out;
  const ism::SegmentMask* mask = nullptr;
  index_t q_offset = -1;
  float* lse = nullptr;
};

}  // namespace ism_cuda_test
