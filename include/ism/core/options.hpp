#pragma once
// The options of an attention call. Two parts with two audiences:
//   AttentionOptions  what is computed: every backend (CPU, CUDA, the fp64
//                     reference) gives the same result for the same options;
//   HostExecution     how the CPU backend spreads the work over threads. The
//                     CUDA backend has its own (ism::cuda::LaunchOptions) and
//                     ignores these fields.
// AttentionOptions derives from HostExecution so that `opts.threads = 2` keeps
// working on the one struct callers fill in.
#include <functional>

#include "ism/core/config.hpp"

namespace ism {

// A caller's own parallel-for: it must call body(i) exactly once for every i
// in [0, n), from any threads in any order, and return after all calls have
// returned. Engines that own their threads (an OpenMP region, a task system)
// pass one so the library starts no threads of its own.
using ParallelFor = std::function<void(index_t n, const std::function<void(index_t)>& body)>;

struct HostExecution {
  int threads = 0;  // 0: library default (hardware concurrency)
  // When set, work is scheduled through it and `threads` is ignored. Results
  // do not depend on how many threads it uses.
  ParallelFor parallel_for = nullptr;
};

struct AttentionOptions : HostExecution {
  float scale = 0.f;        // 0: 1/sqrt(dim)
  index_t q_offset = -1;    // -1: k.tokens - q.tokens (queries are the cache's tail)
  float* lse = nullptr;     // optional [q.heads][q.tokens] natural-log sum-exp out;
                            // -infinity for rows that see no key (or the row's sink)
  // Score modifiers, applied in this order (docs/DESIGN.md section 1):
  //   score = scale * q.k; then softcap; then ALiBi; then the mask.
  float softcap = 0.f;                  // score -> softcap * tanh(score / softcap); 0: off
  const float* sinks = nullptr;         // optional [q.heads] logits that join each row's softmax
                                        // denominator only (GPT-OSS attention sinks)
  const float* alibi_slopes = nullptr;  // optional [q.heads]; score -= slope * |i - j|, with i and j
                                        // absolute positions
};

}  // namespace ism
