#pragma once
// KV sources: where the fused kernel reads keys and values from. The kernel
// touches K and V only through a source's row pointers, one (token, kv head)
// row of `dim` contiguous elements at a time, while it packs a key tile. So a
// contiguous cache and a paged one run through the same kernel, and the cost
// of the indirection is one call per row, not per element.
//
// A KV source type S provides:
//   using S::element_type;       // what a row holds (float, Eigen::bfloat16, ...)
//   index_t S::tokens() const;   // cached tokens (keys [0, tokens()))
//   index_t S::heads() const;    // KV heads
//   index_t S::dim() const;      // elements per row
//   const T* S::key(index_t t, index_t h) const;    // dim contiguous elements
//   const T* S::value(index_t t, index_t h) const;  // dim contiguous elements
#include "ism/core/views.hpp"

namespace ism {

// K and V as two strided views (any token / head strides, dim contiguous).
template <class T>
struct ContiguousKV {
  using element_type = T;
  HeadsView<const T> k, v;

  index_t tokens() const { return k.tokens; }
  index_t heads() const { return k.heads; }
  index_t dim() const { return k.dim; }
  const T* key(index_t t, index_t h) const { return k.row(t, h); }
  const T* value(index_t t, index_t h) const { return v.row(t, h); }
};

}  // namespace ism
