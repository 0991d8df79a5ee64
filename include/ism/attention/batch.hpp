#pragma once
// ism::attention_batch: many sequences scheduled together (continuous
// batching), each with its own views, mask, offset and LSE, so the short
// decode rows of some and the long prefill tiles of others share the threads.
// For a step that repeats across layers, or that mixes mask types or paged
// sequences, plan it once with AttentionPlan (attention/plan.hpp).
#include <vector>

#include "ism/attention/attention.hpp"
#include "ism/core/isa_vector.hpp"

namespace ism {

// One sequence of a batched call.
template <class T, class Mask>
struct AttentionRequest {
  HeadsView<const T> q, k, v;
  HeadsView<T> out;
  const Mask* mask = nullptr;
  index_t q_offset = -1;  // -1: k.tokens - q.tokens
  float* lse = nullptr;   // optional [q.heads][q.tokens]
};

inline namespace ISM_SIMD_NAMESPACE {

// scale, the score modifiers, threads and parallel_for come from `opt` and
// apply to all requests; opt.q_offset and opt.lse must stay at their defaults
// (each request has its own). All requests are validated, and checked not to
// write what another reads or writes, before any output is written.
template <class T, class Mask>
void attention_batch(const std::vector<AttentionRequest<T, Mask>>& requests, const AttentionOptions& opt = {}) {
  const char* where = "ism::attention_batch";
  if (opt.q_offset != -1)
    detail::fail(where, "options.q_offset = ", opt.q_offset, " must be -1 (set each request's q_offset)");
  if (opt.lse != nullptr) detail::fail(where, "options.lse must be null (set each request's lse)");
  std::vector<cpu::Problem<T, ContiguousKV<T>>> problems;
  isa_vector<detail::RequestSpans> spans;  // per-ISA containers (core/isa_vector.hpp)
  std::vector<std::vector<index_t>> bounds(requests.size());
  problems.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const AttentionRequest<T, Mask>& r = requests[i];
    if (r.mask == nullptr) detail::fail(where, "requests[", i, "].mask is null");
    AttentionOptions o = opt;
    o.q_offset = r.q_offset;
    o.lse = r.lse;
    const ContiguousKV<T> kv{r.k, r.v};
    const detail::CheckedCall c = detail::check_call(where, r.q, kv, r.out, *r.mask, o);
    std::vector<index_t>& b = bounds[i];
    b.resize(static_cast<size_t>(2 * c.shape.n_q));
    fill_query_bounds(*r.mask, c.shape.n_q, c.shape.n_k, c.shape.q_offset, b.data(), b.data() + c.shape.n_q);
    problems.push_back({r.q, kv, r.out, r.lse, c.shape, {b.data(), b.data() + c.shape.n_q, c.shape.q_offset, c.shape.n_q}});
    spans.push_back(c.spans);
  }
  detail::check_requests_disjoint(where, spans);
  detail::execute(problems.data(), static_cast<index_t>(problems.size()), opt);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
