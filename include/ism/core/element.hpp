#pragma once
// Storage element types (float, Eigen::bfloat16, Eigen::half) and their exact
// widening to float. Arithmetic always happens in float or wider.
#include <Eigen/Core>
#include <type_traits>

namespace ism {

template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, Eigen::bfloat16> ||
    std::is_same_v<T, Eigen::half> || std::is_same_v<T, double>;

template <class T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

// Round-to-nearest-even narrowing (Eigen's conversions), used on output only.
template <class T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

template <class T>
inline const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "fp32";
  else if constexpr (std::is_same_v<T, double>) return "fp64";
  else if constexpr (std::is_same_v<T, Eigen::bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<T, Eigen::half>) return "fp16";
  else return "unknown";
}

}  // namespace ism
