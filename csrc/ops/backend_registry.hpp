// Which device backends this build of mudsc._C holds, for mudsc::build_info: every backend's self-test
// file (cpu/selftest_cpu.cpp, cuda/selftest_cuda.cu) registers its name from a static initializer, so the
// generic ops.cpp reports "cpu" or "cpu,cuda" without knowing, or #if-testing, what was compiled in.
// The registry is written during the library's static initialization only and read afterwards.
#pragma once

#include <c10/core/DeviceType.h>

#include <string>

namespace mudsc {
namespace ops {

// Records that kernels for `device` are compiled in, under `name` (a string literal: "cpu", "cuda").
void register_backend(c10::DeviceType device, const char* name);

// The registered names in device-type order (CPU first), comma-separated: "cpu" or "cpu,cuda".
std::string compiled_backends();

// Registers a backend when a namespace-scope object of this type is constructed.
struct BackendRegistrar {
  BackendRegistrar(c10::DeviceType device, const char* name) { register_backend(device, name); }
};

}  // namespace ops
}  // namespace mudsc
