#pragma once
// The CPU kernel's test hook (ism/cpu/kernel.hpp): counts every visited
// (query head, query tile, key tile) into visited_tiles while it is set.
// Included before any ism header by every test of tests/cpu, so that all
// translation units of a test binary see the same kernel.
#include <atomic>

#include "ism/core/config.hpp"

namespace ism_test {
inline std::atomic<ism::index_t>* visited_tiles = nullptr;
}
#define ISM_CPU_ON_TILE_VISIT(heads) \
  (::ism_test::visited_tiles ? (void)::ism_test::visited_tiles->fetch_add(heads) : (void)0)
