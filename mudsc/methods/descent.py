"""Matching: the per-group unit maps of N models by one method, through the dual-space coordinate descent
(ALGORITHM.md §5) where the method has one; :func:`match` returns them as a :class:`mudsc.MergePlan`.

:class:`Descent` holds the state of one matching:

- :meth:`Descent.initial_maps`: identity maps (``avg``), the activation-only matching (``act-align``, ``zipit``,
  and the start of ``mudsc-*``), or nothing (weight-only methods start from identity);
- :meth:`Descent.sweep`: every coordinate (a group, or a head tie: :mod:`.coordinates`) once, in the given order;
  a visit rebuilds the weight vectors with the *current* maps of the other groups (Gauss–Seidel), mixes in the
  cached activation term ``S = balance·S_w + (1 − balance)·S_act`` and re-solves;
- :meth:`Descent.run`: sweeps in random orders drawn from one ``torch.Generator`` seeded with ``seed``. The
  sweep's value is the unweighted mean over groups of the merge values. A sweep counts only if it strictly
  improves the best value; a non-improving sweep reverts the maps to the best snapshot; ``patience``
  consecutive non-improving sweeps stop the descent (at most ``max_sweeps``); the best snapshot is kept.

Weight similarity on the native path goes through a :class:`mudsc.PieceCache` (a piece is recomputed only when
a map on one of its own other axes changed, and brought up to date from a kept version where it can); the
reference backend recomputes everything with dense matrices, as the original does. Activation taps follow the
spec's taps (the tracer's choice); groups without taps use their weight similarity in activation methods
(reported as ``fallback_groups``), and so do the units of a group that are constant on the merge data.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._progress import progress_bar
from ..backends import choose
from ..collect import ActivationStats
from ..inputs import check_finite_weights, check_models, named_tensors
from ..maps import MatchResult
from ..piece_cache import PieceCache
from ..plan import MergePlan, fingerprint
from ..similarity import weight_moments, weight_similarity
from ..spec import Group, PermSpec
from ..spec.views import dense_tensors
from .coordinates import coordinates, solve_coordinate
from .registry import MethodInfo, check_hyperparameters, check_method
from .weights import MapState
from .widths import default_reduce

__all__ = ["Descent", "match", "run_matching"]

TIE_TOLERANCE = 1e-6  # correlations this close to a row's maximum count as tied with it (float32 rounding: 1e-7)
TIE_FLOOR = 0.999  # ... when that maximum is a correlation of (almost) 1


def has_tied_maxima(sim: torch.Tensor, tol: float, floor: float = TIE_FLOOR) -> bool:
    """Whether some row of the symmetric ``sim`` has its maximum off the diagonal at least twice, up to ``tol``
    (the two largest off-diagonal entries differ by at most ``tol``), at a value of at least ``floor``.

    Exact ties come from proportional activations (units firing on the same few samples): such units
    correlate 1 with each other and with their twins, and every matching that keeps each unit at one of its
    best partners is then one of several of equal value, the solver's pick among them arbitrary. Near-equal
    correlations below ``floor`` are how similarities of a large group are distributed and are left alone."""
    n = sim.shape[0]
    if n < 3:
        return False
    # The three largest entries of each row hold its two largest off-diagonal ones (the diagonal, masked, is at
    # most one of them): one pass over ``sim``, without a copy of it.
    vals, idx = torch.topk(sim.float(), 3, dim=1)
    diagonal = idx == torch.arange(n, device=idx.device).unsqueeze(1)
    top = vals.masked_fill(diagonal, -math.inf).sort(dim=1, descending=True).values
    return bool(((top[:, 0] - top[:, 1] <= tol) & (top[:, 1] >= floor)).any())


class Descent:
    """One matching of N models' groups by one method (module docstring).

    Args:
        models, spec, method (a :class:`MethodInfo`), stats: as in :func:`match` (``stats`` checked there).
        balance, reduce, alpha, beta, backend, axis_rule: as in :func:`match`.
        piece_cache: the :class:`mudsc.PieceCache` of the native weight similarity (default: a new one; unused
            when the similarity runs on the reference backend).
        tie_break: weight of ``S_w`` added to the activation similarity of groups whose activations leave the
            matching open (:meth:`similarity`; 0: off).
        zip_decay: the zip's decay rule (:func:`mudsc.zip_match`'s ``decay``).
        workers: solves that may run at once in the activation-only matching (threads; the native solvers release
            the GIL). A coordinate whose similarity reads other groups' maps (weight similarity for dead units or
            ties) waits for every earlier solve, so the result is the sequential one whatever this is.

    Attributes:
        state: the :class:`MapState` (current maps); values: ``{group: merge value}``; history: per sweep
        ``{"sweep", "value", "best", "improved"}``; timing: ``{"similarity", "solve"}`` seconds.
    """

    def __init__(self, models: Sequence[nn.Module], spec: PermSpec, method: MethodInfo,
                 stats: Optional[ActivationStats], balance: float, reduce: float, alpha: float, beta: float,
                 backend: str, axis_rule: str, piece_cache: Optional[PieceCache] = None, tie_break: float = 1e-4,
                 zip_decay: str = "same-model", workers: int = 1):
        self.spec = spec
        self.method = method
        self.stats = stats
        self.n = len(models)
        self.balance, self.reduce, self.alpha, self.beta = float(balance), reduce, alpha, beta
        self.backend = backend
        self.tie_break = float(tie_break)
        self.zip_decay = zip_decay
        self.workers = max(1, int(workers))
        # tensors with a view (grouped convolutions, per-head tables) in the dense form the members address
        self.tensors = [dense_tensors(named_tensors(m), spec.views) for m in models]
        self.state = MapState(spec, self.n, axis_rule)
        self.coords = coordinates(spec)
        self.values: Dict[str, float] = {}
        self.history: List[dict] = []
        self.timing = {"similarity": 0.0, "solve": 0.0}
        self._ambiguity: Dict[str, bool] = {}
        native = choose("weight_similarity", backend, needs="ops") == "native"
        self.cache = (piece_cache if piece_cache is not None else PieceCache()) if native else None

    def weight_part(self, group: Group) -> torch.Tensor:
        """``Tensor[N·size, N·size]`` float32 weight similarity of ``group`` under the current maps."""
        pieces = self.state.pieces(group, self.tensors)
        if self.cache is None:
            return weight_similarity(pieces, backend="reference").float().cpu()
        keys = self.state.piece_keys(group, self.tensors)
        return weight_moments(pieces, self.cache, group.name, keys).correlation(1e-7, dtype=torch.float32).cpu()

    def _ambiguous(self, name: str, act: torch.Tensor) -> bool:
        """Whether the activation similarity of group ``name`` leaves its matching open: some unit's best match
        is tied (:func:`has_tied_maxima`). Decided once per group (the activation term does not change during the
        descent). A group with fewer samples than units is not open as such: its correlations are noisier, not
        tied, and the ties it can have (sparse units firing on the same few samples) are found by the test."""
        if name not in self._ambiguity:
            self._ambiguity[name] = has_tied_maxima(act, TIE_TOLERANCE)
        return self._ambiguity[name]

    def similarity(self, group: Group, mix: Optional[float]) -> torch.Tensor:
        """mix None: activation only; else ``mix·S_w + (1−mix)·S_act`` (S_w alone without activations).

        ``S_act`` is the activation correlation where it determines the matching: the rows and columns of units
        of (near) zero variance on the merge data (they correlate 0 with everything, their twins included) are
        their weight similarity, and a group whose activations leave the matching open (a unit whose best match is
        tied: units active on the same few samples correlate exactly 1 with each other, their twins included) gets
        ``tie_break·S_w`` added, so ties go to the most similar weights."""
        t0 = time.perf_counter()
        act = self.stats.correlation(group.name) if self.method.activations else None
        if act is not None and mix is not None and mix == 0.0:
            mix = None
        dead = self.stats.degenerate_units(group.name) if act is not None else None
        patch = dead is not None and dead.numel() > 0
        sw = self.weight_part(group) if act is None or mix is not None or patch else None
        if patch:
            act = act.clone()
            act[dead, :] = sw[dead, :]
            act[:, dead] = sw[:, dead]
        if act is not None and self.tie_break > 0 and self._ambiguous(group.name, act):
            act = act + self.tie_break * (sw if sw is not None else self.weight_part(group))
        s = sw if act is None else (act if mix is None else mix * sw + (1.0 - mix) * act)
        self.timing["similarity"] += time.perf_counter() - t0
        return s

    def solve(self, coord: List[Group], mix: Optional[float]) -> None:
        """Re-solve one coordinate on its current similarities and store its maps and values."""
        sims = {g.name: self.similarity(g, mix) for g in coord}
        t0 = time.perf_counter()
        results = self._solve_sims(coord, sims)
        self.timing["solve"] += time.perf_counter() - t0
        self._store(results)

    def _solve_sims(self, coord: List[Group], sims: Dict[str, torch.Tensor]) -> Dict[str, MatchResult]:
        return solve_coordinate(coord, sims, self.n, self.method.solver, self.reduce, self.alpha, self.beta,
                                self.backend, self.zip_decay)

    def _store(self, results: Dict[str, MatchResult]) -> None:
        for name, r in results.items():
            self.state.maps[name] = r
            self.values[name] = float(r.merge_value)

    def _reads_maps(self, group: Group) -> bool:
        """Whether the activation-only similarity of ``group`` reads the maps of other groups (its weight
        similarity does: no taps, dead units, or a tie-break)."""
        t0 = time.perf_counter()
        act = self.stats.correlation(group.name)
        reads = (act is None or self.stats.degenerate_units(group.name).numel() > 0
                 or (self.tie_break > 0 and self._ambiguous(group.name, act)))
        self.timing["similarity"] += time.perf_counter() - t0
        return reads

    def _initial_concurrent(self, release: bool) -> None:
        """The activation-only matching with up to ``workers`` solves at once, results stored in coordinate
        order; a coordinate whose similarity reads maps first waits for every earlier solve."""
        from concurrent.futures import ThreadPoolExecutor

        pending: List[tuple] = []

        def finish(count: int) -> None:
            t0 = time.perf_counter()
            while len(pending) > count:
                coord, future = pending.pop(0)
                self._store(future.result())
                if release:
                    for g in coord:
                        self.stats.release(g.name)
            self.timing["solve"] += time.perf_counter() - t0

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            try:
                for coord in self.coords:
                    finish(0 if any(self._reads_maps(g) for g in coord) else self.workers - 1)
                    sims = {g.name: self.similarity(g, None) for g in coord}
                    pending.append((coord, pool.submit(self._solve_sims, coord, sims)))
                    del sims
                finish(0)
            finally:
                for _, future in pending:
                    future.cancel()

    def initial_maps(self) -> None:
        """Identity maps for ``avg``; the activation-only matching for the activation methods (whose statistics
        are released coordinate by coordinate when they are transient and no descent follows)."""
        if self.method.solver is None:
            for g in self.spec.groups:
                lab = np.tile(np.arange(g.size, dtype=np.int64), self.n)
                self.state.maps[g.name] = MatchResult(lab, g.size, 1.0)
                self.values[g.name] = 1.0
        elif self.method.activations:
            release = self.stats.transient and not self.method.descent  # nothing reads these statistics again
            if self.workers > 1:
                self._initial_concurrent(release)
                return
            for coord in self.coords:
                self.solve(coord, None)
                if release:
                    for g in coord:
                        self.stats.release(g.name)

    def sweep(self, order: Sequence[int], mix: Optional[float]) -> float:
        """Visit the coordinates in ``order``; the mean merge value over groups afterwards."""
        for c in order:
            self.solve(self.coords[c], mix)
        return float(np.mean([self.values[g.name] for g in self.spec.groups]))

    def run(self, max_sweeps: int, patience: int, seed: int, progress: bool = False) -> None:
        """The coordinate descent (module docstring); leaves the best snapshot's maps and values."""
        mix = self.balance if self.method.activations else None
        gen = torch.Generator().manual_seed(int(seed))
        best: Optional[Dict[str, MatchResult]] = None
        best_values: Dict[str, float] = {}
        best_value = -math.inf
        stall = 0
        bar = progress_bar(range(int(max_sweeps)), progress, desc=f"mudsc {self.method.name}", leave=False)
        for sweep in bar:
            value = self.sweep(torch.randperm(len(self.coords), generator=gen).tolist(), mix)
            improved = best is None or value > best_value
            if improved:
                best, best_values, best_value, stall = dict(self.state.maps), dict(self.values), value, 0
            else:
                stall += 1
                self.state.maps = dict(best)
                self.values = dict(best_values)
            self.history.append({"sweep": sweep, "value": value, "best": best_value, "improved": improved})
            if stall >= patience:
                break
        self.state.maps = dict(best)
        self.values = dict(best_values)

    def maps(self) -> Dict[str, MatchResult]:
        """The current maps, as plain int64 :class:`MatchResult` s with their merge values."""
        return {name: MatchResult(np.asarray(r.labels, dtype=np.int64), int(r.num_outputs), float(self.values[name]))
                for name, r in self.state.maps.items()}

    def info(self, fallback: List[str]) -> dict:
        """The plan's ``info``: history, sweeps, fallback groups, timing, piece counters, merge value."""
        pieces = self.cache.counters() if self.cache is not None else {"computed": None, "reused": None,
                                                                        "updated": None}
        return {"history": self.history, "sweeps": len(self.history), "fallback_groups": fallback,
                "timing": self.timing, "weight_pieces": pieces,
                "merge_value": float(np.mean(list(self.values.values()))) if self.values else self._empty_value()}

    def _empty_value(self) -> float:
        """The merge value of a spec without groups: 1.0 for ``avg`` (identity maps, as each of its groups would
        have), else 0.0."""
        return 1.0 if self.method.solver is None else 0.0


def _check_stats(method: MethodInfo, stats, spec: PermSpec, n: int) -> None:
    """Activation methods need statistics of these N models under this spec."""
    if not method.activations:
        return
    if stats is None:
        raise ValueError(f"method {method.name!r} uses activation statistics: pass stats=collect_stats(...)")
    if stats.num_models != n:
        raise ValueError(f"stats were collected for {stats.num_models} models, got {n} models")
    if stats.spec.to_dict() != spec.to_dict():
        raise ValueError("stats were collected with a different spec than the one given")


def match(
    models: Sequence[nn.Module],
    spec: PermSpec,
    method: str = "mudsc-zip",
    stats: Optional[ActivationStats] = None,
    balance: float = 0.5,
    reduce: Optional[float] = None,
    alpha: float = 0.5,
    beta: float = 1.0,
    max_sweeps: int = 100,
    patience: int = 5,
    seed: int = 0,
    backend: str = "auto",
    progress: bool = True,
    axis_rule: str = "merge",
    piece_cache: Optional[PieceCache] = None,
    tie_break: float = 1e-4,
    zip_decay: str = "same-model",
) -> MergePlan:
    """Per-group unit maps of N models by ``method`` (see :mod:`mudsc.methods`): a :class:`mudsc.MergePlan`.

    Args:
        models: N >= 2 models of one architecture (only their weights are read).
        spec: their :class:`mudsc.PermSpec`.
        method: one of ``METHODS``.
        stats: :func:`collect_stats` output; required by the activation methods and reused unchanged (a
            balance sweep calls ``match(..., stats=stats, balance=b)`` repeatedly).
        balance: weight of the weight-space term in MuDSC's ``S = balance·S_w + (1−balance)·S_act`` (0..1).
        reduce, alpha, beta: zip parameters (:func:`mudsc.zip_match`): fraction of units removed (default
            ``1 - 1/N``: the merged width equals one model's), similarity decay of merged units, within-model
            budget.
        zip_decay: which merged similarities the zip decays by ``alpha`` (:func:`mudsc.zip_match`'s ``decay``):
            ``"same-model"`` (default; exact self-merges for every N) or ``"every-merge"`` (ZipIt!'s rule; the
            same for N = 2).
        max_sweeps, patience, seed: coordinate descent limits and the seed of its group order.
        backend: of every solver and similarity call.
        progress: a tqdm bar over the sweeps.
        axis_rule: ``"merge"`` (default) or ``"original"``: how other groups' maps enter weight vectors
            (:mod:`mudsc.methods.weights`).
        piece_cache: the :class:`mudsc.PieceCache` of the native weight similarity (default: a new one per call;
            ``PieceCache(reuse=False)`` recomputes every piece).
        tie_break: in a group whose activations leave the matching open (a tied best match: sparse units
            correlate exactly 1 with each other), ``tie_break·S_w`` is added to the
            activation similarity, so that ties go to the most similar weights; 0 turns it off. Units
            constant on the merge data always take their weight similarity.

    The plan's ``info`` holds ``history`` (per sweep: value, best value, improved), ``sweeps``,
    ``fallback_groups``, ``weight_pieces`` and ``timing`` (``similarity`` and ``solve`` seconds).
    """
    info_m = check_method(method)
    models = check_models(models)
    reduce = default_reduce(len(models)) if reduce is None else reduce
    check_hyperparameters(balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule, zip_decay)
    check_finite_weights(models)
    if not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    _check_stats(info_m, stats, spec, len(models))
    if not isinstance(tie_break, numbers.Real) or not 0.0 <= float(tie_break) <= 1e-2:
        raise ValueError(f"tie_break must be a number in [0, 0.01] (a tie-breaker, not a weight), got {tie_break!r}")
    return run_matching(models, spec, info_m, stats, balance, reduce, alpha, beta, max_sweeps, patience, seed,
                        backend, progress, axis_rule, piece_cache, tie_break, zip_decay)


def run_matching(models: List[nn.Module], spec: PermSpec, info_m: MethodInfo, stats: Optional[ActivationStats],
                 balance: float, reduce: float, alpha: float, beta: float, max_sweeps: int, patience: int, seed: int,
                 backend: str, progress: bool, axis_rule: str, piece_cache: Optional[PieceCache] = None,
                 tie_break: float = 1e-4, zip_decay: str = "same-model", workers: int = 1) -> MergePlan:
    """:func:`match` on arguments already checked (by :func:`match`, or by :func:`mudsc.merge`, which checks the
    models and their weights once before the statistics pass); only the spec's members are checked here."""
    tensors = named_tensors(models[0])
    for g in spec.groups:
        for mem in g.members:
            if mem.name not in tensors:
                raise ValueError(f"group {g.name!r} names {mem.name!r}, which is not a parameter or buffer of the "
                                 "models")
    descent = Descent(models, spec, info_m, stats, balance, reduce, alpha, beta, backend, axis_rule, piece_cache,
                      tie_break, zip_decay, workers)
    fallback = [g.name for g in spec.groups if not stats.has_taps(g.name)] if info_m.activations else []
    descent.initial_maps()
    if info_m.descent:
        descent.run(max_sweeps, patience, seed, progress)
    hyper = {"balance": float(balance), "reduce": float(reduce), "alpha": float(alpha), "beta": float(beta),
             "zip_decay": zip_decay,
             "max_sweeps": int(max_sweeps), "patience": int(patience), "seed": int(seed), "axis_rule": axis_rule,
             "backend": backend}
    return MergePlan(spec=spec, maps=descent.maps(), num_models=len(models), method=info_m.name,
                     hyperparameters=hyper, fingerprints=[fingerprint(m) for m in models], info=descent.info(fallback))
