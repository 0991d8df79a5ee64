#pragma once
// Options shared by every attention entry point (CPU, reference, CUDA).
#include <functional>

#include "ism/core/config.hpp"

namespace ism {

// A caller's own parallel-for: it must call body(i) exactly once for every i
// in [0, n), from any threads in any order, and return after all calls have
// returned. Engines that own their threads (an OpenMP region, a task system)
// pass one so the library starts no threads of its own.
using ParallelFor = std::function<void(index_t n, const std::function<void(index_t)>& body)>;

struct AttentionOptions {
  float scale = 0.f;        // 0: 1/sqrt(dim)
  index_t q_offset = -1;    // -1: k.tokens - q.tokens (queries are the cache's tail)
  int threads = 0;          // 0: library default (hardware concurrency)
  float* lse = nullptr;     // optional [q.heads][q.tokens] natural-log sum-exp out;
                            // -infinity for rows that see no key
  // CPU kernel only: when set, work is scheduled through it and `threads` is
  // ignored. Results do not depend on how many threads it uses.
  ParallelFor parallel_for = nullptr;
};

}  // namespace ism
