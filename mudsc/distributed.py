"""Merging across processes (``torch.distributed``): each rank reads its own shard of the data, every statistic
is summed exactly over the ranks, and every rank ends with the same plan and the same merged model.

What :func:`mudsc.merge` does when a process group is in use (:func:`resolve_group`):

- **Checks agree first.** The argument checks, the trace and the width probe run on every rank inside one
  :class:`Collective` step: a rank that fails tells the others (each raises, naming the failed rank and its
  error, instead of waiting forever in the next collective), and the ranks compare what must be the same
  everywhere (the models' fingerprints, the spec, the method and its settings).
- **Statistics are summed.** Each rank runs the statistics pass over its shard; every group's accumulator is
  then ``all_reduce``-d (:meth:`mudsc.CorrelationAccumulator.all_reduce`: one common shift, float64 sums), so
  every rank holds the statistics of the union of the shards, identical bit for bit. The memory plan's budget is
  the smallest of the ranks', so every rank splits the groups into the same passes.
- **Solved everywhere, rank 0's plan kept.** Every rank runs the matching on its identical statistics (the solvers
  are deterministic, and a memory plan's later passes, which are collective, need every rank to reach them in
  the same order); then rank 0's maps are broadcast and used by all (:func:`share_plan`), with a warning should a
  rank have solved differently.
- **BatchNorm statistics are summed** (:func:`all_reduce_bn`): the reset's cumulative averages of per-batch
  statistics are weighted by each rank's batch count, which is what one process reading every shard computes.
- **The merged weights are rank 0's** (:func:`broadcast_model`), so they are identical on every rank.

The adaptive sample count (:mod:`mudsc.sampling`) is off under a process group: its stopping decisions would
need the global statistics at every checkpoint. Each rank reads its whole shard.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from .maps import MatchResult

__all__ = ["Collective", "RankFailure", "all_reduce_bn", "broadcast_model", "min_over_ranks", "resolve_group", "share_plan",
           "sum_over_ranks"]


def _dist():
    import torch.distributed as dist

    return dist


def resolve_group(process_group: Any = None) -> Optional[Any]:
    """The process group a merge runs over, or None for a one-process merge.

    ``None``: the default group when ``torch.distributed`` is initialized with more than one rank, else one
    process; ``False``: one process even then; a ``ProcessGroup``: that group (one of a single rank is one
    process). ValueError for a group given while ``torch.distributed`` is not initialized, TypeError for
    anything else."""
    if process_group is False:
        return None
    dist = _dist()
    initialized = dist.is_available() and dist.is_initialized()
    if process_group is None or process_group is True:
        if not initialized:
            if process_group is True:
                raise ValueError("process_group=True needs an initialized torch.distributed process group "
                                 "(torch.distributed.init_process_group, or a launch under torchrun)")
            return None
        group = dist.group.WORLD
    else:
        if not initialized:
            raise ValueError("a process_group was given, but torch.distributed is not initialized")
        if not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed ProcessGroup, None or False, got "
                            f"{type(process_group).__name__}")
        group = process_group
    return group if dist.get_world_size(group) > 1 else None


class RankFailure(RuntimeError):
    """Raised on the other ranks when one rank failed in a :class:`Collective` step (it names the rank and its
    error)."""


def rank_of(group: Optional[Any]) -> int:
    """This process's rank in ``group`` (0 for None)."""
    return 0 if group is None else _dist().get_rank(group)


def world_of(group: Optional[Any]) -> int:
    """The ranks in ``group`` (1 for None)."""
    return 1 if group is None else _dist().get_world_size(group)


def check_device(group: Optional[Any], device: torch.device) -> None:
    """ValueError when ``group``'s backend cannot reduce tensors on ``device`` (NCCL needs CUDA tensors)."""
    if group is None:
        return
    backend = str(_dist().get_backend(group)).lower()
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group's backend is NCCL, which reduces CUDA tensors only, but the statistics "
                         f"run on {device}: pass device='cuda:<local rank>' or use a gloo group")


class Collective:
    """A step every rank of ``group`` runs; on leaving it the ranks exchange how it went, in one collective.

    ``with Collective(group, "the checks") as step: ...; step.share(key=value)``: when the block raised on any
    rank, every rank raises (the failed rank its own error, the others a :class:`RankFailure` naming the rank and its
    error), so none waits in a later collective for a rank that is gone. Values given to :meth:`share` must be
    equal on every rank (compared as JSON): a difference raises ValueError on every rank, naming the rank and the
    key. With ``group=None`` it does nothing."""

    def __init__(self, group: Optional[Any], what: str):
        self.group = group
        self.what = what
        self.shared: dict = {}

    def share(self, **values: Any) -> None:
        """Values every rank must agree on (JSON-serialisable)."""
        self.shared.update(values)

    def __enter__(self) -> "Collective":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if self.group is None:
            return False
        if kind is not None and not issubclass(kind, Exception):
            return False  # KeyboardInterrupt and the like: leave at once
        mine = (None if exc is None else f"{type(exc).__name__}: {exc}", _digests(self.shared))
        everyone = [None] * world_of(self.group)
        _dist().all_gather_object(everyone, mine, group=self.group)
        failed = [(r, err) for r, (err, _) in enumerate(everyone) if err is not None]
        if exc is not None:
            return False  # this rank's own error propagates
        if failed:
            rank, err = failed[0]
            raise RankFailure(f"rank {rank} failed in {self.what}: {err}")
        reference = everyone[0][1]
        for rank, (_, digests) in enumerate(everyone):
            differing = sorted(k for k in set(reference) | set(digests) if reference.get(k) != digests.get(k))
            if differing:
                raise ValueError(f"rank {rank} differs from rank 0 in {', '.join(differing)} ({self.what}): every "
                                 "rank must merge the same models with the same arguments, each on its own data")
        return False


def _digests(values: dict) -> dict:
    """``{key: sha256 of the value as canonical JSON}``."""
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()
            for k, v in values.items()}


def min_over_ranks(value: int, group: Optional[Any]) -> int:
    """The smallest ``value`` over the ranks (``value`` itself without a group)."""
    if group is None:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=_reduce_device(group))
    _dist().all_reduce(t, op=_dist().ReduceOp.MIN, group=group)
    return int(t.item())


def sum_over_ranks(value: int, group: Optional[Any]) -> int:
    """The sum of ``value`` over the ranks (``value`` itself without a group)."""
    if group is None:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64, device=_reduce_device(group))
    _dist().all_reduce(t, group=group)
    return int(t.item())


def _reduce_device(group: Any) -> torch.device:
    """Where small bookkeeping tensors go for ``group``'s backend (NCCL: this rank's CUDA device)."""
    if str(_dist().get_backend(group)).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def share_plan(plan, group: Optional[Any]):
    """``plan`` with rank 0's maps on every rank (a warning on a rank whose own maps differed); the maps are
    labels and two numbers per group, so this is a small broadcast."""
    if group is None:
        return plan
    dist = _dist()
    mine = {name: (np.asarray(m.labels).tolist(), int(m.num_outputs), float(m.merge_value)) for name, m in plan.maps.items()}
    box = [mine if rank_of(group) == 0 else None]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    theirs = box[0]
    if theirs == mine:
        return plan
    warnings.warn(f"rank {rank_of(group)} solved a plan different from rank 0's on the same statistics; rank 0's "
                  "plan is used")
    maps = {name: MatchResult(np.asarray(labels, dtype=np.int64), k, value)
            for name, (labels, k, value) in theirs.items()}
    plan.maps = maps
    plan.validate()
    return plan


def broadcast_model(model: nn.Module, group: Optional[Any]) -> nn.Module:
    """Overwrite every parameter and buffer of ``model`` with rank 0's, in place (one broadcast per tensor)."""
    if group is None:
        return model
    dist = _dist()
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for _, t in list(model.named_parameters()) + list(model.named_buffers()):
            dist.broadcast(t.data, src=src, group=group)
    return model


def all_reduce_bn(norms, batches: int, group: Optional[Any]) -> int:
    """Turn every rank's BatchNorm running statistics, cumulative averages over its own ``batches`` batches
    (``momentum=None``), into the averages over all ranks' batches: ``Σ_r b_r·stat_r / Σ_r b_r`` for the running
    mean and variance, and the total batch count as ``num_batches_tracked``. Returns the total batch count."""
    if group is None:
        return batches
    dist = _dist()
    norms = [m for m in norms if m.running_mean is not None and m.running_var is not None]
    dev = norms[0].running_mean.device if norms else _reduce_device(group)
    count = torch.tensor([float(batches)], dtype=torch.float64, device=dev)
    parts = [count]
    for m in norms:
        parts.append(m.running_mean.detach().double() * batches)
        parts.append(m.running_var.detach().double() * batches)
    flat = torch.cat([p.reshape(-1) for p in parts])
    dist.all_reduce(flat, group=group)
    total = int(round(flat[0].item()))
    if total == 0:
        return 0
    offset = 1
    with torch.no_grad():
        for m in norms:
            for t in (m.running_mean, m.running_var):
                t.copy_((flat[offset:offset + t.numel()] / total).view_as(t))
                offset += t.numel()
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.fill_(total)
    return total
