"""Unit matching of N models from a similarity matrix (ALGORITHM.md §4): the twin of :mod:`mudsc.reference.matching`.

- :func:`zip_match` / :func:`group_zip_match`: ZipIt!'s greedy zip (and its head/group-preserving form);
- :func:`permute_match` / :func:`group_permute_match`: alignment of every model to model 0 by LAPs (and the
  hierarchical group form for attention heads and GroupNorm groups).

Each takes the ``[N·Om, N·Om]`` similarity (numpy or torch; model-major units) and ``backend="auto"|"native"|
"reference"`` (see :mod:`mudsc.backends`) and returns a :class:`mudsc.MatchResult`. The native backend is the C++
core (``csrc/core/zip.cpp``, ``group_lap.cpp``, ``lap.cpp``); the reference is the original's algorithm in
torch/scipy, with identical labels.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from . import _native, backends
from ._arrays import as_cost_array
from .maps import MatchResult, ZipResult
from .reference import matching as _reference_matching

__all__ = ["MatchResult", "ZipResult", "check_zip_parameters", "default_reduce", "zip_match", "group_zip_match",
           "permute_match", "group_permute_match"]


def _as_similarity(sim: Any, num_models: int, groups: Optional[int] = None, symmetric: bool = True,
                   native: bool = True) -> np.ndarray:
    """A C-contiguous float32/float64 view (or copy) of ``sim``; ValueError naming the problem (the value scan
    runs in the core when ``native``, else in numpy).

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
    if native:
        c = _native.core.check_similarity(a)
    else:
        finite = np.isfinite(a) & np.isfinite(a.T)
        c = {
            "has_nan": bool(np.isnan(a).any()),
            "has_pos_inf": bool((a == np.inf).any()),
            "infinity_asymmetric": not np.array_equal(np.isfinite(a), np.isfinite(a.T)),
            "max_asymmetry": float(np.abs(a[finite] - a.T[finite]).max()) if finite.any() else 0.0,
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


def default_reduce(num_models: int) -> float:
    """ZipIt's rule ``1 − 1/N``: the zip keeps the width of one model, exactly."""
    return 1.0 - 1.0 / int(num_models)


ZIP_DECAYS = ("same-model", "every-merge")


def check_zip_parameters(reduce: float, alpha: float, beta: float, decay: str = "same-model") -> None:
    """reduce in [0, 1), alpha finite, beta finite and >= 0, decay one of :data:`ZIP_DECAYS`; ValueError naming
    the parameter otherwise."""
    if decay not in ZIP_DECAYS:
        raise ValueError(f"decay must be one of {', '.join(map(repr, ZIP_DECAYS))}, got {decay!r}")
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
    reduce: Optional[float] = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    *,
    decay: str = "same-model",
    backend: str = "auto",
) -> MatchResult:
    """ZipIt!'s greedy zip of N models' units (ALGORITHM.md §4.c), as used by ZipIt! and MuDSC-zip.

    Args:
        sim: ``[O, O]`` symmetric similarity of all units of all models (model-major); ``-inf`` forbids a pair.
        num_models: N (O must be divisible by N).
        reduce: fraction of units removed: K = floor(O·(1 − reduce) + 1e-4) outputs (default ``1 − 1/N``, ZipIt's
            rule: the width of one model, exactly).
        alpha: decay of a merged unit's similarities (``alpha·min`` linkage); ``<= 0``: a decayed pair never
            merges.
        beta: within-model merge budget factor (1 = floor((O − K)/N) merges per model).
        decay: which merged similarities decay. ``"same-model"`` (default): only those towards a cluster whose
            union with the merged one would hold two units of one model; towards the others the linkage is the
            plain ``min``, so twins from N >= 3 models end in one cluster (a self-merge is exact).
            ``"every-merge"``: all of them (ZipIt!'s rule; for N = 3, the pair of twins from models A and B
            meets C's twin at ``alpha·1`` and loses it to any within-model pair above ``alpha``). The two rules
            give identical results for N = 2.
        backend: ``"auto"``, ``"native"`` (C++: one working copy, cached row maxima) or ``"reference"`` (the
            original's Θ(O³) torch loop).

    Returns:
        :class:`MatchResult`; outputs are ordered by the smallest member index.
    """
    chosen = backends.choose("zip_match", backend)
    a = _as_similarity(sim, num_models, native=chosen == "native")
    reduce = default_reduce(num_models) if reduce is None else reduce
    check_zip_parameters(reduce, alpha, beta, decay)
    args = (a, int(num_models), float(reduce), float(alpha), float(beta), decay)
    if chosen == "reference":
        labels, k, value = _reference_matching.zip_match(*args)
    else:
        labels, k, value = _native.core.zip_match(*args)
    return MatchResult(labels, int(k), float(value))


def group_zip_match(
    sim: Any,
    num_models: int,
    groups: int,
    reduce: Optional[float] = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    *,
    decay: str = "same-model",
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
        reduce, alpha, beta, decay: as in :func:`zip_match`.

    Returns:
        :class:`MatchResult` with K = groups·R outputs ordered head-set by head-set.
    """
    chosen = backends.choose("group_zip_match", backend)
    a = _as_similarity(sim, num_models, groups, native=chosen == "native")
    reduce = default_reduce(num_models) if reduce is None else reduce
    check_zip_parameters(reduce, alpha, beta, decay)
    args = (a, int(num_models), int(groups), float(reduce), float(alpha), float(beta), decay)
    if chosen == "reference":
        labels, k, value = _reference_matching.group_zip_match(*args)
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
        return MatchResult(*_reference_matching.permute_match(a, n))
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
        return MatchResult(*_reference_matching.group_permute_match(a, n, g))
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
