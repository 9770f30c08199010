"""How many batches the statistics pass and the BatchNorm reset read: the adaptive sample count.

Both stop when reading more data stops changing what they compute, judged at checkpoints after 1, 2, 4, 8, ...
batches (each one compares the estimate with the one of half as many batches):

- :class:`StableMatching` (the statistics pass): at a checkpoint every group still collecting gets its map from
  its correlation so far, by the solver the method starts from (``solve``: the zip or the LAP alignment). The
  group stops collecting (its statistics are frozen, the later batches skip it) once the map found on half the
  batches is nearly as good, on the current correlation, as the map found on all of them: its *regret*, the
  mean correlation of the merged unit pairs lost by keeping the earlier map (:func:`pair_value`), is at most
  ``tol``. A group with fewer samples than units never stops early (its correlation is rank-deficient). The pass
  ends when every group has stopped. A group's decision reads only its own statistics, so splitting the groups
  over several passes (the memory plan) stops each group at the same batch.
- :class:`StableNorms` (the BatchNorm reset): stops once no channel's running mean moved by more than ``tol``
  of its running standard deviation, and no running standard deviation by more than ``tol`` relative, across
  the last doubling.

Neither rule stops before :data:`MIN_SAMPLES` loader items (a smaller loader is read whole): the comparisons at the
first checkpoints judge maps of a few dozen images.

The labels compared are those of the activation-only solve, the start of every activation method (the descent of
``mudsc-*`` adds the weight term on top); how good a map is, not whether its labels changed, decides, because many
units of a trained network are near ties whose labels swap between samples without changing the merged model.
The records behind the default tolerances are in ``docs/design.md``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ["MATCH_TOL", "MIN_SAMPLES", "NORM_TOL", "StableMatching", "StableNorms", "check_tolerance", "checkpoint",
           "pair_value"]

MATCH_TOL = 0.01  # regret, in correlation units, a group may lose by stopping early
NORM_TOL = 0.05  # BatchNorm running statistics' drift across a doubling, in standard deviations
# loader items (images) both rules read before they may stop: on issue 17's pair, stopping after 128 of 512 images
# (the regret of a 64-image map judged on 128) moved mudsc-align's joint accuracy by up to 5 points against the
# whole loader's (scripts/deviation_study.py); a loader with fewer items is read whole
MIN_SAMPLES = 500


def check_tolerance(tol, what: str = "sample_tol") -> float:
    """``tol`` as a float; ValueError unless it is a real number >= 0."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not tol >= 0:
        raise ValueError(f"{what} must be a number >= 0, got {tol!r}")
    return float(tol)


def checkpoint(batches: int) -> bool:
    """Whether a stopping rule looks at the statistics after ``batches`` batches: 1, 2, 4, 8, ..."""
    return batches >= 1 and batches & (batches - 1) == 0


def _pairs(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(u, v)``: every pair ``u < v`` of units with the same label."""
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    sizes = np.diff(np.r_[starts, labels.size])
    us, vs = [], []
    for k in np.unique(sizes):
        if k < 2:
            continue
        members = order[starts[sizes == k][:, None] + np.arange(k)]  # [clusters of size k, k]
        for i, j in combinations(range(int(k)), 2):
            us.append(members[:, i])
            vs.append(members[:, j])
    if not us:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(us), np.concatenate(vs)


def pair_value(labels: np.ndarray, sim: np.ndarray) -> float:
    """Mean similarity ``sim[u, v]`` over the pairs of units a map merges (same label); 0 when it merges none."""
    u, v = _pairs(labels)
    return float(np.asarray(sim[u, v], dtype=np.float64).mean()) if u.size else 0.0


class StableMatching:
    """The statistics pass's stopping rule (module docstring).

    Args:
        solve: ``solve(group name, float32 correlation [F, F] as numpy) -> int labels [F]``.
        tol: the regret a group may lose by stopping (correlation units).
        min_samples: no group stops before this many loader items were read (when :meth:`update` is told them).

    :meth:`update` is called by :func:`mudsc.collect_stats` after every batch with the groups still collecting.

    Attributes:
        stopped_at: ``{group: batches}`` of the groups that stopped early.
        history: ``{group: [(batches, regret), ...]}`` of every comparison made.
        checks: the solves run.
    """

    def __init__(self, solve: Callable[[str, np.ndarray], np.ndarray], tol: float = MATCH_TOL,
                 min_samples: int = MIN_SAMPLES):
        self.solve = solve
        self.tol = check_tolerance(tol)
        self.min_samples = min_samples
        self.stopped_at: Dict[str, int] = {}
        self.history: Dict[str, List[Tuple[int, float]]] = {}
        self.checks = 0
        self._labels: Dict[str, np.ndarray] = {}

    def update(self, batches: int, accumulators: Dict[str, object], total: Optional[int] = None,
               samples: Optional[int] = None) -> Set[str]:
        """The groups of ``accumulators`` (``{name: CorrelationAccumulator}``, still collecting) that stop after
        ``batches`` batches (``samples`` loader items; None: not counted) of a pass of ``total`` (None: unknown).
        Nothing is solved where nothing can be saved: off a checkpoint, at the pass's last batch, before half of
        :attr:`min_samples` (a map compared at the next checkpoint could not stop), and for a first map whose
        comparison would come at the end."""
        if not checkpoint(batches) or (total is not None and batches >= total):
            return set()
        if samples is not None and 2 * samples < self.min_samples:
            return set()
        may_stop = samples is None or samples >= self.min_samples
        needed_later = total is None or 2 * batches < total
        stop = set()
        for name, acc in accumulators.items():
            earlier = self._labels.pop(name, None)
            compare = earlier is not None and acc.num_positions >= acc.num_features
            # kept for the next checkpoint only if the group can be determined by then (batches of equal size)
            keep = needed_later and 2 * acc.num_positions >= acc.num_features
            if not (compare or keep):
                continue
            sim = acc.correlation(dtype=torch.float32).cpu().numpy()
            acc.clear_cache()
            labels = np.asarray(self.solve(name, sim))
            self.checks += 1
            if compare:
                regret = pair_value(labels, sim) - pair_value(earlier, sim)
                self.history.setdefault(name, []).append((batches, regret))
                if regret <= self.tol and may_stop:
                    self.stopped_at[name] = batches
                    stop.add(name)
                    continue
            if keep:
                self._labels[name] = labels
        return stop


class StableNorms:
    """The BatchNorm reset's stopping rule (module docstring) over ``norms``' running statistics."""

    def __init__(self, norms: List[nn.modules.batchnorm._BatchNorm], tol: float = NORM_TOL,
                 min_samples: int = MIN_SAMPLES):
        self.norms = [m for m in norms if m.running_mean is not None and m.running_var is not None]
        self.tol = check_tolerance(tol, "tol")
        self.min_samples = min_samples
        self.drift: List[Tuple[int, float]] = []
        self._earlier: Optional[list] = None

    def update(self, batches: int, samples: Optional[int] = None) -> bool:
        """Whether the reset may stop after ``batches`` batches (``samples`` loader items; None: not counted, no
        floor); never before :attr:`min_samples` items."""
        if not checkpoint(batches) or not self.norms:
            return False
        if samples is not None and 2 * samples < self.min_samples:
            return False
        now = [(m.running_mean.detach().clone(), m.running_var.detach().clone(), m.eps) for m in self.norms]
        earlier, self._earlier = self._earlier, now
        if earlier is None:
            return False
        drift = 0.0
        for (mean, var, eps), (mean0, var0, _) in zip(now, earlier):
            std = (var.double() + eps).sqrt()
            shift = ((mean.double() - mean0.double()).abs() / std).max()
            scale = ((var0.double() + eps).sqrt() - std).abs().div(std).max()
            for value in (float(shift), float(scale)):
                drift = max(drift, value) if np.isfinite(value) else float("inf")
        self.drift.append((batches, drift))
        return drift <= self.tol and (samples is None or samples >= self.min_samples)
