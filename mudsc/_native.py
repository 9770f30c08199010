"""Loads the native modules once and remembers why one could not be loaded.

``HAS_CORE``: ``mudsc._core`` (torch-free pybind11 core: LAP, later zip) imported.
``HAS_C``: ``mudsc._C`` (torch ops, CPU [+ CUDA] kernels) imported and registered; their fake kernels
(``mudsc._ops``) are then registered too.
``CORE_ERROR`` / ``C_ERROR``: the import error message, for "why is native unavailable".
"""

from __future__ import annotations

import glob
import os


def _describe(exc: ImportError, name: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    if not glob.glob(os.path.join(here, name + ".*")):
        return f"mudsc.{name} is not built (run `make build`, or `pip install --no-build-isolation -e .`)"
    return f"mudsc.{name} failed to load: {exc}"


core = None
CORE_ERROR: str | None = None
try:
    from . import _core as core  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # not built, or built for another Python / ABI
    CORE_ERROR = _describe(exc, "_core")

HAS_CORE = core is not None

C_ERROR: str | None = None
HAS_C = False
try:
    import torch  # noqa: F401  (the ops library links against torch)

    from . import _C  # noqa: F401  (importing registers the mudsc:: ops)

    # The ops' fake kernels (torch.compile / FakeTensor); only once the ops exist to take them.
    from . import _ops  # noqa: F401

    HAS_C = True
except ImportError as exc:
    C_ERROR = _describe(exc, "_C")


def build_info() -> dict:
    """What was built and what loaded: backends of the torch ops, SIMD level of the core."""
    info = {
        "core": HAS_CORE,
        "core_error": CORE_ERROR,
        "core_simd": getattr(core, "simd", None),
        "torch_ops": HAS_C,
        "torch_ops_error": C_ERROR,
        "torch_ops_backends": None,
        "cuda_available": False,
    }
    if HAS_C:
        import torch

        info["torch_ops_backends"] = torch.ops.mudsc.build_info()
        info["cuda_available"] = bool(torch.cuda.is_available())
    return info
