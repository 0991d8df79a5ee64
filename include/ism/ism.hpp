#pragma once
// ism: attention masks for multi-turn dialogue (causal, prefix-LM, the
// Intermittent Semi-working Mask) and the fused attention that runs on them.
//
//   mask/segment_mask.hpp   the mask rule, and the layouts of turns it reads
//   mask/tiles.hpp          Empty / Full / Partial tiles, the block map
//   attention/              the entry points and their options
//   cpu/                    the fused CPU kernel; cpu/simd/ one file per ISA
//   reference.hpp           the fp64 reference every path is tested against
#include "ism/attention/attention.hpp"
#include "ism/attention/options.hpp"
#include "ism/attention/validate.hpp"
#include "ism/core/config.hpp"
#include "ism/core/element.hpp"
#include "ism/core/errors.hpp"
#include "ism/core/views.hpp"
#include "ism/dialogue/chunking.hpp"
#include "ism/dialogue/dialogue.hpp"
#include "ism/kv/paged.hpp"
#include "ism/mask/dense.hpp"
#include "ism/mask/export.hpp"
#include "ism/mask/segment.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/simple_masks.hpp"
#include "ism/mask/tiles.hpp"
#include "ism/reference.hpp"
