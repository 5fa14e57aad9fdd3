// Argument checks of the host code in the .cu files: YOLO13_CHECK(cond, parts...) raises the same c10::Error as
// TORCH_CHECK (a RuntimeError in Python), but builds its message without C++ streams.
//
// Why: TORCH_CHECK formats its message parts with std::ostringstream, instantiated in the translation unit that
// uses it. Host code that nvcc compiles can carry its own copies of the stream templates (std::ostream::_M_insert
// and the locale facets they look up); with one toolchain (nvcc 13.0, gcc 13.3, torch 2.11) those copies read
// facets that were never registered and a failing check crashed the process (segmentation fault) instead of
// raising. Here numbers go through std::to_string, and tensor sizes, devices and dtypes through c10's own
// out-of-line formatting; the finished message is one std::string, which TORCH_CHECK passes on unformatted.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace yolo13_attn {

inline void append(std::string& s, const char* x) { s += x; }
inline void append(std::string& s, const std::string& x) { s += x; }
inline void append(std::string& s, c10::ScalarType x) { s += c10::toString(x); }
inline void append(std::string& s, const c10::Device& x) { s += x.str(); }
inline void append(std::string& s, c10::IntArrayRef x) {
  s += '[';
  for (size_t i = 0; i < x.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(x[i]);
  }
  s += ']';
}
template <typename N, std::enable_if_t<std::is_arithmetic_v<N>, int> = 0>
inline void append(std::string& s, N x) {
  s += std::to_string(x);
}

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

}  // namespace yolo13_attn

#define YOLO13_CHECK(cond, ...)                                             \
  do {                                                                      \
    if (C10_UNLIKELY_OR_CONST(!(cond))) {                                   \
      const std::string yolo13_message = ::yolo13_attn::message(__VA_ARGS__); \
      TORCH_CHECK(false, yolo13_message);                                   \
    }                                                                       \
  } while (false)
