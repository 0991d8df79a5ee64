#pragma once
// The interface between the test's main (which includes no ism header, so it
// shares no inline function with the paths) and each instruction set's
// translation unit (isa_link_path.cpp, compiled once per set).
#include <cstdint>

namespace isa_link {

// One problem, token-major [tokens][heads][dim] buffers. Rows see keys by the
// ISM rule on `boundaries` (segments alternate Bidirectional, Causal, ...).
struct Problem {
  int tokens, heads, kv_heads, dim, segments;
  const int* boundaries;  // segments + 1 values, 0 ... tokens
  const float* q;
  const float* k;
  const float* v;
  const float* dout;  // the backward pass's upstream gradient, shaped as q
};

// What one path computes: fp32 attention (and its LSE), the same in bf16
// (inputs rounded to bf16, output widened back), and fp32 Q/out over an fp16
// K/V cache; whether attention_batch and AttentionPlan gave the fp32 output
// bit for bit; and the fp32 backward pass's gradients.
struct Outputs {
  float* out_f32;
  float* lse;
  float* out_bf16;
  float* out_mixed;
  bool entry_points_agree;
  float* dq;
  float* dk;
  float* dv;
};

}  // namespace isa_link

// Returns the name of the instruction set the path was compiled for.
extern "C" const char* ism_isa_link_avx2(const isa_link::Problem*, isa_link::Outputs*);
extern "C" const char* ism_isa_link_avx512(const isa_link::Problem*, isa_link::Outputs*);
