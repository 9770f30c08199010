// Schemas of the mudsc torch ops (TORCH_LIBRARY) and the Python module stub
// that lets `import mudsc._C` load this library. Kernels live in the twins
// cpu/*_cpu.cpp and cuda/*_cuda.cu, registered per dispatch key.
//
//   mudsc::affine_selftest(Tensor x, float scale, float shift) -> Tensor
//       y = scale * x + shift, elementwise (float32/float64). It exists to prove
//       the build, dispatch and launch path of every backend end to end.
//   mudsc::stats_prepare(Tensor[] xs, int[] channel_dims, Tensor shift, bool feature_major)
//       -> (Tensor Y, Tensor sums, Tensor nonfinite)
//       per-device kernel (cpu/stats_cpu.cpp, cuda/stats_cuda.cu): reads the inputs in their layouts,
//       zeroes NaN/Inf, subtracts shift; see stats_layout.hpp and stats.cpp.
//   mudsc::stats_update_(Tensor(a!) moment, Tensor(b!) sums, Tensor[] xs, int[] channel_dims, Tensor shift,
//       int block_size, int fold_samples, int precision=0) -> Tensor nonfinite
//       precision: how CUDA forms float32 products, 0 ieee / 1 tf32 / 2 tf32x3 (stats_gemm.hpp)
//   mudsc::stats_finalize(Tensor moment, Tensor sums, Tensor shift, int count, float eps)
//       -> (Tensor mean, Tensor cov, Tensor corr, Tensor zero_variance)
//   mudsc::stats_correlation(Tensor moment, Tensor sums, Tensor shift, int count, float eps)
//       -> (Tensor corr, Tensor variance, Tensor zero_variance)      (float32 [F, F], float64 [F], bool [F])
//       device-generic (stats.cpp): streaming second moments about a shift, and their finalization; the moment
//       is float64 [F, F] (upper triangle defined) or its packed upper triangle [F (F + 1) / 2].
//   mudsc::axis_segment_sum(Tensor t, int axis, Tensor labels, int size, Tensor? scale) -> Tensor
//       out (t with `axis` resized to `size`): out[.., k, ..] = scale[k] * sum of t[.., j, ..] over labels[j] == k
//       (CPU kernel in cpu/stats_cpu.cpp; elsewhere mudsc.similarity uses index_add_).
//   mudsc::build_info() -> str
//       which backends this library was compiled with ("cpu" or "cpu,cuda"): the names the backends'
//       twin files registered (backend_registry.hpp), so this file needs no #if.
//
// The fake (meta) kernels of these ops, for FakeTensor / torch.compile, are Python: mudsc/_ops.py,
// imported by mudsc._native once this library loaded (set_python_module below names it).
#include <Python.h>
#include <torch/library.h>

#include <array>
#include <cstddef>
#include <string>

#include "backend_registry.hpp"

namespace mudsc {
namespace ops {
namespace {

constexpr size_t kDeviceTypes = static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES);

// One name slot per device type (nullptr: not compiled in); a function-local static, so registrations from
// other translation units' static initializers find it constructed whatever their order.
std::array<const char*, kDeviceTypes>& backend_names() {
  static std::array<const char*, kDeviceTypes> names{};
  return names;
}

}  // namespace

void register_backend(c10::DeviceType device, const char* name) {
  const auto k = static_cast<size_t>(device);
  TORCH_CHECK(k < kDeviceTypes, "register_backend: device type ", static_cast<int>(device), " is out of range");
  backend_names()[k] = name;
}

std::string compiled_backends() {
  std::string s;
  for (const char* name : backend_names()) {
    if (name == nullptr) continue;
    if (!s.empty()) s += ",";
    s += name;
  }
  return s;
}

// mudsc::build_info(): "cpu" or "cpu,cuda", whichever backends registered themselves when the library loaded.
std::string build_info() { return compiled_backends(); }

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY(mudsc, m) {
  m.set_python_module("mudsc._ops");
  m.def("affine_selftest(Tensor x, float scale, float shift) -> Tensor");
  m.def("stats_prepare(Tensor[] xs, int[] channel_dims, Tensor shift, bool feature_major) -> (Tensor, Tensor, Tensor)");
  m.def(
      "stats_update_(Tensor(a!) moment, Tensor(b!) sums, Tensor[] xs, int[] channel_dims, Tensor shift, "
      "int block_size, int fold_samples, int precision=0) -> Tensor");
  m.def("stats_finalize(Tensor moment, Tensor sums, Tensor shift, int count, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("stats_correlation(Tensor moment, Tensor sums, Tensor shift, int count, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("axis_segment_sum(Tensor t, int axis, Tensor labels, int size, Tensor? scale) -> Tensor");
  m.def("build_info() -> str", &mudsc::ops::build_info);
}

extern "C" {
// A module with no methods: importing mudsc._C runs the static registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mudsc torch ops (registered on import)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
}
