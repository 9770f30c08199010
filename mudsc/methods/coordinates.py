"""Coordinates of the descent: a group, or the groups of one head tie solved together (ALGORITHM.md §8.1.12).

Groups sharing a ``block_tie`` (a ViT block's q/k and v/o) form **one coordinate**: they are solved together
with one head pairing. For every model i >= 1 and every group of the tie, the g×g matrix of mean matched
similarities of head blocks (model 0 head j × model i head k, Og×Og LAPs) is computed; the matrices of the tied
groups are summed and one outer LAP gives the pairing. Each group's similarity then gets a large negative
constant on the model-0 × model-i head blocks outside the pairing, which forces the group solvers (inner LAPs, or
per-head-set zips) to use it, so the result is "group solver with this head pairing". The original's independent
q/k and v/o head matching is available by tracing with ``mudsc.trace(..., share_heads=False)`` (no ties; that
spec is not function-preserving).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from ..lap import batch_linear_sum_assignment, linear_sum_assignment
from ..maps import MatchResult
from ..matching import group_permute_match, group_zip_match, permute_match, zip_match
from ..spec import Group, PermSpec

__all__ = ["coordinates", "solve_coordinate", "solve_group"]

_HEAD_PENALTY = -1.0e4  # below any correlation mix (|S| <= 1): forbids head pairs outside the joint pairing


def _block_scores(sim: np.ndarray, n: int, g: int, model: int, backend: str) -> np.ndarray:
    """``float32[g, g]``: mean matched similarity of head j of model 0 against head k of ``model`` (Og² LAPs)."""
    om = sim.shape[0] // n
    og = om // g
    block = sim[:om, model * om:(model + 1) * om].astype(np.float64)
    blocks = np.ascontiguousarray(block.reshape(g, og, g, og).transpose(0, 2, 1, 3).reshape(g * g, og, og))
    cols = np.asarray(batch_linear_sum_assignment(blocks, maximize=True, backend=backend))
    matched = np.take_along_axis(blocks, cols[:, :, None], axis=2)[:, :, 0]
    return matched.mean(axis=1).astype(np.float32).reshape(g, g)


def _joint_head_pairing(sims: Sequence[np.ndarray], n: int, g: int, backend: str) -> List[np.ndarray]:
    """One head pairing per model i >= 1 (``pairing[i-1][j]`` = head of model i paired with model 0's head j),
    maximising the sum over the tied groups of the mean matched block similarities."""
    out = []
    for i in range(1, n):
        total = sum(_block_scores(s, n, g, i, backend).astype(np.float64) for s in sims)
        _, cols = linear_sum_assignment(total, maximize=True, backend=backend)
        out.append(np.asarray(cols, dtype=np.int64))
    return out


def _restrict_to_pairing(sim: np.ndarray, n: int, g: int, pairing: List[np.ndarray]) -> np.ndarray:
    """``sim`` with ``_HEAD_PENALTY`` on the model-0 × model-i head blocks outside ``pairing`` (both triangles)."""
    s = np.array(sim, dtype=np.float32, copy=True)
    om = s.shape[0] // n
    og = om // g
    for i, cols in enumerate(pairing, 1):
        forbid = np.ones((g, g), dtype=bool)
        forbid[np.arange(g), cols] = False
        big = np.kron(forbid, np.ones((og, og), dtype=bool))
        block = s[:om, i * om:(i + 1) * om]
        block[big] = _HEAD_PENALTY
        s[i * om:(i + 1) * om, :om] = block.T
    return s


def solve_group(group: Group, sim: np.ndarray, n: int, solver: str, reduce, alpha, beta, backend,
                 decay: str = "same-model") -> MatchResult:
    """One group's map: LAP alignment or zip, in the group form when it has blocks (heads, GN groups)."""
    if solver == "lap":
        if group.num_blocks > 1:
            return group_permute_match(sim, n, group.num_blocks, backend=backend)
        return permute_match(sim, n, backend=backend)
    if group.num_blocks > 1:
        return group_zip_match(sim, n, group.num_blocks, reduce, alpha, beta, decay=decay, backend=backend)
    return zip_match(sim, n, reduce, alpha, beta, decay=decay, backend=backend)


def solve_coordinate(groups: List[Group], sims: Dict[str, torch.Tensor], n: int, solver: str, reduce, alpha, beta,
                      backend: str, decay: str = "same-model") -> Dict[str, MatchResult]:
    """The maps of one coordinate's groups from their similarities (one joint head pairing when tied); ``decay``
    is the zip's decay rule (:func:`mudsc.zip_match`)."""
    arrays = {g.name: np.ascontiguousarray(sims[g.name].detach().cpu().numpy().astype(np.float32, copy=False))
              for g in groups}
    if len(groups) > 1:
        g = groups[0].num_blocks
        pairing = _joint_head_pairing([arrays[x.name] for x in groups], n, g, backend)
        arrays = {name: _restrict_to_pairing(a, n, g, pairing) for name, a in arrays.items()}
    return {grp.name: solve_group(grp, arrays[grp.name], n, solver, reduce, alpha, beta, backend, decay)
            for grp in groups}


def coordinates(spec: PermSpec) -> List[List[Group]]:
    """Groups in spec order; groups with one ``block_tie`` (and equal block counts) form one coordinate."""
    coords: List[List[Group]] = []
    by_tie: Dict[str, List[Group]] = {}
    for g in spec.groups:
        if g.block_tie is not None and g.num_blocks > 1:
            if g.block_tie in by_tie:
                if by_tie[g.block_tie][0].num_blocks != g.num_blocks:
                    raise ValueError(f"groups tied by {g.block_tie!r} have different block counts "
                                     f"({by_tie[g.block_tie][0].num_blocks} and {g.num_blocks})")
                by_tie[g.block_tie].append(g)
                continue
            by_tie[g.block_tie] = [g]
            coords.append(by_tie[g.block_tie])
        else:
            coords.append([g])
    return coords
