"""Matching solvers: linear assignment (LAP), single, batched and warm-started.

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
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _native, backends
from . import reference as _reference
from ._arrays import as_cost_array, is_torch_tensor

__all__ = [
    "AssignmentResult",
    "MatchResult",
    "ZipResult",
    "zip_match",
    "group_zip_match",
    "permute_match",
    "group_permute_match",
    "linear_sum_assignment",
    "batch_linear_sum_assignment",
    "solve_assignment",
]


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
    if is_torch_tensor(template):
        import torch

        return torch.from_numpy(np.ascontiguousarray(x))
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


# ----------------------------------------------------------------------------------------------------------------
# Matching solvers over a similarity matrix of N models' units (ALGORITHM.md §4)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MatchResult:
    """How the units of N models map to merged units.

    Attributes:
        labels: ``int64[O]``, the merged (output) unit of every input unit; input units are model-major
            (model i owns ``i·Om … (i+1)·Om − 1``).
        num_outputs: K, the number of merged units.
        merge_value: the solver's progress metric: mean matched similarity (alignment), mean of the per-group
            mean matched similarity (group alignment), or mean of the merged similarities (zip).
    """

    labels: np.ndarray
    num_outputs: int
    merge_value: float

    def unmerge(self, dtype=np.float32) -> np.ndarray:
        """``U[O, K]`` with ``U[u, labels[u]] = 1`` (ALGORITHM.md's unmerge matrix)."""
        u = np.zeros((self.labels.shape[0], self.num_outputs), dtype=dtype)
        u[np.arange(self.labels.shape[0]), self.labels] = 1
        return u

    def merge(self, dtype=np.float32) -> np.ndarray:
        """``M = U / (colsum(U) + 1e-5)`` (ALGORITHM.md's merge matrix, before the caller's factor N)."""
        u = self.unmerge(dtype)
        return u / (u.sum(axis=0, keepdims=True) + dtype(1e-5))


ZipResult = MatchResult


def _as_similarity(sim: Any, num_models: int, groups: Optional[int] = None, symmetric: bool = True) -> np.ndarray:
    """A C-contiguous float32/float64 view (or copy) of ``sim``; ValueError naming the problem.

    With ``symmetric`` (zip), NaN / +inf / asymmetry beyond 1e-5 relative are rejected and a nearly symmetric
    matrix is made exactly symmetric from its upper triangle. Without it (alignment, which reads only the
    blocks model 0 x model i), only the shape is checked here and the LAP rejects bad values in those blocks.
    """
    a = as_cost_array(sim, "sim")
    o, o2 = a.shape
    if o != o2:
        raise ValueError(f"sim must be square [O, O], got shape {a.shape}")
    if not isinstance(num_models, (int, np.integer)) or num_models < 1:
        raise ValueError(f"num_models must be a positive integer, got {num_models!r}")
    if o % num_models:
        raise ValueError(f"sim has {o} units, which do not split into {num_models} models of equal width")
    if groups is not None:
        om = o // num_models
        if not isinstance(groups, (int, np.integer)) or groups < 1 or om % groups:
            raise ValueError(f"each model's {om} units do not split into groups={groups!r} groups of equal size")
    a = np.ascontiguousarray(a)
    if not symmetric:
        return a
    if _native.HAS_CORE:
        c = _native.core.check_similarity(a)
    else:
        finite = np.isfinite(a) & np.isfinite(a.T)
        c = {
            "has_nan": bool(np.isnan(a).any()),
            "has_pos_inf": bool((a == np.inf).any()),
            "infinity_asymmetric": not np.array_equal(np.isfinite(a), np.isfinite(a.T)),
            "max_asymmetry": float(np.abs(a - a.T)[finite].max()) if finite.any() else 0.0,
            "max_abs": float(np.abs(a[finite]).max()) if finite.any() else 0.0,
        }
    if c["has_nan"]:
        raise ValueError(f"sim of shape {a.shape} contains NaN")
    if c["has_pos_inf"]:
        raise ValueError(f"sim of shape {a.shape} contains +inf (use -inf to forbid a pair)")
    if c["infinity_asymmetric"] or c["max_asymmetry"] > 1e-5 * max(c["max_abs"], 1.0):
        raise ValueError(
            f"sim of shape {a.shape} is not symmetric: max |S - S^T| = {c['max_asymmetry']:.3g} "
            f"(tolerance 1e-5 relative){', and -inf entries are not mirrored' if c['infinity_asymmetric'] else ''}"
        )
    if c["max_asymmetry"] > 0:
        a = np.triu(a) + np.triu(a, 1).T  # exactly symmetric: both backends see the upper triangle
    return a


def _check_zip_parameters(reduce: float, alpha: float, beta: float) -> None:
    """reduce in [0, 1), alpha finite, beta finite and >= 0; ValueError naming the parameter otherwise."""
    import math

    for name, value in (("reduce", reduce), ("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not (0.0 <= float(reduce) < 1.0):
        raise ValueError(f"reduce must be in [0, 1), got {reduce!r}")
    if float(beta) < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")


def zip_match(
    sim: Any,
    num_models: int,
    reduce: float = 0.5,
    alpha: float = 0.5,
    beta: float = 1.0,
    *,
    backend: str = "auto",
) -> MatchResult:
    """ZipIt!'s greedy zip of N models' units (ALGORITHM.md §4.c), as used by ZipIt! and MuDSC-zip.

    Args:
        sim: ``[O, O]`` symmetric similarity of all units of all models (model-major); ``-inf`` forbids a pair.
        num_models: N (O must be divisible by N).
        reduce: fraction of units removed: K = floor(O·(1 − reduce) + 1e-4) outputs (0.5 with N = 2 keeps the
            width of one model).
        alpha: decay of a merged unit's similarities (``alpha·min`` linkage); ``<= 0``: merged units never merge
            again.
        beta: within-model merge budget factor (1 = floor((O − K)/N) merges per model).
        backend: ``"auto"``, ``"native"`` (C++: one working copy, cached row maxima) or ``"reference"`` (the
            original's Θ(O³) torch loop).

    Returns:
        :class:`MatchResult`; outputs are ordered by the smallest member index.
    """
    a = _as_similarity(sim, num_models)
    _check_zip_parameters(reduce, alpha, beta)
    if backends.choose("zip_match", backend) == "reference":
        labels, k, value = _reference_matching().zip_match(a, int(num_models), float(reduce), float(alpha), float(beta))
    else:
        labels, k, value = _native.core.zip_match(a, int(num_models), float(reduce), float(alpha), float(beta))
    return MatchResult(labels, int(k), float(value))


def group_zip_match(
    sim: Any,
    num_models: int,
    groups: int,
    reduce: float = 0.5,
    alpha: float = 0.5,
    beta: float = 1.0,
    *,
    backend: str = "auto",
) -> MatchResult:
    """Group zip (ALGORITHM.md §4.d) for attention heads and GroupNorm groups (ZipIt!/MuDSC-zip on grouped layers).

    Heads of every model are paired with model 0's heads (group alignment's head assignment); then each set of
    paired heads is zipped, in model 0's head order, down to R = floor(Og·N·(1 − reduce) + 1e-4) units, with a
    budget of within-head merges per head on top of the per-model budgets; merged heads keep the head structure
    (every output head-set has exactly R units). The native backend zips each head-set on its own
    ``(N·Og)²`` copy (they interact only through the model budgets); the reference is the original's loop over
    the full matrix.

    Args:
        sim: ``[O, O]`` symmetric similarity (model-major; inside a model, head-major).
        num_models: N. groups: heads (or GroupNorm groups) per model; Om must be divisible by it.
        reduce, alpha, beta: as in :func:`zip_match`.

    Returns:
        :class:`MatchResult` with K = groups·R outputs ordered head-set by head-set.
    """
    a = _as_similarity(sim, num_models, groups)
    _check_zip_parameters(reduce, alpha, beta)
    args = (a, int(num_models), int(groups), float(reduce), float(alpha), float(beta))
    if backends.choose("group_zip_match", backend) == "reference":
        labels, k, value = _reference_matching().group_zip_match(*args)
    else:
        labels, k, value = _native.core.group_zip_match(*args)
    return MatchResult(labels, int(k), float(value))


def permute_match(sim: Any, num_models: int, *, backend: str = "auto") -> MatchResult:
    """Alignment (Git Re-Basin style, ALGORITHM.md §4.a): every model is matched to model 0 by one LAP.

    Args:
        sim: ``[O, O]`` similarity; only the blocks model 0 × model i are read (symmetry is not needed).
            NaN or +inf in them raises ``ValueError``; ``-inf`` forbids a pair.
        num_models: N.
        backend: ``"auto"``, ``"native"`` or ``"reference"`` (scipy).

    Returns:
        :class:`MatchResult` with K = Om outputs in model 0's unit order.
    """
    a = _as_similarity(sim, num_models, symmetric=False)
    n = int(num_models)
    if a.shape[0] == 0:
        return MatchResult(np.zeros(0, dtype=np.int64), 0, 0.0)
    if backends.choose("permute_match", backend) == "reference":
        return MatchResult(*_reference_matching().permute_match(a, n))
    om = a.shape[0] // n

    def solve_block(block):
        cols, objective, _ = _native.core.lap_solve(block, True, None, False)
        return cols, objective / om

    return _align_to_model0(a, n, solve_block)


def group_permute_match(sim: Any, num_models: int, groups: int, *, backend: str = "auto") -> MatchResult:
    """Hierarchical group alignment (ALGORITHM.md §4.b) for attention heads and GroupNorm groups.

    Each model's units form ``groups`` blocks of ``Og = Om / groups``; whole groups are matched to model 0's
    (an outer LAP on the mean matched similarity of every pair of groups) and units inside matched groups by
    the inner LAPs. The native backend runs the g² inner LAPs and the outer LAP in one call. Only the blocks
    model 0 × model i of ``sim`` are read (symmetry is not needed).

    Returns:
        :class:`MatchResult` with K = Om outputs in model 0's unit order.
    """
    a = _as_similarity(sim, num_models, groups, symmetric=False)
    n, g = int(num_models), int(groups)
    if a.shape[0] == 0:
        return MatchResult(np.zeros(0, dtype=np.int64), 0, 0.0)
    if backends.choose("group_permute_match", backend) == "reference":
        return MatchResult(*_reference_matching().group_permute_match(a, n, g))
    return _align_to_model0(a, n, lambda block: _native.core.group_permute_match(block, g))


def _align_to_model0(a: np.ndarray, n: int, solve_block) -> MatchResult:
    """Labels from matching every model i >= 1 to model 0: ``solve_block(sim[model 0, model i])`` returns
    (model-i unit of each model-0 unit, block merge value); outputs are model 0's units."""
    o = a.shape[0]
    om = o // n
    labels = np.empty(o, dtype=np.int64)
    labels[:om] = np.arange(om)
    values = []
    for i in range(1, n):
        cols, value = solve_block(a[:om, i * om : (i + 1) * om])
        labels[i * om + cols] = np.arange(om)
        values.append(value)
    return MatchResult(labels, om, float(np.mean(values)) if values else 0.0)


def _reference_matching():
    from .reference import matching

    return matching
