#pragma once
// The checked, resolved shape of one attention call: what every backend plans
// from. core/validate.hpp produces it from the caller's views and options.
#include "ism/core/config.hpp"

namespace ism {

struct AttentionShape {
  index_t n_q = 0;       // query rows
  index_t n_k = 0;       // cached keys
  index_t q_heads = 0;
  index_t kv_heads = 0;
  index_t group = 1;     // query heads per KV head (GQA / MQA)
  index_t dim = 0;
  index_t q_offset = 0;  // absolute position of query row 0
  float scale = 1.f;

  // Same problem size (what a reused plan requires of new buffers).
  bool same_as(const AttentionShape& o) const {
    return n_q == o.n_q && n_k == o.n_k && q_heads == o.q_heads && kv_heads == o.kv_heads && dim == o.dim &&
           q_offset == o.q_offset;
  }
};

}  // namespace ism
