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


def _load_core():
    """``(mudsc._core, None)``, or ``(None, why it did not load)``."""
    try:
        from . import _core
    except ImportError as exc:  # not built, or built for another Python / ABI
        return None, _describe(exc, "_core")
    return _core, None


def _load_ops():
    """``(True, None)`` once ``mudsc._C`` registered the ``mudsc::`` ops (and ``mudsc._ops`` their fake kernels),
    or ``(False, why not)``."""
    try:
        import torch  # noqa: F401  (the ops library links against torch)

        from . import _C  # noqa: F401  (importing registers the mudsc:: ops)

        # The ops' fake kernels (torch.compile / FakeTensor); only once the ops exist to take them.
        from . import _ops  # noqa: F401
    except ImportError as exc:
        return False, _describe(exc, "_C")
    return True, None


core, CORE_ERROR = _load_core()
HAS_CORE = core is not None
HAS_C, C_ERROR = _load_ops()


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
