"""``mudsc merge`` under ``torchrun``: the process group, this rank's device and its shard of the data.

``torchrun --nproc-per-node K -m mudsc merge ...`` starts K processes with ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in their environment. :func:`process_group` then initializes the default group (NCCL when
``--device`` is a CUDA device, gloo otherwise), a ``--device cuda`` becomes this rank's ``cuda:LOCAL_RANK``, and
:func:`shard` gives each rank every K-th batch of the data, starting at its rank (a ``--data`` factory that takes
``rank`` and ``world_size`` keyword arguments is asked for its own shard instead). Everything else is
:func:`mudsc.merge` over the group (:mod:`mudsc.distributed`); rank 0 writes the outputs.
"""

from __future__ import annotations

import inspect
import os
from typing import Iterable, Iterator, Optional

import torch

__all__ = ["Shard", "launched_ranks", "process_group", "shard", "takes_shard"]


def launched_ranks() -> Optional[tuple]:
    """``(rank, local rank, world size)`` from a launcher's environment (``torchrun``), or None for one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1 or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world


def process_group(device: Optional[torch.device]) -> tuple:
    """``(device for this rank, whether this call initialized torch.distributed)``. Under a launcher the default
    process group is initialized when it is not yet (NCCL for a CUDA ``device``, gloo otherwise) and a CUDA
    device without an index becomes ``cuda:LOCAL_RANK``; one process: ``(device, False)``."""
    import torch.distributed as dist

    ranks = launched_ranks()
    if ranks is None or not dist.is_available():
        return device, False
    _, local, _ = ranks
    if device is not None and device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
    return device, True


class Shard:
    """Every ``world``-th item of ``loader``, starting at item ``rank`` (re-iterable when ``loader`` is; its
    length when ``loader`` has one)."""

    def __init__(self, loader: Iterable, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world

    def __iter__(self) -> Iterator:
        for i, item in enumerate(self.loader):
            if i % self.world == self.rank:
                yield item

    def __len__(self) -> int:
        return max(0, -(-(len(self.loader) - self.rank) // self.world))


def takes_shard(factory) -> bool:
    """Whether a ``--data`` factory takes ``rank`` and ``world_size`` keyword arguments (it shards itself)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "rank" in params and "world_size" in params


def shard(loader: Iterable) -> Iterable:
    """This rank's :class:`Shard` of ``loader`` under a launcher; ``loader`` itself for one process."""
    ranks = launched_ranks()
    if ranks is None:
        return loader
    rank, _, world = ranks
    return Shard(loader, rank, world)
