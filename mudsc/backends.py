"""Backend registry: every public compute function takes ``backend="auto"|"native"|"reference"``.

- ``"native"``: the compiled core (``mudsc._core`` / ``mudsc._C``).
- ``"reference"``: pure numpy/scipy/torch twins in :mod:`mudsc.reference`, the test oracle and the
  "pure-Python matching" that benchmarks compare against.
- ``"auto"``: native when it is loaded and supports the inputs, else reference. The environment variable
  ``MUDSC_BACKEND`` (``native`` or ``reference``) replaces ``"auto"`` globally, e.g. to benchmark a whole
  pipeline on the reference path.

A forced backend that cannot run raises :class:`BackendUnavailableError` listing the reasons.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from . import _native

BACKENDS = ("auto", "native", "reference")


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly but cannot run these inputs."""


def available_backends() -> list[str]:
    """Concrete backends that can run at all in this process (``"reference"`` always can)."""
    return (["native"] if _native.HAS_CORE else []) + ["reference"]


def choose(op: str, backend: str, native_reasons: Callable[[], Sequence[str]] = lambda: ()) -> str:
    """Resolve ``backend`` for operation ``op`` to ``"native"`` or ``"reference"``.

    ``native_reasons()`` lists why the native implementation cannot take these particular inputs (empty when
    it can); the core being unloaded is added here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("MUDSC_BACKEND", "").strip().lower()
        if env:
            if env not in ("native", "reference"):
                raise ValueError(f"MUDSC_BACKEND must be 'native' or 'reference', got {env!r}")
            backend = env
    if backend == "reference":
        return "reference"
    reasons = []
    if not _native.HAS_CORE:
        reasons.append(f"the native core mudsc._core did not load ({_native.CORE_ERROR})")
    else:
        reasons.extend(native_reasons())
    if not reasons:
        return "native"
    if backend == "native":
        raise BackendUnavailableError(f"{op}: backend='native' cannot run: " + "; ".join(reasons))
    return "reference"
