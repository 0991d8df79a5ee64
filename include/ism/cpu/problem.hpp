#pragma once
// What the CPU backend is handed: validated problems (views, a KV source, the
// rows' key bounds) and the score modifiers. Nothing here knows which entry
// point the call came through.
#include "ism/core/isa.hpp"
#include "ism/core/shape.hpp"
#include "ism/core/views.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism::cpu {
inline namespace ISM_SIMD_NAMESPACE {

// The modifiers of AttentionOptions as the kernel applies them; all off by
// default. Checked by the front end (core/validate.hpp).
struct ScoreMods {
  float softcap = 0.f;                  // 0: off
  const float* sinks = nullptr;         // [q_heads] or null
  const float* alibi_slopes = nullptr;  // [q_heads] or null
};

// One problem of a (possibly batched) call. q and out hold TQ; the KV source
// (kv/contiguous.hpp, kv/paged_view.hpp) holds its own element type.
template <class TQ, class KV>
struct Problem {
  HeadsView<const TQ> q;
  KV kv;
  HeadsView<TQ> out;
  float* lse;  // [q_heads][n_q] or null
  AttentionShape shape;
  QueryBounds bounds;
};

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism::cpu
