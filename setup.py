"""Build of mudsc's two native modules.

- ``mudsc._core``: the torch-free C++17 core (csrc/core) behind pybind11 (csrc/bindings).
  Builds without torch; compiles in seconds.
- ``mudsc._C``: torch ops (csrc/ops: schemas, cpu/*_cpu.cpp, cuda/*_cuda.cu). Needs torch.

Knobs (environment):
  MUDSC_WITH_CUDA=auto|0|1   auto: build CUDA when torch has CUDA and a CUDA toolkit is found
                             (not torch.cuda.is_available(): GPU-less hosts still compile CUDA).
  TORCH_CUDA_ARCH_LIST       required for a CUDA build on a host without a GPU (e.g. "9.0").
  CUDA_HOME                  toolkit root; default: $CUDA_PATH, /usr/local/cuda, then torch's guess.
  MUDSC_DEBUG=1              -O0 -g.
  MUDSC_NATIVE_ARCH=0        do not pass -march=native (core and torch ops; portable binaries).
  MAX_JOBS                   parallel compile jobs (ninja).

Install with ``pip install --no-build-isolation -e .`` (build isolation would pull a multi-GB torch).
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def _env_flag(name, default):
    return os.environ.get(name, default).strip().lower()


def _find_cuda_home():
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(key):
            return os.environ[key]
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


# torch.utils.cpp_extension reads CUDA_HOME at import: resolve it first. A wrapper
# script named nvcc on PATH would otherwise make torch guess the wrong root.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

DEBUG = _env_flag("MUDSC_DEBUG", "0") in ("1", "true", "yes")
NATIVE_ARCH = _env_flag("MUDSC_NATIVE_ARCH", "1") in ("1", "true", "yes") and platform.machine() in (
    "x86_64",
    "AMD64",
    "aarch64",
    "arm64",
)
OPT = ["-O0", "-g"] if DEBUG else ["-O3"]
ARCH = ["-march=native"] if NATIVE_ARCH else []


def core_extension():
    import pybind11

    return Extension(
        "mudsc._core",
        sources=["csrc/core/lap.cpp", "csrc/core/group_lap.cpp", "csrc/core/zip.cpp", "csrc/bindings/core_py.cpp"],
        include_dirs=[str(ROOT / "csrc/core"), pybind11.get_include()],
        # _core.native_arch reports it, so tests can check _core.simd against the compiler's -march=native.
        define_macros=[("MUDSC_NATIVE_ARCH", "1" if NATIVE_ARCH else "0")],
        extra_compile_args=["-std=c++17", "-fvisibility=hidden", *OPT, *ARCH],
        extra_link_args=["-pthread"],
        language="c++",
    )


def _find_cublas(cuda_home):
    """libcublas to link the CUDA ops against: the toolkit's, else the one torch's pip wheels ship."""
    dirs = []
    if cuda_home:
        dirs += [Path(cuda_home) / "lib64", Path(cuda_home) / "lib", Path(cuda_home) / "targets/x86_64-linux/lib"]
    for entry in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/cu12/lib"):
            dirs.append(Path(entry) / sub)
    for d in dirs:
        for name in ("libcublas.so", "libcublas.so.13", "libcublas.so.12"):
            if (d / name).is_file():
                return (d / name).resolve()
    return None


def torch_extension():
    """Returns (extension or None, BuildExtension class or None, description lines)."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return None, None, ["torch ops (mudsc._C): skipped, torch is not importable"]

    mode = _env_flag("MUDSC_WITH_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        sys.exit(f"MUDSC_WITH_CUDA must be auto, 0 or 1, got {mode!r}")
    torch_cuda = torch.version.cuda is not None
    cuda_home = cpp_extension.CUDA_HOME
    if mode == "1" and not torch_cuda:
        sys.exit("MUDSC_WITH_CUDA=1 but this torch build has no CUDA (torch.version.cuda is None)")
    if mode == "1" and not cuda_home:
        sys.exit("MUDSC_WITH_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root")
    with_cuda = mode == "1" or (mode == "auto" and torch_cuda and cuda_home is not None)
    if with_cuda and not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        sys.exit(
            "building CUDA ops on a host without a GPU needs TORCH_CUDA_ARCH_LIST (e.g. '9.0'), "
            "or MUDSC_WITH_CUDA=0 for a CPU-only build"
        )

    sources = [
        str(p.relative_to(ROOT)) for d in ("csrc/ops", "csrc/ops/cpu") for p in sorted((ROOT / d).glob("*.cpp"))
    ]
    # torch >= 2.10 headers need C++20; ARCH vectorises the prepare loops. -fopenmp: ATen's at::parallel_for is
    # inline OpenMP (AT_PARALLEL_OPENMP) and runs on one thread in code compiled without it; at run time its
    # calls bind to the libgomp torch has loaded.
    cxx = ["-std=c++20", *OPT, *ARCH, "-fopenmp"]
    include_dirs = [str(ROOT / "csrc/core"), str(ROOT / "csrc/ops")]
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/ops/cuda").glob("*.cu"))
        # No MUDSC_WITH_CUDA macro: the CUDA twins register their kernels and hooks themselves, so the
        # generic sources compile the same in both builds (csrc/ops/stats_gemm.hpp, backend_registry.hpp).
        # pip's CUDA wheels carry the cuBLAS/cuSPARSE headers that ATen's CUDA headers include.
        for entry in sys.path:
            extra = Path(entry) / "nvidia" / "cu13" / "include"
            if extra.is_dir():
                include_dirs.append(str(extra))
                break
        cublas = _find_cublas(cuda_home)
        if cublas is None:
            sys.exit(
                "the CUDA ops call cuBLAS, but no libcublas.so was found under $CUDA_HOME/lib64 or the pip "
                "nvidia packages; set CUDA_HOME to a full toolkit, or MUDSC_WITH_CUDA=0 for a CPU-only build"
            )
        ext = cpp_extension.CUDAExtension(
            "mudsc._C",
            sources=sources,
            include_dirs=include_dirs,
            # The library file itself (pip ships only libcublas.so.N): the module then needs its soname, which
            # torch's CUDA library has already loaded when mudsc._C is imported.
            extra_link_args=[str(cublas), f"-Wl,-rpath-link,{cublas.parent}", "-fopenmp"],
            extra_compile_args={"cxx": cxx, "nvcc": [*OPT, "-std=c++20", "--expt-relaxed-constexpr"]},
        )
    else:
        ext = cpp_extension.CppExtension(
            "mudsc._C", sources=sources, include_dirs=include_dirs, extra_compile_args=cxx, extra_link_args=["-fopenmp"]
        )
    lines = [
        f"torch                 : {torch.__version__} (CUDA {torch.version.cuda})",
        f"torch ops (mudsc._C)  : cpu{' + cuda' if with_cuda else ''}  [MUDSC_WITH_CUDA={mode}]",
        f"CUDA_HOME             : {cuda_home}",
        *([f"cuBLAS                : {_find_cublas(cuda_home)}"] if with_cuda else []),
        f"TORCH_CUDA_ARCH_LIST  : {os.environ.get('TORCH_CUDA_ARCH_LIST', '(from the visible GPU)')}",
    ]
    return ext, cpp_extension.BuildExtension.with_options(use_ninja=True), lines


def main():
    extensions = [core_extension()]
    torch_ext, build_ext, lines = torch_extension()
    if torch_ext is not None:
        extensions.append(torch_ext)
    print("-" * 72)
    print("mudsc build configuration")
    print(f"  core (mudsc._core)    : C++17 {' '.join(OPT + ARCH)}")
    for line in lines:
        print("  " + line)
    print(f"  debug                 : {DEBUG}")
    print("-" * 72)
    setup(ext_modules=extensions, cmdclass={"build_ext": build_ext} if build_ext else {})


main()
