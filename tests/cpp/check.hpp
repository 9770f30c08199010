// Minimal check macro for the ctest programs: counts failures, prints the
// condition and a printf-style message, and lets the test continue.
#pragma once

#include <cstdio>

namespace test_support {
inline int failures = 0;
}  // namespace test_support

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      ++test_support::failures;                                   \
      std::printf("FAIL %s:%d: %s  ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)
