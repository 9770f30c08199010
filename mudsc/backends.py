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


def available_backends(needs: str = "core") -> list[str]:
    """Concrete backends that can run at all in this process (``"reference"`` always can); ``needs`` as in
    :func:`choose`."""
    loaded = _native.HAS_CORE if needs == "core" else _native.HAS_C
    return (["native"] if loaded else []) + ["reference"]


NEEDS = ("core", "ops")


def choose(op: str, backend: str, native_reasons: Callable[[], Sequence[str]] = lambda: (),
           needs: str = "core") -> str:
    """Resolve ``backend`` for operation ``op`` to ``"native"`` or ``"reference"``.

    ``needs`` names the native module the operation runs on: ``"core"`` (``mudsc._core``, the solvers) or
    ``"ops"`` (``mudsc._C``, the torch ops of the statistics and the similarity); that module being unloaded is
    a reason against native. ``native_reasons()`` lists why the native implementation cannot take these
    particular inputs (empty when it can).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, got {needs!r}")
    if backend == "auto":
        env = os.environ.get("MUDSC_BACKEND", "").strip().lower()
        if env:
            if env not in ("native", "reference"):
                raise ValueError(f"MUDSC_BACKEND must be 'native' or 'reference', got {env!r}")
            backend = env
    if backend == "reference":
        return "reference"
    reasons = []
    if needs == "core" and not _native.HAS_CORE:
        reasons.append(f"the native core mudsc._core did not load ({_native.CORE_ERROR})")
    elif needs == "ops" and not _native.HAS_C:
        reasons.append(f"the torch ops mudsc._C did not load ({_native.C_ERROR})")
    else:
        reasons.extend(native_reasons())
    if not reasons:
        return "native"
    if backend == "native":
        raise BackendUnavailableError(f"{op}: backend='native' cannot run: " + "; ".join(reasons))
    return "reference"
