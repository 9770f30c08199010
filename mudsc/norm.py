"""Normalisation repair after merging: recompute BatchNorm statistics (ALGORITHM.md §6.3, "reset BN stats").

Merging averages running means/variances of units that were merged, which does not give the statistics of the
merged network's own activations. ``reset_bn`` forgets them and re-estimates them with one pass over data:
for every BatchNorm layer, ``momentum = None`` (PyTorch's cumulative average: after b batches the running mean
is the plain average of the b per-batch means, and the running variance the average of the b unbiased per-batch
variances), ``reset_running_stats()``, then a forward pass in train mode under ``no_grad``. Afterwards each
module's momentum and train/eval flag are restored.

Deviation from the original: it resets only modules whose type is exactly ``nn.BatchNorm2d``; this resets every
``torch.nn.modules.batchnorm._BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, subclasses), and runs in the
model's own precision rather than under fp16 autocast. REPAIR's rescaling is :mod:`mudsc.repair`.

Under ``torch.distributed`` each rank reads its shard and the statistics are summed over the ranks
(``process_group=``, :mod:`mudsc.distributed`).

``tol=`` stops the pass early, once the running statistics are stable across a doubling of the batches
(:class:`mudsc.sampling.StableNorms`; what :func:`mudsc.merge` does by default); :func:`recompute_bn` also
returns how many batches it read.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
import torch.nn as nn

from .distributed import Collective, all_reduce_bn, resolve_group
from .sampling import StableNorms

__all__ = ["first_input", "recompute_bn", "reset_bn"]


def first_input(batch):
    """The model input of a loader item: the item itself if a tensor, else the first element of a tuple/list."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"a loader must yield tensors or (inputs, targets) tuples/lists, got {type(batch).__name__}")


def reset_bn(model: nn.Module, loader: Iterable, max_batches: Optional[int] = None,
             device: Optional[Union[str, torch.device]] = None, tol: Optional[float] = None,
             process_group=None) -> nn.Module:
    """Recompute the running statistics of every BatchNorm layer of ``model`` in place, and return it.

    Args:
        model: any module; without BatchNorm layers it is returned unchanged (no pass over the data).
        loader: yields ``Tensor[B, ...]`` inputs or ``(inputs, targets)`` tuples/lists.
        max_batches: use at most this many batches (None: the whole loader).
        device: move each batch there (default: the device of the model's first parameter).
        tol: stop once no running mean moved by more than ``tol`` standard deviations, and no running standard
            deviation by more than ``tol`` relative, across a doubling of the batches (checked after 2, 4, 8, ...;
            :class:`mudsc.sampling.StableNorms`). None: every batch.
        process_group: under ``torch.distributed`` (:func:`mudsc.distributed.resolve_group`: None means the
            default group when one is initialized, False one process), ``loader`` is this rank's shard (it may be
            empty) and the statistics are those of every rank's batches (:func:`mudsc.distributed.all_reduce_bn`),
            identical on every rank; ``tol`` must then be None.

    Raises:
        ValueError: the loader yielded no batch (on any rank, under a process group: the statistics would stay
            reset).
    """
    recompute_bn(model, loader, max_batches, device, tol, process_group)
    return model


def recompute_bn(model: nn.Module, loader: Iterable, max_batches: Optional[int] = None,
                 device: Optional[Union[str, torch.device]] = None, tol: Optional[float] = None,
                 process_group=None) -> int:
    """:func:`reset_bn`, returning the number of batches it read (0 without BatchNorm layers; under a process
    group, the ranks' total)."""
    group = resolve_group(process_group)
    if group is not None and tol is not None:
        raise ValueError("tol= (stopping early) cannot run under a process group: pass tol=None")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    rule = StableNorms(norms, tol) if tol is not None else None
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    flags = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    seen = items = 0
    try:
        with Collective(group, "the BatchNorm reset"):
            for m in norms:
                m.momentum = None
                m.reset_running_stats()
            model.train()
            with torch.no_grad():
                for batch in loader:
                    if max_batches is not None and seen >= max_batches:
                        break
                    x = first_input(batch)
                    model(x.to(device))
                    seen += 1
                    items += int(x.shape[0]) if x.dim() else 1
                    if rule is not None and rule.update(seen, items):
                        break
        seen = all_reduce_bn(norms, seen, group)
    finally:
        for m, training in flags.items():
            m.training = training
        for m, momentum in momenta.items():
            m.momentum = momentum
    if seen == 0:
        raise ValueError("reset_bn: the loader yielded no batches, so the BatchNorm statistics cannot be recomputed")
    return seen
