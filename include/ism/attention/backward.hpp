#pragma once
// ism::attention_backward: the gradients of ism::attention (docs/DESIGN.md
// section 2b). Given the forward's inputs, its output and LSE (natural log,
// options.lse of the forward call) and the gradient dout of a loss with
// respect to the output, it writes
//
//   dq = dL/dq,  dk = dL/dk,  dv = dL/dv
//
// for the same mask, q_offset, scale, softcap, ALiBi slopes and sinks as the
// forward (the sinks change P's normalisation only, through the LSE; their own
// gradient is not computed). dk and dv sum over each KV head's query heads
// (GQA / MQA). Rows that see no key contribute nothing and get dq = 0; keys
// no row sees get dk = dv = 0.
//
// Accumulation is fp32, storage fp32, bf16 or fp16 (one element type for all
// nine views). Every argument is checked before anything is written
// (ism::invalid_argument names the argument). The work is spread over
// options.threads threads (or options.parallel_for) with results identical bit
// for bit for any thread count (cpu/backward_plan.hpp).
#include <vector>

#include "ism/core/isa_vector.hpp"
#include "ism/core/options.hpp"
#include "ism/core/validate_backward.hpp"
#include "ism/cpu/backward.hpp"
#include "ism/mask/query_bounds.hpp"

namespace ism {
inline namespace ISM_SIMD_NAMESPACE {

template <class T, class Mask>
void attention_backward(HeadsView<const detail::type_identity_t<T>> q, HeadsView<const detail::type_identity_t<T>> k,
                        HeadsView<const detail::type_identity_t<T>> v, HeadsView<const detail::type_identity_t<T>> out,
                        HeadsView<const detail::type_identity_t<T>> dout, const float* lse, HeadsView<T> dq,
                        HeadsView<T> dk, HeadsView<T> dv, const Mask& mask, const AttentionOptions& opt = {}) {
  const AttentionShape s =
      check_attention_backward("ism::attention_backward", q, k, v, out, dout, lse, dq, dk, dv, mask, opt);
  isa_vector<index_t> lo(static_cast<size_t>(s.n_q)), hi(lo.size());
  fill_query_bounds(mask, s.n_q, s.n_k, s.q_offset, lo.data(), hi.data());
  const cpu::BackwardProblem<T> p{q, k, v, out, dout, lse, dq, dk, dv, s, {lo.data(), hi.data(), s.q_offset, s.n_q}};
  cpu::run_backward(p, cpu::ScoreMods{opt.softcap, opt.sinks, opt.alibi_slopes}, opt);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
