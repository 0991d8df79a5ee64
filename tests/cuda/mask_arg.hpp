#pragma once
// Which mask a test case runs, in a form both the GPU runner (which uploads a
// SegmentMask as a DeviceMask) and the CPU emulation (which reads it where it
// is) can turn into the kernel's mask policy.
#include "ism/core/config.hpp"
#include "ism/mask/segment_mask.hpp"

namespace ism_cuda_test {

enum class MaskKind { Full, Causal, Prefix, Segments };
struct MaskArg {
  MaskKind kind = MaskKind::Causal;
  ism::index_t prefix = 0;                     // MaskKind::Prefix
  const ism::SegmentMask* segments = nullptr;  // MaskKind::Segments
};

}  // namespace ism_cuda_test
