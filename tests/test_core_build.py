"""How ``mudsc._core`` was compiled: ``_core.simd`` must name the SIMD kernels actually built in.

The core picks its kernels with the compiler's target macros (``__AVX512F__``: lap_small.hpp's AVX-512
Block8; ``__AVX2__``: lap_kernels.hpp, zip.cpp and the AVX2 Block8). ``_core.simd_macros`` exports those
macros as the compiler saw them; the tests check that ``simd`` follows from them, that they agree with what
the compiler defines for the flags setup.py used (``-march=native`` unless ``MUDSC_NATIVE_ARCH=0``,
reported as ``_core.native_arch``), and that they do not exceed this CPU.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

import pytest

from mudsc import _native

core = _native.core
pytestmark = pytest.mark.skipif(core is None, reason=f"mudsc._core did not load: {_native.CORE_ERROR}")

SIMD_MACROS = ("__AVX512F__", "__AVX2__")


def _expected_level(macros: dict) -> str:
    if macros["__AVX512F__"]:
        return "avx512"
    if macros["__AVX2__"]:
        return "avx2"
    return "scalar"


def test_simd_follows_the_compile_macros():
    macros = core.simd_macros
    assert set(macros) == set(SIMD_MACROS)
    assert core.simd == _expected_level(macros)
    if macros["__AVX512F__"]:
        assert macros["__AVX2__"], "an AVX-512 target implies AVX2"


def test_simd_macros_match_the_compiler():
    """The exported macros are those the compiler defines for the build's -march (not a hard-coded guess)."""
    if core.native_arch is None:
        pytest.skip("mudsc._core was built outside setup.py: its -march flags are unknown")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to ask for its target macros")
    flags = ["-march=native"] if core.native_arch else []
    out = subprocess.run(
        [compiler, *flags, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        pytest.skip(f"{compiler} {' '.join(flags)} -dM -E failed: {out.stderr.strip()[:200]}")
    defined = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("#define ")}
    want = {name: name in defined for name in SIMD_MACROS}
    assert core.simd_macros == want, f"{compiler} {' '.join(flags)} defines {want}"
    assert core.simd == _expected_level(want)


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/cpuinfo")
def test_simd_within_this_cpu():
    """Kernels this CPU cannot run would crash before any test: a level above the CPU's is a wrong report."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    if core.simd_macros["__AVX512F__"]:
        assert "avx512f" in flags
    if core.simd_macros["__AVX2__"]:
        assert "avx2" in flags
