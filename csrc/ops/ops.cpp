// Schemas of the mudsc torch ops (TORCH_LIBRARY) and the Python module stub
// that lets `import mudsc._C` load this library. Kernels live in the twins
// cpu/*_cpu.cpp and cuda/*_cuda.cu, registered per dispatch key.
//
//   mudsc::affine_selftest(Tensor x, float scale, float shift) -> Tensor
//       y = scale * x + shift, elementwise (float32/float64). It exists to prove
//       the build, dispatch and launch path of every backend end to end.
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
