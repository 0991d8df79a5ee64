#pragma once
// The one exception type the library throws for bad input, and the helper that
// builds its message. Messages always name the argument and the offending value.
#include <sstream>
#include <stdexcept>
#include <string>

namespace ism {

class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

template <class... Parts>
[[noreturn]] void fail(const char* where, const Parts&... parts) {
  std::ostringstream os;
  os << where << ": ";
  (os << ... << parts);
  throw ism::invalid_argument(os.str());
}

// Overflow-checked arithmetic for sizes that come from users.
template <class T>
bool mul_overflows(T a, T b, T* out) {
  return __builtin_mul_overflow(a, b, out);
}
template <class T>
bool add_overflows(T a, T b, T* out) {
  return __builtin_add_overflow(a, b, out);
}

}  // namespace detail
}  // namespace ism
