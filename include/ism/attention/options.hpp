#pragma once
// Options shared by every attention entry point (CPU, reference, CUDA).
#include "ism/core/config.hpp"

namespace ism {

struct AttentionOptions {
  float scale = 0.f;        // 0: 1/sqrt(dim)
  index_t q_offset = -1;    // -1: k.tokens - q.tokens (queries are the cache's tail)
  int threads = 0;          // 0: library default (hardware concurrency)
  float* lse = nullptr;     // optional [q.heads][q.tokens] natural-log sum-exp out;
                            // -infinity for rows that see no key
};

}  // namespace ism
