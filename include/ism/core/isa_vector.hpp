#pragma once
// isa_vector<T>: std::vector<T> whose member functions have per-instruction-
// set symbols. std::vector<T>'s out-of-line members (growth, fill, copy) are
// compiled in every translation unit that uses them, with that unit's flags,
// and the linker keeps one copy: an AVX-512 copy (vectorized with zmm
// registers) handed to an AVX2 unit is a SIGILL on an AVX2 machine (core/isa.hpp).
// An allocator type from the per-instruction-set namespace makes the
// vector's type, and so every symbol instantiated from it (iterators and
// algorithms included), the unit's own. Used for the containers the CPU
// path keeps, even of ISA-neutral element types.
#include <memory>
#include <vector>

#include "ism/core/isa.hpp"

namespace ism {
inline namespace ISM_SIMD_NAMESPACE {

template <class T>
struct IsaAllocator : std::allocator<T> {
  using value_type = T;
  IsaAllocator() noexcept = default;
  template <class U>
  IsaAllocator(const IsaAllocator<U>&) noexcept {}
  template <class U>
  struct rebind {
    using other = IsaAllocator<U>;
  };
};
template <class T, class U>
bool operator==(const IsaAllocator<T>&, const IsaAllocator<U>&) noexcept {
  return true;
}
template <class T, class U>
bool operator!=(const IsaAllocator<T>&, const IsaAllocator<U>&) noexcept {
  return false;
}

template <class T>
using isa_vector = std::vector<T, IsaAllocator<T>>;

}  // inline namespace ISM_SIMD_NAMESPACE
}  // namespace ism
