"""Shared pytest configuration of the mudsc test suite.

- ``backend`` fixture: every concrete backend this process can run (``mudsc.available_backends()``).
- Tests marked ``cuda`` are skipped when ``torch.cuda.is_available()`` is False.
- Hypothesis profiles: ``mudsc`` (default: 250 examples, no deadline; test_lap.py takes ~20 s on 2 cores),
  ``mudsc-thorough`` (2000 examples) and ``mudsc-ci`` (250, derandomized). Pick one with the environment
  variable ``MUDSC_HYPOTHESIS_PROFILE``. The example database is off (no failing examples are replayed
  from ``.hypothesis/``; hypothesis may still cache constants there, and the folder is git-ignored).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import mudsc

_COMMON = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile("mudsc", max_examples=250, **_COMMON)
settings.register_profile("mudsc-ci", max_examples=250, derandomize=True, **_COMMON)
settings.register_profile("mudsc-thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("MUDSC_HYPOTHESIS_PROFILE", "mudsc"))


@pytest.fixture(params=mudsc.available_backends())
def backend(request) -> str:
    """A concrete backend name: "native" (when the core loaded) and "reference"."""
    return request.param


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(autouse=True)
def _skip_cuda_without_gpu(request):
    """Skip tests marked ``cuda`` on machines without a usable CUDA device."""
    if request.node.get_closest_marker("cuda") is not None and not _cuda_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture
def checkpoints(tmp_path):
    """Two state dicts of a tiny built-in MLP (12 -> 4 -> 10) from seeds 0 and 1, saved under ``tmp_path``: the
    CLI tests' checkpoints."""
    import torch  # noqa: PLC0415  (the fixture is only used by tests that need torch)

    paths = []
    for i in range(2):
        torch.manual_seed(i)
        paths.append(str(tmp_path / f"m{i}.pt"))
        torch.save(mudsc.models.mlp(in_features=12, hidden=(4,)).state_dict(), paths[-1])
    return paths
