"""Reference LAP: ``scipy.optimize.linear_sum_assignment`` called from Python, the way the original
MuDSC / ZipIt! / Git Re-Basin code does it (one call per problem, float64 on the CPU).

Inputs are the already-normalised float32/float64 numpy arrays of :mod:`mudsc.lap`.
The reference keeps no dual potentials: ``init_potentials`` is ignored (the answer is the same optimum)
and potentials come back as ``None``.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from .._arrays import check_finite_for_reference

__all__ = ["linear_sum_assignment", "solve_assignment", "batch_linear_sum_assignment"]


def _scipy(cost: np.ndarray, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
    check_finite_for_reference(cost, maximize)
    try:
        rows, cols = scipy.optimize.linear_sum_assignment(cost, maximize=maximize)
    except ValueError as exc:
        if "infeasible" in str(exc):
            forbidden = "-inf" if maximize else "+inf"
            raise ValueError(
                f"cost matrix of shape {cost.shape} is infeasible: no assignment of every row avoids the "
                f"forbidden ({forbidden}) entries"
            ) from None
        raise
    return rows.astype(np.int64), cols.astype(np.int64)


def linear_sum_assignment(cost: np.ndarray, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scipy's answer: ``(row_ind, col_ind)``, rows ascending."""
    return _scipy(cost, maximize)


def solve_assignment(cost: np.ndarray, maximize: bool = False, init_potentials=None):
    """``(col_of_row[n] with -1 for unassigned rows, objective, None)``."""
    rows, cols = _scipy(cost, maximize)
    col_of_row = np.full(cost.shape[0], -1, dtype=np.int64)
    col_of_row[rows] = cols
    objective = float(cost[rows, cols].astype(np.float64).sum())
    return col_of_row, objective, None


def batch_linear_sum_assignment(costs: np.ndarray, maximize: bool = False, num_threads=None, init_potentials=None):
    """A Python loop over scipy: ``(col_of_row[B, n], objective[B], None)``."""
    b, n, _ = costs.shape
    out = np.full((b, n), -1, dtype=np.int64)
    objective = np.zeros(b)
    for k in range(b):
        try:
            out[k], objective[k], _ = solve_assignment(costs[k], maximize)
        except ValueError as exc:
            raise ValueError(f"problem {k} of the batch: {exc}") from None
    return out, objective, None
