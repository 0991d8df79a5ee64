#pragma once
// ism: attention masks for multi-turn dialogue (causal, prefix-LM, the
// Intermittent Semi-working Mask) and the fused attention that runs on them.
// docs/DESIGN.md has the rule, the API and the architecture; in short:
//
//   core/                   index type, errors, views, shapes, options, checks
//   mask/segment_mask.hpp   the mask rule, and the layouts of turns it reads
//   mask/sliding_window.hpp any mask within |i - j| < window
//   mask/kv_reuse.hpp       safe splits and droppable cache keys, for any mask
//   mask/tile_kind.hpp      Empty / Full / Partial tiles from corner rows
//   kv/                     KV sources: contiguous, paged views, the page pool
//   attention/              the CPU entry points: attention, batch, plan, backward
//   cpu/kernel.hpp          the fused CPU kernel's tile loop; cpu/simd/ one file per ISA
//   dialogue/               conversations and chunked prefill for engines
//   reference.hpp           the fp64 reference every path is tested against
//   reference_backward.hpp  its gradients, the fp64 reference of attention_backward
#include "ism/attention/attention.hpp"
#include "ism/attention/backward.hpp"
#include "ism/attention/batch.hpp"
#include "ism/attention/plan.hpp"
#include "ism/core/config.hpp"
#include "ism/core/element.hpp"
#include "ism/core/errors.hpp"
#include "ism/core/options.hpp"
#include "ism/core/validate.hpp"
#include "ism/core/views.hpp"
#include "ism/dialogue/chunking.hpp"
#include "ism/dialogue/dialogue.hpp"
#include "ism/kv/contiguous.hpp"
#include "ism/kv/paged_cache.hpp"
#include "ism/kv/paged_view.hpp"
#include "ism/mask/block_map.hpp"
#include "ism/mask/dense.hpp"
#include "ism/mask/export.hpp"
#include "ism/mask/kv_reuse.hpp"
#include "ism/mask/query_bounds.hpp"
#include "ism/mask/segment.hpp"
#include "ism/mask/segment_mask.hpp"
#include "ism/mask/simple_masks.hpp"
#include "ism/mask/sliding_window.hpp"
#include "ism/mask/tile_kind.hpp"
#include "ism/reference.hpp"
#include "ism/reference_backward.hpp"
