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
- **Or the groups are sharded** when the memory plan says so (:func:`mudsc.memory.shard_groups`: one pass fits
  only with the groups spread over the ranks): each rank accumulates its own groups over every rank's data, the
  tapped activations travelling to their owners (:class:`ActivationExchange`), and a group's float32 correlation
  is broadcast from its owner when the matching first asks for it (:func:`broadcast_group_stats`).
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

__all__ = ["ActivationExchange", "Collective", "RankFailure", "broadcast_group_stats", "all_reduce_bn", "broadcast_model", "min_over_ranks", "resolve_group", "share_plan",
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


def check_device(group: Optional[Any], device: torch.device, what: str = "the statistics") -> None:
    """ValueError when ``group``'s backend cannot reduce tensors on ``device``, where ``what`` lives (NCCL needs
    CUDA tensors)."""
    if group is None:
        return
    backend = str(_dist().get_backend(group)).lower()
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group's backend is NCCL, which reduces CUDA tensors only, but {what} are on "
                         f"{device}: move the models to cuda:<local rank> (and pass device= there), or use a gloo "
                         "group")


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


class ActivationExchange:
    """Tapped activations sent to the ranks that own their groups (group-sharded statistics).

    Under a sharded memory plan (:func:`mudsc.memory.shard_groups`) each rank accumulates only the groups it owns,
    over every rank's data: a rank's hooks :meth:`send` the features of the other ranks' groups here (``[rows,
    F]``, the N models' channels side by side), and after each forward of a (micro-)batch every rank runs one
    :meth:`round`: the ranks exchange how many rows each has for each group (one ``all_gather``), then each owner
    receives every other rank's rows of its groups (``send``/``recv``), in group order, and gets them back to
    accumulate. The ranks read different numbers of batches: a rank out of data keeps joining rounds with status
    "done" (:meth:`drain`) until every rank is done, and a rank that fails joins one round with status "failed"
    (:meth:`abort`), on which every other rank raises :class:`RankFailure`."""

    ACTIVE, DONE, FAILED = 1, 0, -1

    def __init__(self, group: Any, owners: dict, features: dict, device: torch.device):
        self.group = group
        self.rank = rank_of(group)
        self.world = world_of(group)
        self.names = [name for name in features if name in owners]  # the spec's order: the same on every rank
        self.owners = owners
        self.features = features
        self.device = device
        self.outbox: dict = {}
        self.rounds = 0
        self.sent_bytes = 0

    def owns(self, name: str) -> bool:
        return self.owners.get(name, self.rank) == self.rank

    def send(self, name: str, rows: torch.Tensor) -> None:
        """Queue ``rows`` (``[rows, F]``) of another rank's group for the next :meth:`round`."""
        self.outbox.setdefault(name, []).append(rows.float())

    def round(self, status: int = ACTIVE) -> list:
        """One exchange (class docstring): ``[(group, rows received)]`` for this rank's groups; whether every rank
        is done is :attr:`all_done`."""
        dist = _dist()
        counts = [sum(t.shape[0] for t in self.outbox.get(n, ())) for n in self.names]
        mine = torch.tensor([status] + counts, dtype=torch.int64, device=_reduce_device(self.group))
        table = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(table, mine, group=self.group)
        table = torch.stack(table).cpu()
        self.rounds += 1
        failed = [r for r in range(self.world) if int(table[r, 0]) == self.FAILED]
        if failed and status != self.FAILED:
            self.outbox.clear()
            raise RankFailure(f"rank {failed[0]} failed in the statistics pass (its error is raised there)")
        self.all_done = bool((table[:, 0] == self.DONE).all()) or bool(failed)
        received = []
        if failed:
            return received
        for j, name in enumerate(self.names):
            owner = self.owners[name]
            if self.rank == owner:
                for r in range(self.world):
                    rows = int(table[r, 1 + j])
                    if r != owner and rows:
                        buf = torch.empty(rows, self.features[name], dtype=torch.float32, device=self.device)
                        dist.recv(buf, src=dist.get_global_rank(self.group, r), group=self.group)
                        received.append((name, buf))
            elif counts[j]:
                rows = torch.cat(self.outbox[name]) if len(self.outbox[name]) > 1 else self.outbox[name][0]
                dist.send(rows.contiguous(), dst=dist.get_global_rank(self.group, owner), group=self.group)
                self.sent_bytes += rows.numel() * 4
        self.outbox.clear()
        return received

    def drain(self, feed) -> None:
        """Join rounds as "done", feeding what arrives to ``feed(group, rows)``, until every rank is done."""
        self.all_done = False
        while not self.all_done:
            for name, rows in self.round(self.DONE):
                feed(name, rows)

    def abort(self) -> None:
        """Tell the other ranks this one failed (one round with status "failed")."""
        self.outbox.clear()
        self.round(self.FAILED)


def broadcast_group_stats(group: Any, owner: int, bundle: Optional[tuple], device: torch.device) -> tuple:
    """``(float32 correlation [F, F] on the CPU, degenerate units [k], positions)`` of one group on every rank,
    from its ``owner``, which passes ``bundle`` (the others pass None)."""
    dist = _dist()
    src = dist.get_global_rank(group, owner)
    dev = _reduce_device(group) if device.type == "cpu" else device
    if rank_of(group) == owner:
        corr, dead, positions = bundle
        head = torch.tensor([corr.shape[0], dead.numel(), positions], dtype=torch.int64, device=dev)
    else:
        head = torch.empty(3, dtype=torch.int64, device=dev)
    dist.broadcast(head, src=src, group=group)
    f, k, positions = (int(v) for v in head.tolist())
    if rank_of(group) == owner:
        corr_d, dead_d = corr.to(dev), dead.to(dev)
    else:
        corr_d = torch.empty(f, f, dtype=torch.float32, device=dev)
        dead_d = torch.empty(k, dtype=torch.int64, device=dev)
    dist.broadcast(corr_d, src=src, group=group)
    if k:
        dist.broadcast(dead_d, src=src, group=group)
    return corr_d.cpu(), dead_d.cpu(), positions
