// pybind11 module mudsc._core: the torch-free native core over numpy buffers.
// Inputs are float32/float64 numpy arrays whose innermost or outermost matrix
// axis has unit stride (the Python layer copies anything else); solves run with
// the GIL released. LapError becomes ValueError with the core's sentence.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <thread>

#include "group_lap.hpp"
#include "lap.hpp"
#include "zip.hpp"

#include <string>

namespace py = pybind11;
using mudsc::lap::LapError;

namespace {

// The compiler's target macros that select the core's SIMD kernels (set by -march; see setup.py).
#if defined(__AVX512F__)
constexpr bool kAvx512 = true;
#else
constexpr bool kAvx512 = false;
#endif
#if defined(__AVX2__)
constexpr bool kAvx2 = true;
#else
constexpr bool kAvx2 = false;
#endif

int64_t element_stride(const py::array& a, int axis) {
  const py::ssize_t s = a.strides(axis);
  if (s % static_cast<py::ssize_t>(a.itemsize()) != 0) {
    throw py::value_error("cost array strides must be multiples of its item size");
  }
  return static_cast<int64_t>(s / static_cast<py::ssize_t>(a.itemsize()));
}

/// Counters of the last single solve (see SolveStats); written with the GIL held.
mudsc::lap::SolveStats& last_stats() {
  static mudsc::lap::SolveStats stats;
  return stats;
}

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

template <typename T>
py::tuple solve_one(const py::array& cost, bool maximize, const std::optional<DoubleArray>& init,
                    bool return_potentials) {
  const int64_t n = cost.shape(0), m = cost.shape(1);
  mudsc::lap::MatrixView<T> view{static_cast<const T*>(cost.data()), n, m, element_stride(cost, 0),
                                 element_stride(cost, 1)};
  py::array_t<int64_t> col_of_row(n);
  std::optional<py::array_t<double>> potentials;
  mudsc::lap::SolveOptions opt;
  opt.maximize = maximize;
  if (init) {
    if (init->ndim() != 1 || init->shape(0) != m) {
      throw py::value_error("init_potentials must have shape (" + std::to_string(m) + ",), got " +
                            py::str(py::tuple(py::cast(std::vector<py::ssize_t>(
                                        init->shape(), init->shape() + init->ndim())))).cast<std::string>());
    }
    opt.init_col_potentials = init->data();
  }
  if (return_potentials) {
    potentials.emplace(m);
    opt.out_col_potentials = potentials->mutable_data();
  }
  double objective;
  int64_t* out = col_of_row.mutable_data();
  thread_local mudsc::lap::Workspace ws;  // reused: small solves are dominated by allocation otherwise
  {
    py::gil_scoped_release release;
    try {
      objective = mudsc::lap::solve(view, opt, out, ws);
    } catch (...) {
      ws.release_copies();
      throw;
    }
    ws.release_copies();
  }
  last_stats() = ws.stats;
  return py::make_tuple(col_of_row, objective, potentials ? py::object(*potentials) : py::none());
}

template <typename T>
py::tuple solve_many(const py::array& costs, bool maximize, int num_threads, const std::optional<DoubleArray>& init,
                     bool return_potentials) {
  const int64_t b = costs.shape(0), n = costs.shape(1), m = costs.shape(2);
  py::array_t<int64_t> col_of_row({b, n});
  py::array_t<double> objective(b);
  std::optional<py::array_t<double>> potentials;
  if (init && (init->ndim() != 2 || init->shape(0) != b || init->shape(1) != m)) {
    throw py::value_error("init_potentials must have shape (" + std::to_string(b) + ", " + std::to_string(m) + ")");
  }
  if (return_potentials) potentials.emplace(std::vector<py::ssize_t>{b, m});
  const T* data = static_cast<const T*>(costs.data());
  const int64_t sb = element_stride(costs, 0), sr = element_stride(costs, 1), sc = element_stride(costs, 2);
  const double* init_ptr = init ? init->data() : nullptr;
  double* pot_ptr = potentials ? potentials->mutable_data() : nullptr;
  int64_t* out = col_of_row.mutable_data();
  double* obj = objective.mutable_data();
  {
    py::gil_scoped_release release;
    mudsc::lap::solve_batch<T>(data, b, n, m, sb, sr, sc, maximize, init_ptr, pot_ptr, out, obj, num_threads);
  }
  return py::make_tuple(col_of_row, objective, potentials ? py::object(*potentials) : py::none());
}

/// Runs a zip-like solver `run(data, labels, &num_outputs) -> merge_value` on sim [O, O] with the GIL
/// released; returns (labels int64[O], num_outputs, merge_value).
template <typename T, typename Run>
py::tuple zip_call(const py::array& sim, Run run) {
  const int64_t o = sim.shape(0);
  py::array_t<int64_t> labels(o);
  int64_t* out = labels.mutable_data();
  const T* data = static_cast<const T*>(sim.data());
  int64_t k = 0;
  double value;
  {
    py::gil_scoped_release release;
    value = run(data, o, out, &k);
  }
  return py::make_tuple(labels, k, value);
}

template <typename T>
py::tuple group_lap_one(const py::array& block, int64_t groups) {
  const int64_t om = block.shape(0);
  py::array_t<int64_t> cols(om);
  int64_t* out = cols.mutable_data();
  const T* data = static_cast<const T*>(block.data());
  const int64_t stride = element_stride(block, 0);
  double value;
  {
    py::gil_scoped_release release;
    value = mudsc::lap::group_permute_match<T>(data, om, stride, groups, out);
  }
  return py::make_tuple(cols, value);
}

/// The zip's decay rule from its Python name.
mudsc::zip::Decay parse_decay(const std::string& name) {
  if (name == "same-model") return mudsc::zip::Decay::kSameModel;
  if (name == "every-merge") return mudsc::zip::Decay::kEveryMerge;
  throw py::value_error("decay must be 'same-model' or 'every-merge', got '" + name + "'");
}

bool is_float32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }
bool is_float64(const py::array& a) { return a.dtype().is(py::dtype::of<double>()); }

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "mudsc native core (torch-free): Jonker-Volgenant linear assignment.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const LapError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const mudsc::zip::ZipError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def(
      "lap_solve",
      [](const py::array& cost, bool maximize, std::optional<DoubleArray> init, bool return_potentials) {
        if (cost.ndim() != 2) throw py::value_error("cost must be 2-D");
        if (is_float32(cost)) return solve_one<float>(cost, maximize, init, return_potentials);
        if (is_float64(cost)) return solve_one<double>(cost, maximize, init, return_potentials);
        throw py::value_error("cost must be float32 or float64");
      },
      py::arg("cost"), py::arg("maximize") = false, py::arg("init_potentials") = py::none(),
      py::arg("return_potentials") = false,
      R"doc(Solve one dense LAP.

cost: float32/float64 array [n, m] with a unit stride on one axis.
Returns (col_of_row int64[n] (-1 = unassigned row), objective float, potentials float64[m] or None).
Potentials (warm start in, final out) are the column duals of the minimisation form and need n == m.)doc");

  m.def(
      "lap_solve_batch",
      [](const py::array& costs, bool maximize, int num_threads, std::optional<DoubleArray> init,
         bool return_potentials) {
        if (costs.ndim() != 3) throw py::value_error("costs must be 3-D");
        if (is_float32(costs)) return solve_many<float>(costs, maximize, num_threads, init, return_potentials);
        if (is_float64(costs)) return solve_many<double>(costs, maximize, num_threads, init, return_potentials);
        throw py::value_error("costs must be float32 or float64");
      },
      py::arg("costs"), py::arg("maximize") = false, py::arg("num_threads") = 0,
      py::arg("init_potentials") = py::none(), py::arg("return_potentials") = false,
      R"doc(Solve B independent dense LAPs [B, n, m] on a thread pool (num_threads <= 0: all cores).
Returns (col_of_row int64[B, n], objective float64[B], potentials float64[B, m] or None).)doc");

  m.def(
      "lap_last_stats",
      []() {
        const mudsc::lap::SolveStats& s = last_stats();
        py::dict d;
        d["seconds_init"] = s.seconds_init;
        d["seconds_arr"] = s.seconds_arr;
        d["seconds_paths"] = s.seconds_paths;
        d["free_after_init"] = s.free_after_init;
        d["free_before_paths"] = s.free_before_paths;
        d["scanned_rows"] = s.scanned_rows;
        return d;
      },
        "Phase timings and counters of the last lap_solve call (for benchmarks).");
  m.def(
      "zip_match",
      [](const py::array& sim, int64_t num_models, double reduce, double alpha, double beta,
         const std::string& decay) {
        if (sim.ndim() != 2 || sim.shape(0) != sim.shape(1)) throw py::value_error("sim must be square 2-D");
        if (!(sim.flags() & py::array::c_style)) throw py::value_error("sim must be C-contiguous");
        if (num_models < 1 || sim.shape(0) % num_models != 0) throw py::value_error("O must divide by num_models");
        const mudsc::zip::Decay rule = parse_decay(decay);
        auto run = [&](const auto* data, int64_t o, int64_t* out, int64_t* k) {
          return mudsc::zip::zip_match(data, o, num_models, reduce, alpha, beta, rule, out, k);
        };
        if (is_float32(sim)) return zip_call<float>(sim, run);
        if (is_float64(sim)) return zip_call<double>(sim, run);
        throw py::value_error("sim must be float32 or float64");
      },
      py::arg("sim"), py::arg("num_models"), py::arg("reduce"), py::arg("alpha"), py::arg("beta"),
      py::arg("decay") = "same-model",
      R"doc(Greedy zip of a validated symmetric similarity [O, O] (C-contiguous float32/float64).
decay: "same-model" (alpha only towards clusters sharing a model with the merged one) or "every-merge" (ZipIt!).
Returns (labels int64[O], num_outputs, merge_value).)doc");
  m.def(
      "group_zip_match",
      [](const py::array& sim, int64_t num_models, int64_t groups, double reduce, double alpha, double beta,
         const std::string& decay) {
        if (sim.ndim() != 2 || sim.shape(0) != sim.shape(1)) throw py::value_error("sim must be square 2-D");
        if (!(sim.flags() & py::array::c_style)) throw py::value_error("sim must be C-contiguous");
        if (num_models < 1 || groups < 1 || sim.shape(0) % (num_models * groups) != 0) {
          throw py::value_error("O must divide by num_models * groups");
        }
        const mudsc::zip::Decay rule = parse_decay(decay);
        auto run = [&](const auto* data, int64_t o, int64_t* out, int64_t* k) {
          return mudsc::zip::group_zip_match(data, o, num_models, groups, reduce, alpha, beta, rule, out, k);
        };
        if (is_float32(sim)) return zip_call<float>(sim, run);
        if (is_float64(sim)) return zip_call<double>(sim, run);
        throw py::value_error("sim must be float32 or float64");
      },
      py::arg("sim"), py::arg("num_models"), py::arg("groups"), py::arg("reduce"), py::arg("alpha"), py::arg("beta"),
      py::arg("decay") = "same-model",
      R"doc(Group zip of a validated symmetric similarity [O, O]. Returns (labels int64[O], num_outputs, merge_value).)doc");
  m.def(
      "group_permute_match",
      [](const py::array& block, int64_t groups) {
        if (block.ndim() != 2 || block.shape(0) != block.shape(1)) throw py::value_error("block must be square 2-D");
        if (block.shape(0) > 0 && element_stride(block, 1) != 1) throw py::value_error("block rows must be contiguous");
        if (is_float32(block)) return group_lap_one<float>(block, groups);
        if (is_float64(block)) return group_lap_one<double>(block, groups);
        throw py::value_error("block must be float32 or float64");
      },
      py::arg("block"), py::arg("groups"),
      R"doc(Group alignment of one model-0 x model-i block [Om, Om] (maximised): g^2 inner LAPs and the outer LAP.
Returns (col_of_row int64[Om], merge_value).)doc");
  m.def(
      "check_similarity",
      [](const py::array& sim) {
        if (sim.ndim() != 2 || sim.shape(0) != sim.shape(1)) throw py::value_error("sim must be square 2-D");
        if (!(sim.flags() & py::array::c_style)) throw py::value_error("sim must be C-contiguous");
        const bool f32 = is_float32(sim);
        if (!f32 && !is_float64(sim)) throw py::value_error("sim must be float32 or float64");
        const void* data = sim.data();
        const int64_t o = sim.shape(0);
        mudsc::zip::SimilarityCheck c;
        {
          py::gil_scoped_release release;
          c = f32 ? mudsc::zip::check_similarity<float>(static_cast<const float*>(data), o)
                  : mudsc::zip::check_similarity<double>(static_cast<const double*>(data), o);
        }
        py::dict d;
        d["has_nan"] = c.has_nan;
        d["has_pos_inf"] = c.has_pos_inf;
        d["infinity_asymmetric"] = c.infinity_asymmetric;
        d["max_asymmetry"] = c.max_asymmetry;
        d["max_abs"] = c.max_abs;
        return d;
      },
      py::arg("sim"), "One pass over a square C-contiguous matrix: NaN, +inf, symmetry (see zip.hpp).");
  m.def("hardware_concurrency", []() { return static_cast<int>(std::thread::hardware_concurrency()); });
  // The widest SIMD kernels compiled into the core (kAvx512 / kAvx2 above): "avx512" (lap_small.hpp's
  // 8-double Block8; the AVX2 kernels are then in too), "avx2" (lap_kernels.hpp, zip.cpp, lap_small.hpp's
  // two-register Block8), else "scalar". simd_macros exports the macros themselves, so a test can compare
  // them with what the compiler defines for the build's flags.
  m.attr("simd") = kAvx512 ? "avx512" : kAvx2 ? "avx2" : "scalar";
  py::dict macros;
  macros["__AVX512F__"] = kAvx512;
  macros["__AVX2__"] = kAvx2;
  m.attr("simd_macros") = macros;
#if defined(MUDSC_NATIVE_ARCH)
  m.attr("native_arch") = MUDSC_NATIVE_ARCH != 0;  // built with -march=native (setup.py's MUDSC_NATIVE_ARCH)
#else
  m.attr("native_arch") = py::none();  // built outside setup.py: flags unknown
#endif
}
