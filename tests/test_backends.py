"""Backend selection (mudsc.backends): the environment switch, explicit choices, unloaded native modules, and
``MUDSC_BACKEND=reference`` reaching every stage of a merge (solvers, statistics, similarity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mudsc
import mudsc._native
import mudsc.backends
import mudsc.lap
from mudsc.backends import BackendUnavailableError
from test_lap import check_batch_result, check_solution, needs_native



class _Forbidden:
    """Stand-in for mudsc._native.core that fails the test when the native core is touched."""

    def __getattr__(self, name):
        raise AssertionError(f"the native core was called ({name}) although the reference backend was forced")


def _spy_reference(monkeypatch):
    calls = []
    ref = mudsc.lap._reference
    for name in ("linear_sum_assignment", "solve_assignment", "batch_linear_sum_assignment"):
        original = getattr(ref, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ref, name, spy)
    return calls


@pytest.mark.parametrize("value", ["reference", " Reference ", "REFERENCE"])
def test_env_forces_reference(monkeypatch, value):
    monkeypatch.setenv("MUDSC_BACKEND", value)
    assert mudsc.backends.choose("x", "auto") == "reference"
    calls = _spy_reference(monkeypatch)
    monkeypatch.setattr(mudsc._native, "core", _Forbidden())
    c = np.random.default_rng(0).random((5, 5))
    rows, cols = mudsc.linear_sum_assignment(c)
    check_solution(c, False, rows, cols, 1e-9)
    res = mudsc.solve_assignment(c)
    assert res.potentials is None  # the reference keeps no potentials
    col = mudsc.batch_linear_sum_assignment(c[None])
    check_batch_result(c[None], False, col, 1e-9)
    # (the reference batch loops over its own solve_assignment: one problem, one inner call)
    assert calls == ["linear_sum_assignment", "solve_assignment", "batch_linear_sum_assignment", "solve_assignment"]


@needs_native
def test_env_native_and_explicit_backend_wins(monkeypatch):
    c = np.random.default_rng(0).random((5, 5))
    monkeypatch.setenv("MUDSC_BACKEND", "native")
    assert mudsc.backends.choose("x", "auto") == "native"
    assert mudsc.solve_assignment(c).potentials is not None
    assert mudsc.solve_assignment(c, backend="reference").potentials is None  # explicit beats the environment
    monkeypatch.setenv("MUDSC_BACKEND", "reference")
    assert mudsc.solve_assignment(c, backend="native").potentials is not None
    monkeypatch.setenv("MUDSC_BACKEND", "")
    assert mudsc.backends.choose("x", "auto") == "native"


def test_env_bogus_value(monkeypatch):
    monkeypatch.setenv("MUDSC_BACKEND", "gpu")
    with pytest.raises(ValueError, match="MUDSC_BACKEND"):
        mudsc.linear_sum_assignment(np.ones((2, 2)))


def test_choose_rules(monkeypatch):
    monkeypatch.delenv("MUDSC_BACKEND", raising=False)
    with pytest.raises(ValueError, match="bogus"):
        mudsc.backends.choose("op", "bogus")
    assert mudsc.backends.choose("op", "reference", lambda: ["never asked"]) == "reference"
    monkeypatch.setattr(mudsc._native, "HAS_CORE", True)
    assert mudsc.backends.choose("op", "auto") == "native"
    assert mudsc.backends.choose("op", "native") == "native"
    assert mudsc.backends.choose("op", "auto", lambda: ["cannot"]) == "reference"
    with pytest.raises(BackendUnavailableError, match="op: backend='native' cannot run: a; b"):
        mudsc.backends.choose("op", "native", lambda: ["a", "b"])
    assert issubclass(BackendUnavailableError, RuntimeError)


def test_native_unavailable(monkeypatch):
    monkeypatch.delenv("MUDSC_BACKEND", raising=False)
    monkeypatch.setattr(mudsc._native, "HAS_CORE", False)
    monkeypatch.setattr(mudsc._native, "CORE_ERROR", "simulated import failure")
    monkeypatch.setattr(mudsc._native, "core", _Forbidden())
    assert mudsc.available_backends() == ["reference"]
    c = np.random.default_rng(0).random((4, 6))
    rows, cols = mudsc.linear_sum_assignment(c)  # auto falls back to the reference
    check_solution(c, False, rows, cols, 1e-9)
    with pytest.raises(BackendUnavailableError, match="simulated import failure"):
        mudsc.linear_sum_assignment(c, backend="native")


def test_available_backends():
    names = mudsc.available_backends()
    assert names[-1] == "reference"
    assert set(names) <= {"native", "reference"}
    assert ("native" in names) == mudsc.build_info()["core"]




def test_ops_need_only_the_torch_ops(monkeypatch):
    """Statistics and similarity run on mudsc._C: an unloaded _core is no reason against them, an unloaded _C is."""
    monkeypatch.delenv("MUDSC_BACKEND", raising=False)
    monkeypatch.setattr(mudsc._native, "HAS_CORE", False)
    monkeypatch.setattr(mudsc._native, "HAS_C", True)
    assert mudsc.backends.choose("op", "native", needs="ops") == "native"
    with pytest.raises(BackendUnavailableError, match="mudsc._core did not load"):
        mudsc.backends.choose("op", "native", needs="core")
    monkeypatch.setattr(mudsc._native, "HAS_C", False)
    monkeypatch.setattr(mudsc._native, "C_ERROR", "simulated ops failure")
    with pytest.raises(BackendUnavailableError, match=r"mudsc._C did not load \(simulated ops failure\)"):
        mudsc.backends.choose("op", "native", needs="ops")
    assert mudsc.backends.choose("op", "auto", needs="ops") == "reference"
    with pytest.raises(ValueError, match="needs must be one of"):
        mudsc.backends.choose("op", "auto", needs="gpu")


class _MudscOps(TorchDispatchMode):
    """Records every ``mudsc::`` torch op called while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mudsc":
            self.calls.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def _tiny_vit_merge(**kw):
    torch.manual_seed(0)
    models = [mudsc.models.vit(depth=1, dim=24, heads=3, patch=8, mlp_ratio=2.0).eval() for _ in range(2)]
    gen = torch.Generator().manual_seed(1)
    loader = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(2)]
    return mudsc.merge(models, loader, method="mudsc-zip", max_sweeps=2, patience=1, progress=False, **kw)


@pytest.mark.skipif(not mudsc.build_info()["torch_ops"] or not mudsc.build_info()["core"],
                    reason="needs the native core and torch ops (the positive control)")
def test_env_reference_reaches_every_stage(monkeypatch):
    """MUDSC_BACKEND=reference: no mudsc op (statistics, weight moments) and no core call (solvers, checks) in a
    whole merge with tied heads; the plan equals an explicit backend="reference" merge."""
    monkeypatch.delenv("MUDSC_BACKEND", raising=False)
    with _MudscOps() as native_ops:  # the control: the spy sees the native path
        _tiny_vit_merge()
    assert {"stats_update_", "stats_correlation"} <= set(native_ops.calls)
    explicit = _tiny_vit_merge(backend="reference")
    monkeypatch.setenv("MUDSC_BACKEND", "reference")
    monkeypatch.setattr(mudsc._native, "core", _Forbidden())
    with _MudscOps() as ops:
        env = _tiny_vit_merge()
    assert ops.calls == []
    for name, r in explicit.plan.maps.items():
        np.testing.assert_array_equal(env.plan.maps[name].labels, r.labels)
