#pragma once
// The public entry points of the fused CPU attention (DESIGN.md section 2):
// ism::attention for one sequence, ism::attention_batch for many sequences
// scheduled together (continuous batching), and ism::detail::run_attention,
// the validated core that KV sources other than two strided views (the paged
// cache) call with their own source.
//
// The instruction set is chosen at compile time (ism/cpu/simd/select.hpp);
// these functions live in an inline namespace named after it, so they are
// spelled ism::attention everywhere.
#include <vector>

#include "ism/attention/kv_source.hpp"
#include "ism/attention/options.hpp"
#include "ism/attention/validate.hpp"
#include "ism/cpu/run.hpp"

namespace ism {
namespace detail {
inline namespace ISM_SIMD_NAMESPACE {

// The already-validated core: `shape` comes from check_attention (or the
// equivalent check of a KV source); nothing is checked again here.
template <class T, class KV, class Mask>
void run_attention(HeadsView<const T> q, const KV& kv, HeadsView<T> out, const Mask& mask,
                   const AttentionOptions& opt, const AttentionShape& shape) {
  const cpu::Problem<T, KV, Mask> problem{q, kv, out, &mask, opt.lse, shape};
  cpu::run_problems(&problem, 1, opt);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace detail

inline namespace ISM_SIMD_NAMESPACE {

// out[t, h, :] = softmax over the keys row q_offset + t may see of
// scale * q[t, h, :] . k[j, h / group, :], times v. See DESIGN.md section 1.
// Throws ism::invalid_argument (writing nothing) on bad arguments.
template <class T, class Mask>
void attention(HeadsView<const detail::type_identity_t<T>> q, HeadsView<const detail::type_identity_t<T>> k,
               HeadsView<const detail::type_identity_t<T>> v, HeadsView<T> out, const Mask& mask,
               const AttentionOptions& opt = {}) {
  const AttentionShape shape = check_attention("ism::attention", q, k, v, out, mask, opt);
  detail::run_attention(q, ContiguousKV<T>{k, v}, out, mask, opt, shape);
}

// One sequence of a batched call: its own views, mask, offset and LSE.
template <class T, class Mask>
struct AttentionRequest {
  HeadsView<const T> q, k, v;
  HeadsView<T> out;
  const Mask* mask = nullptr;
  index_t q_offset = -1;  // -1: k.tokens - q.tokens
  float* lse = nullptr;   // optional [q.heads][q.tokens]
};

// Runs every request in one scheduling pass, so the short decode rows of some
// sequences and the long prefill tiles of others share the threads. scale,
// threads and parallel_for come from `opt` and apply to all requests;
// opt.q_offset and opt.lse must stay at their defaults (each request has its
// own). All requests are validated before any output is written.
template <class T, class Mask>
void attention_batch(const std::vector<AttentionRequest<T, Mask>>& requests, const AttentionOptions& opt = {}) {
  const char* where = "ism::attention_batch";
  if (opt.q_offset != -1)
    detail::fail(where, "options.q_offset = ", opt.q_offset, " must be -1 (set each request's q_offset)");
  if (opt.lse != nullptr) detail::fail(where, "options.lse must be null (set each request's lse)");
  std::vector<cpu::Problem<T, ContiguousKV<T>, Mask>> problems;
  problems.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const AttentionRequest<T, Mask>& r = requests[i];
    if (r.mask == nullptr) detail::fail(where, "requests[", i, "].mask is null");
    AttentionOptions o = opt;
    o.q_offset = r.q_offset;
    o.lse = r.lse;
    const AttentionShape shape = check_attention(where, r.q, r.k, r.v, r.out, *r.mask, o);
    problems.push_back({r.q, ContiguousKV<T>{r.k, r.v}, r.out, r.mask, r.lse, shape});
  }
  detail::check_requests_disjoint(where, requests);
  cpu::run_problems(problems.data(), static_cast<index_t>(problems.size()), opt);
}

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
