"""Linear assignment (LAP): single, batched and warm-started; the twin of :mod:`mudsc.reference.lap`.

Each function takes ``backend="auto"|"native"|"reference"`` (see :mod:`mudsc.backends`). The native backend
is a Jonker-Volgenant solver in C++ (``csrc/core/lap.cpp``): float32 matrices are solved without a float64
copy, ``maximize`` without negating the matrix, and the batched form runs on a thread pool with the GIL
released. The reference backend is ``scipy.optimize.linear_sum_assignment`` called from Python.

Inputs: numpy arrays or torch tensors (CUDA tensors are copied to the host), any real dtype (integers and
booleans are read as float64, float16 as float32), any strides (copied only when neither matrix axis has a
unit stride). Outputs follow the input: torch tensors in, torch tensors out; numpy otherwise.
Forbidden pairs: ``+inf`` when minimizing, ``-inf`` when maximizing. NaN, the opposite infinity, and problems
with no complete assignment through allowed pairs raise ``ValueError``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _native, backends
from ._arrays import as_cost_array, is_torch_tensor
from .reference import lap as _reference

__all__ = ["AssignmentResult", "linear_sum_assignment", "batch_linear_sum_assignment", "solve_assignment"]


@dataclass
class AssignmentResult:
    """Result of :func:`solve_assignment`.

    Attributes:
        row_ind: ``int64[k]`` assigned rows, ascending (``k = min(n, m)``), as scipy returns them.
        col_ind: ``int64[k]`` the column of each of those rows.
        objective: ``sum(cost[row_ind, col_ind])`` in float64.
        potentials: ``float64[m]`` dual column potentials of the minimisation form (the cost negated when
            maximizing), for warm-starting the next solve; ``None`` from the reference backend.
    """

    row_ind: Any
    col_ind: Any
    objective: float
    potentials: Optional[Any]

    def __iter__(self):  # ``rows, cols = solve_assignment(...)`` unpacks like scipy's pair
        return iter((self.row_ind, self.col_ind))


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _like_input(x: np.ndarray, template: Any):
    """``x`` as a torch tensor when ``template`` is one (torch in, torch out), else as it is."""
    if is_torch_tensor(template):
        return sys.modules["torch"].from_numpy(np.ascontiguousarray(x))
    return x


def _potentials_array(p: Any, shape: tuple, name: str = "init_potentials") -> np.ndarray:
    if is_torch_tensor(p):
        p = p.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(p, dtype=np.float64))
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _require_square_for_potentials(shape: tuple, wanted: bool) -> None:
    """Potentials (warm start in or out) exist for square problems only, on every backend."""
    if wanted and shape[-1] != shape[-2]:
        raise ValueError(f"dual potentials (warm start) need square problems, got cost shape {shape}")


def _split(col_of_row: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy's ``(row_ind, col_ind)`` from a row -> column map (-1 for unassigned rows, only when n > m)."""
    if n <= m:
        return np.arange(n, dtype=np.int64), col_of_row
    rows = np.flatnonzero(col_of_row >= 0).astype(np.int64)
    return rows, col_of_row[rows]


def linear_sum_assignment(cost: Any, maximize: bool = False, *, backend: str = "auto"):
    """Drop-in for ``scipy.optimize.linear_sum_assignment``.

    Args:
        cost: ``[n, m]`` cost matrix (numpy array or torch tensor).
        maximize: maximise the total instead of minimising it.
        backend: ``"auto"``, ``"native"`` or ``"reference"`` (scipy).

    Returns:
        ``(row_ind, col_ind)``: ``int64[min(n, m)]`` each, rows ascending, as scipy returns them.

    Example:
        >>> rows, cols = mudsc.linear_sum_assignment(similarity, maximize=True)
    """
    a = as_cost_array(cost)
    if backends.choose("linear_sum_assignment", backend) == "reference":
        rows, cols = _reference.linear_sum_assignment(a, maximize)
    else:
        col_of_row, _, _ = _native.core.lap_solve(a, maximize, None, False)
        rows, cols = _split(col_of_row, *a.shape)
    if is_torch_tensor(cost):
        return _like_input(rows, cost), _like_input(cols, cost)
    return rows, cols


def solve_assignment(
    cost: Any,
    maximize: bool = False,
    *,
    init_potentials: Any = None,
    backend: str = "auto",
) -> AssignmentResult:
    """Solve one LAP and return its dual potentials, for warm-starting the next, slightly changed problem.

    The MuDSC coordinate descent solves the same groups sweep after sweep on matrices that change a little;
    passing the previous ``potentials`` as ``init_potentials`` skips most of the work (square problems).

    Args:
        cost: ``[n, m]`` cost matrix.
        maximize: maximise instead of minimise.
        init_potentials: ``float64[m]`` potentials returned by an earlier solve with the same ``maximize``
            (square problems only). Any finite vector is valid; better ones save more time.
        backend: ``"auto"``, ``"native"`` or ``"reference"`` (which ignores ``init_potentials`` and returns
            ``potentials=None``).

    Example:
        >>> first = mudsc.solve_assignment(sim, maximize=True)
        >>> sim2 = sim + 0.01 * noise                      # the next sweep's matrix
        >>> second = mudsc.solve_assignment(sim2, maximize=True, init_potentials=first.potentials)
    """
    a = as_cost_array(cost)
    n, m = a.shape
    square = n == m
    _require_square_for_potentials(a.shape, init_potentials is not None)
    init = _potentials_array(init_potentials, (m,)) if init_potentials is not None else None
    choice = backends.choose("solve_assignment", backend)
    if choice == "reference":
        col_of_row, objective, potentials = _reference.solve_assignment(a, maximize, init)
    else:
        col_of_row, objective, potentials = _native.core.lap_solve(a, maximize, init, square)
    rows, cols = _split(col_of_row, n, m)
    if potentials is not None:
        potentials = _like_input(potentials, cost)
    return AssignmentResult(_like_input(rows, cost), _like_input(cols, cost), float(objective), potentials)


def batch_linear_sum_assignment(
    costs: Any,
    maximize: bool = False,
    num_threads: Optional[int] = None,
    *,
    init_potentials: Any = None,
    return_potentials: bool = False,
    backend: str = "auto",
):
    """Solve ``B`` independent LAPs of one shape, on a thread pool.

    Args:
        costs: ``[B, n, m]`` cost matrices.
        maximize: maximise instead of minimise.
        num_threads: worker threads; ``None`` = the CPUs this process may use. The reference backend loops.
        init_potentials: ``float64[B, m]`` warm-start potentials (square problems only).
        return_potentials: also return the final ``float64[B, m]`` potentials.
        backend: ``"auto"``, ``"native"`` or ``"reference"``.

    Returns:
        ``col_ind``: ``int64[B, n]``, the column assigned to each row (``-1`` for rows left unassigned when
        ``n > m``); or ``(col_ind, potentials)`` with ``return_potentials``.
    """
    a = as_cost_array(costs, "costs", ndim=3)
    b, n, m = a.shape
    if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    threads = int(num_threads) if num_threads is not None else _default_threads()
    _require_square_for_potentials(a.shape, init_potentials is not None or return_potentials)
    init = _potentials_array(init_potentials, (b, m)) if init_potentials is not None else None
    choice = backends.choose("batch_linear_sum_assignment", backend)
    if choice == "reference":
        col_of_row, _, potentials = _reference.batch_linear_sum_assignment(a, maximize, threads, init)
    else:
        if b == 0:
            col_of_row = np.zeros((0, n), dtype=np.int64)
            potentials = np.zeros((0, m)) if return_potentials else None
        else:
            col_of_row, _, potentials = _native.core.lap_solve_batch(a, maximize, threads, init, return_potentials)
    col_of_row = _like_input(col_of_row, costs)
    if return_potentials:
        return col_of_row, (_like_input(potentials, costs) if potentials is not None else None)
    return col_of_row
