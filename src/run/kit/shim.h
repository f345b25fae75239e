// What native.cpp and dist.cpp share: no C++ exception crosses into Rust. Each exported function
// runs its body through `guarded`, which returns null or the exception's message (malloc'ed,
// freed with roux_free_message).
#pragma once
#include <cstdlib>
#include <cstring>
#include <exception>

namespace roux_shim {

inline char* message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, what, n + 1);
  return out;
}

template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

}  // namespace roux_shim
