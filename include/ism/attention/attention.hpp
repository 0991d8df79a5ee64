#pragma once
// ism::attention, one sequence in one call (docs/DESIGN.md section 2):
//
//   attention(q, k, v, out, mask, opts)     K and V as two strided views
//   attention(q, paged_kv, out, mask, opts) K and V through a block table
//
// Q and out share one element type, K and V another or the same (fp32
// activations over a 16-bit cache: no template arguments needed). Every call
// is checked before anything is written (ism::invalid_argument names the
// argument), then planned and run like a one-request AttentionPlan.
//
// The instruction set is chosen at compile time (ism/cpu/simd/select.hpp);
// these functions live in an inline namespace named after it, so they are
// spelled ism::attention everywhere.
#include <type_traits>
#include <vector>

#include "ism/attention/kv_checks.hpp"
#include "ism/core/isa_vector.hpp"
#include "ism/core/options.hpp"
#include "ism/cpu/run.hpp"
#include "ism/kv/contiguous.hpp"
#include "ism/kv/paged_view.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism {
namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

// Plans and runs checked problems whose bounds are filled in.
template <class TQ, class KV>
void execute(const cpu::Problem<TQ, KV>* problems, index_t count, const AttentionOptions& opt) {
  // Per-ISA containers (core/isa_vector.hpp): their code is this unit's own.
  isa_vector<AttentionShape> shapes;
  isa_vector<QueryBounds> bounds;
  shapes.reserve(static_cast<size_t>(count));
  bounds.reserve(static_cast<size_t>(count));
  for (index_t p = 0; p < count; ++p) {
    shapes.push_back(problems[p].shape);
    bounds.push_back(problems[p].bounds);
  }
  const int threads = opt.threads > 0 && !opt.parallel_for ? opt.threads : cpu::default_threads();
  const cpu::Schedule schedule(shapes.data(), bounds.data(), count, threads);
  cpu::RunState state(schedule);
  cpu::run_all(schedule, state, problems, cpu::ScoreMods{opt.softcap, opt.sinks, opt.alibi_slopes}, opt);
}

// One call over any KV source: check, read the rows' bounds, run.
template <class TQ, class KV, class Mask>
void attend(const char* where, HeadsView<const TQ> q, const KV& kv, HeadsView<TQ> out, const Mask& mask,
            const AttentionOptions& opt) {
  const CheckedCall c = check_call(where, q, kv, out, mask, opt);
  isa_vector<index_t> lo(static_cast<size_t>(c.shape.n_q)), hi(lo.size());
  fill_query_bounds(mask, c.shape.n_q, c.shape.n_k, c.shape.q_offset, lo.data(), hi.data());
  const cpu::Problem<TQ, KV> p{q, kv, out, opt.lse, c.shape, {lo.data(), hi.data(), c.shape.q_offset, c.shape.n_q}};
  execute(&p, 1, opt);
}

// The views of a mixed-type call: Q and out of one type, K and V of one
// (other) type; calls whose views all hold one type take the overloads with
// an explicit element type instead.
template <class Q, class K, class V, class O>
inline constexpr bool mixed_views_v = !std::is_const_v<O> && std::is_same_v<std::remove_const_t<Q>, O> &&
                                      std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>> &&
                                      !(std::is_same_v<Q, const O> && std::is_same_v<K, const O> &&
                                        std::is_same_v<V, const O>);

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

inline namespace ISM_SIMD_NAMESPACE {

// out[t, h, :] = softmax over the keys row q_offset + t may see of
// scale * q[t, h, :] . k[j, h / group, :] (then softcap, ALiBi), times v.
// See docs/DESIGN.md section 1. Throws ism::invalid_argument (writing nothing)
// on bad arguments.
template <class T, class Mask>
void attention(HeadsView<const detail::type_identity_t<T>> q, HeadsView<const detail::type_identity_t<T>> k,
               HeadsView<const detail::type_identity_t<T>> v, HeadsView<T> out, const Mask& mask,
               const AttentionOptions& opt = {}) {
  detail::attend("ism::attention", q, ContiguousKV<T>{k, v}, out, mask, opt);
}

// Q/out and K/V of different element types (fp32 activations, 16-bit cache),
// deduced from the views.
template <class Q, class K, class V, class O, class Mask,
          class = std::enable_if_t<detail::mixed_views_v<Q, K, V, O>>>
void attention(HeadsView<Q> q, HeadsView<K> k, HeadsView<V> v, HeadsView<O> out, const Mask& mask,
               const AttentionOptions& opt = {}) {
  using TK = std::remove_const_t<K>;
  detail::attend<O>("ism::attention", q, ContiguousKV<TK>{k, v}, out, mask, opt);
}

// Same contract with K and V read through a paged cache's block table
// (int32 or int64). Results equal the contiguous call on the same keys bit for
// bit (the kernel packs key tiles row by row from either source).
template <class T, class I, class Mask>
void attention(HeadsView<const detail::type_identity_t<T>> q, const PagedKV<T, I>& kv, HeadsView<T> out,
               const Mask& mask, const AttentionOptions& opt = {}) {
  detail::attend("ism::attention(paged)", q, kv, out, mask, opt);
}

template <class Q, class TK, class I, class O, class Mask,
          class = std::enable_if_t<detail::mixed_views_v<Q, const TK, const TK, O>>>
void attention(HeadsView<Q> q, const PagedKV<TK, I>& kv, HeadsView<O> out, const Mask& mask,
               const AttentionOptions& opt = {}) {
  detail::attend<O>("ism::attention(paged)", q, kv, out, mask, opt);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
