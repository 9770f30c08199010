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
//       device-generic (stats.cpp): streaming second moments about a shift, and their finalization.
//   mudsc::axis_segment_sum(Tensor t, int axis, Tensor labels, int size, Tensor? scale) -> Tensor
//       out (t with `axis` resized to `size`): out[.., k, ..] = scale[k] * sum of t[.., j, ..] over labels[j] == k
//       (CPU kernel in cpu/stats_cpu.cpp; elsewhere mudsc.similarity uses index_add_).
//   mudsc::build_info() -> str
//       which backends this library was compiled with.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace mudsc {
namespace ops {

std::string build_info() {
  std::string s = "cpu";
#if defined(MUDSC_WITH_CUDA)
  s += ",cuda";
#endif
  return s;
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY(mudsc, m) {
  m.def("affine_selftest(Tensor x, float scale, float shift) -> Tensor");
  m.def("stats_prepare(Tensor[] xs, int[] channel_dims, Tensor shift, bool feature_major) -> (Tensor, Tensor, Tensor)");
  m.def(
      "stats_update_(Tensor(a!) moment, Tensor(b!) sums, Tensor[] xs, int[] channel_dims, Tensor shift, "
      "int block_size, int fold_samples, int precision=0) -> Tensor");
  m.def("stats_finalize(Tensor moment, Tensor sums, Tensor shift, int count, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
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
