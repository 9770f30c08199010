"""Reference matchers (ALGORITHM.md §4), written for clarity, the way the original code works.

Every function takes a validated, exactly symmetric similarity ``sim[O, O]`` (float32 or float64 numpy, model-major:
rows ``i·Om … (i+1)·Om−1`` are model i's units) and returns ``(labels[O], num_outputs, merge_value)`` where
``labels[u]`` is the output unit of input unit ``u``. Arithmetic happens in the dtype of ``sim``.

Deviations from the original code, each deliberate:

- ``zip_match``: when every remaining pair is forbidden (``-inf``) before the target width is reached, the original
  takes index 0 and corrupts its state; here it raises ``ValueError``. With ``alpha <= 0`` the original's ban
  branch slices the compacted matrix by model offsets (wrong after the first deletion, unused in the paper); here
  ``alpha <= 0`` means a decayed pair never merges (its entry becomes ``-inf``).
- ``zip_match`` / ``group_zip_match`` with ``decay="same-model"`` (the default): the decay applies only towards
  clusters whose union with the merged one holds two units of one model. For N = 2 this is every merge, as in
  the original; for N >= 3 it keeps the N twins of a unit together. ``decay="every-merge"`` is the original.
- ``group_permute_match``: the block score ``G[j, k]`` is the mean of the matched values accumulated in float64
  and rounded to float32 (the original takes a float32 numpy mean); scipy solves the LAPs, as in the original.
- No merge happens (``num_outputs == O``): ``merge_value`` is 0.0 (the original's mean of nothing is NaN).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import scipy.optimize
import torch

from .._arrays import check_finite_for_reference

__all__ = ["zip_match", "group_zip_match", "permute_match", "group_permute_match"]

NEG_INF = -np.inf


def zip_target_width(num_units: int, reduce: float) -> int:
    """K = floor(O·(1 − reduce) + 1e-4): units left after zipping ``num_units`` units."""
    return int(math.floor(num_units * (1.0 - reduce) + 1e-4))


def zip_model_budget(num_units: int, num_models: int, width: int, beta: float) -> int:
    """Within-model merges allowed per model: floor(floor((O − K)/N)·β + 1e-4)."""
    return int(math.floor(math.floor((num_units - width) / num_models) * beta + 1e-4))


def _first_maximum(s: torch.Tensor, merges: int, what: str, units: int, target: int) -> tuple[int, int, float]:
    """(lo, hi, value) of the first maximum of ``s`` in row-major order (symmetric: lo < hi); ValueError when
    every entry is -inf."""
    flat = int(torch.argmax(s))
    x, y = divmod(flat, s.shape[1])
    value = float(s[x, y])
    if value == NEG_INF:
        raise ValueError(
            f"{what}: after {merges} merges every remaining pair of units is forbidden (-inf); "
            f"cannot reduce {units} units to {target}"
        )
    return min(x, y), max(x, y), value


def _merge_pair(s: torch.Tensor, lo: int, hi: int, alpha: float, counts: Optional[torch.Tensor] = None):
    """Unit ``lo`` absorbs ``hi``: its row and column become ``alpha·min`` of both (``-inf`` when alpha <= 0),
    then row and column ``hi`` are cut out (a compacting copy, as the original does).

    ``counts`` (decay ``"same-model"``): ``[units, N]`` members per model of each surviving cluster, compacted
    alongside ``s`` (the new counts are returned). The decay then applies only towards the clusters whose union
    with the merged one holds two units of one model; towards the others the entry is the plain ``min``.
    Returns ``(s, counts)``."""
    merged = torch.minimum(s[:, lo], s[:, hi])  # stays in s.dtype
    if counts is None:
        decays = torch.ones_like(merged, dtype=torch.bool)
    else:
        counts[lo] += counts[hi]
        decays = ((counts + counts[lo]) > 1).any(dim=1)
    decayed = alpha * merged if alpha > 0 else torch.full_like(merged, NEG_INF)
    merged = torch.where(decays, decayed, merged)
    s[:, lo] = merged
    s[lo, :] = merged
    s[lo, lo] = NEG_INF
    keep = torch.cat([torch.arange(hi), torch.arange(hi + 1, s.shape[0])])
    return s[keep][:, keep], (None if counts is None else counts[keep])


def _model_counts(origin: list, num_models: int, decay: str) -> Optional[torch.Tensor]:
    """The per-model member counts of singleton clusters for decay ``"same-model"`` (None: every merge
    decays)."""
    if decay == "every-merge":
        return None
    counts = torch.zeros(len(origin), num_models, dtype=torch.long)
    counts[torch.arange(len(origin)), torch.tensor(origin, dtype=torch.long)] = 1
    return counts


def _spend(budget: list, labels: list, label: int, s: torch.Tensor) -> None:
    """One merge inside ``label``'s units: spend its budget; at <= 0 forbid every pair among them."""
    budget[label] -= 1
    if budget[label] <= 0:
        idx = torch.tensor([q for q, v in enumerate(labels) if v == label], dtype=torch.long)
        s[idx.unsqueeze(1), idx] = NEG_INF


def zip_match(sim: np.ndarray, num_models: int, reduce: float = 0.5, alpha: float = 0.5, beta: float = 1.0,
              decay: str = "same-model"):
    """ZipIt!'s greedy zip (ALGORITHM.md §4.c): repeatedly merge the most similar pair of surviving units.

    The first maximiser in row-major order over the surviving units (ascending original index) is merged; the
    lower index survives and keeps its model label; its similarities become ``alpha·min`` of the two merged rows
    (decay ``"every-merge"``, ZipIt!'s rule) or, with ``"same-model"``, ``alpha·min`` towards the clusters whose
    union with it holds two units of one model and ``min`` towards the others;
    merging two units of one model spends that model's budget, and an exhausted budget forbids all pairs among
    the model's surviving units. Output units are the survivors in ascending original index.

    Written with torch tensor ops on the CPU as the original is (full-matrix argmax and a compacting copy per
    merge, a host read of the chosen pair): Θ(O³) work.
    """
    s = torch.from_numpy(np.array(sim, copy=True))
    o = s.shape[0]
    om = o // num_models
    k_target = zip_target_width(o, reduce)
    s.fill_diagonal_(NEG_INF)
    alive = list(range(o))  # original index of each row/column of the compacted matrix
    origin = [u // om for u in alive]  # model label of each surviving unit
    members = {u: [u] for u in alive}
    counts = _model_counts(origin, num_models, decay)
    budget = [zip_model_budget(o, num_models, k_target, beta)] * num_models
    values = []
    while len(alive) > k_target:
        lo, hi, value = _first_maximum(s, len(values), "zip_match", o, k_target)
        values.append(value)
        members[alive[lo]].extend(members.pop(alive[hi]))
        s, counts = _merge_pair(s, lo, hi, alpha, counts)
        same_model = origin[lo] == origin[hi]
        del alive[hi]
        del origin[hi]
        if same_model:
            _spend(budget, origin, origin[lo], s)
    labels = np.empty(o, dtype=np.int64)
    for k, survivor in enumerate(alive):
        labels[members[survivor]] = k
    return labels, k_target, float(np.mean(values)) if values else 0.0


def group_zip_match(
    sim: np.ndarray, num_models: int, groups: int, reduce: float = 0.5, alpha: float = 0.5, beta: float = 1.0,
    decay: str = "same-model",
):
    """Group zip (ALGORITHM.md §4.d) for heads / GroupNorm groups, the original's way (torch, full matrix).

    Heads of every model are paired with model 0's heads by :func:`group_permute_match`'s head assignment. Then,
    for each model-0 head j in order, the greedy zip of §4.c runs on ``S + mask`` (mask 0 on the units whose
    current group label is one of head-set j's groups, -inf elsewhere) for exactly ``Og·N − R`` merges, where
    R = floor(Og·N·(1 − reduce) + 1e-4) units survive per head-set. On top of the model budgets, each group has a
    budget of floor((O − K)/(N·groups) + 1e-4) merges inside it; exhausting it forbids all pairs inside it.
    Outputs: head-set by head-set, in the listed group order (model 0's head first), then ascending position.
    """
    o = sim.shape[0]
    om = o // num_models
    og = om // groups
    ng = num_models * groups
    remainder = zip_target_width(og * num_models, reduce)
    k_target = groups * remainder
    # 1. Head pairing: pair[j] = group ids (model-major: model i, head h -> i·groups + h) of head-set j.
    pair = [[j] for j in range(groups)]
    for i in range(1, num_models):
        cols, _ = _group_align_block(sim[:om, i * om : (i + 1) * om], groups)
        for j in range(groups):
            pair[j].append(i * groups + int(cols[j * og]) // og)
    # 2. Budgets.
    budget = [zip_model_budget(o, num_models, k_target, beta)] * num_models
    head_budget = [int(math.floor((o - k_target) / ng + 1e-4))] * ng
    # 3. Greedy zip per head-set on the full compacted matrix.
    s = torch.from_numpy(np.array(sim, copy=True))
    s.fill_diagonal_(NEG_INF)
    alive = list(range(o))
    origin = [u // om for u in alive]
    group_id = [u // og for u in alive]
    members = {u: [u] for u in alive}
    counts = _model_counts(origin, num_models, decay)
    values = []
    for j in range(groups):
        for _ in range(og * num_models - remainder):
            allowed = torch.tensor([0.0 if gid in pair[j] else NEG_INF for gid in group_id], dtype=s.dtype)
            masked = s + allowed[:, None] + allowed[None, :]
            lo, hi, value = _first_maximum(masked, len(values), "group_zip_match", o, k_target)
            values.append(value)
            members[alive[lo]].extend(members.pop(alive[hi]))
            s, counts = _merge_pair(s, lo, hi, alpha, counts)
            same_model = origin[lo] == origin[hi]
            same_group = group_id[lo] == group_id[hi]
            del alive[hi], origin[hi], group_id[hi]
            if same_model:
                _spend(budget, origin, origin[lo], s)
            if same_group:
                _spend(head_budget, group_id, group_id[lo], s)
    # 4. Output order: head-set by head-set, listed group order, then position.
    labels = np.empty(o, dtype=np.int64)
    out = 0
    for j in range(groups):
        for gid in pair[j]:
            for q, survivor in enumerate(alive):
                if group_id[q] == gid:
                    labels[members[survivor]] = out
                    out += 1
    return labels, k_target, float(np.mean(values)) if values else 0.0


def permute_match(sim: np.ndarray, num_models: int):
    """Alignment (ALGORITHM.md §4.a): each model i >= 1 is matched to model 0 by one maximising LAP on the block
    ``sim[model 0, model i]``; output unit k is model 0's unit k. merge_value = mean over i of the mean matched
    similarity."""
    o = sim.shape[0]
    om = o // num_models
    labels = np.empty(o, dtype=np.int64)
    labels[:om] = np.arange(om)
    means = []
    for i in range(1, num_models):
        block = sim[:om, i * om : (i + 1) * om]
        check_finite_for_reference(block, maximize=True)
        rows, cols = scipy.optimize.linear_sum_assignment(block, maximize=True)
        labels[i * om + cols] = rows
        means.append(float(block[rows, cols].astype(np.float64).mean()))
    return labels, om, float(np.mean(means)) if means else 0.0


def _group_align_block(block: np.ndarray, groups: int):
    """§4.b on one block model 0 x model i: ``(col_of_row[Om], mean of G[j, k(j)])``."""
    om = block.shape[0]
    og = om // groups
    check_finite_for_reference(block, maximize=True)
    score = np.empty((groups, groups), dtype=np.float32)
    inner = {}
    for j in range(groups):
        for k in range(groups):
            sub = block[j * og : (j + 1) * og, k * og : (k + 1) * og]
            rows, cols = scipy.optimize.linear_sum_assignment(sub, maximize=True)
            score[j, k] = np.float32(sub[rows, cols].astype(np.float64).sum() / og)
            inner[j, k] = cols
    outer_rows, outer_cols = scipy.optimize.linear_sum_assignment(score, maximize=True)
    col_of_row = np.empty(om, dtype=np.int64)
    for j, k in zip(outer_rows, outer_cols):
        col_of_row[j * og : (j + 1) * og] = k * og + inner[j, k]
    return col_of_row, float(score[outer_rows, outer_cols].astype(np.float64).mean())


def group_permute_match(sim: np.ndarray, num_models: int, groups: int):
    """Hierarchical group alignment (ALGORITHM.md §4.b) for head / GroupNorm structure.

    For each model i >= 1: the block ``sim[model 0, model i]`` is cut into ``groups × groups`` sub-blocks of
    ``Og × Og``; every sub-block (j, k) gets a maximising LAP scored by its mean matched value ``G[j, k]``; one
    outer LAP on G pairs model 0's group j with model i's group k(j); unit ``j·Og + t`` of model 0 is matched to
    unit ``k(j)·Og + inner(t)`` of model i. merge_value = mean over i of the mean of ``G[j, k(j)]``.
    """
    o = sim.shape[0]
    om = o // num_models
    labels = np.empty(o, dtype=np.int64)
    labels[:om] = np.arange(om)
    values = []
    for i in range(1, num_models):
        cols, value = _group_align_block(sim[:om, i * om : (i + 1) * om], groups)
        labels[i * om + cols] = np.arange(om)
        values.append(value)
    return labels, om, float(np.mean(values)) if values else 0.0
