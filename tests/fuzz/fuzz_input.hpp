#pragma once
// Decoding arbitrary fuzzer bytes into sizes. Most values are small so that the
// checks run in milliseconds; a few are hostile (negative, zero, near the
// limits of index_t) because those are the values that find bugs. Running out
// of bytes yields zeros, so every input decodes to something.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "ism/core/config.hpp"
#include "ism/core/errors.hpp"

namespace ism_fuzz {

using ism::index_t;

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ == end_; }
  std::uint8_t byte() { return p_ == end_ ? 0 : *p_++; }
  std::uint64_t u64() {
    std::uint64_t x = 0;
    for (int i = 0; i < 8; ++i) x = (x << 8) | byte();
    return x;
  }
  bool coin() { return byte() & 1; }
  // Uniform-ish in [lo, hi] from one or two bytes (hi - lo < 65536).
  index_t small(index_t lo, index_t hi) {
    const index_t span = hi - lo + 1;
    const index_t raw = span <= 256 ? byte() : (index_t(byte()) << 8 | byte());
    return lo + raw % span;
  }
  // A size: usually in [lo, hi], sometimes a hostile value.
  index_t size(index_t lo, index_t hi) {
    const std::uint8_t sel = byte();
    if (sel < 224) return lo + index_t(sel) % (hi - lo + 1);
    switch (sel % 8) {
      case 0: return 0;
      case 1: return -1;
      case 2: return -index_t(byte()) - 2;
      case 3: return std::numeric_limits<index_t>::max() - index_t(byte());
      case 4: return std::numeric_limits<index_t>::min() + index_t(byte());
      case 5: return index_t(1) << (31 + byte() % 32);
      case 6: return static_cast<index_t>(u64());
      default: return hi + 1 + index_t(byte());
    }
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

// A failed property: print it and abort, so libFuzzer saves the input and the
// regression driver fails the ctest run.
[[noreturn]] inline void fail(const char* what, long long a = 0, long long b = 0, long long c = 0) {
  std::fprintf(stderr, "fuzz property violated: %s (%lld, %lld, %lld)\n", what, a, b, c);
  std::abort();
}
#define ISM_FUZZ_CHECK(cond, ...) \
  do {                            \
    if (!(cond)) ::ism_fuzz::fail("`" #cond "` at line " ISM_FUZZ_STR(__LINE__), ##__VA_ARGS__); \
  } while (0)
#define ISM_FUZZ_STR2(x) #x
#define ISM_FUZZ_STR(x) ISM_FUZZ_STR2(x)

// Calls f(); true if it threw ism::invalid_argument (anything else escapes and
// is a crash the fuzzer reports).
template <class F>
bool throws_invalid(F&& f) {
  try {
    f();
  } catch (const ism::invalid_argument&) {
    return true;
  }
  return false;
}

}  // namespace ism_fuzz
