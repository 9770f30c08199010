"""Calibrated BatchNorm reset: keep the endpoints' training-time statistics, moved by what merging changed.

The plain reset (:mod:`mudsc.norm`, ALGORITHM.md §6.3) re-estimates every BatchNorm layer's statistics on the merge
loader. That undoes what merging did to the activations (the variance collapse of averaged units), but it also
replaces statistics estimated on each model's own training data by statistics of the loader's data. Models trained
on different tasks were never normalised on the loader's mix (issue 17's pairs: the union of both tasks), and the
plain reset changes how confident each one is outside its task: resetting the two *unmerged* endpoints of the
issue's BN pair on the union leaves their per-task accuracies as they were but costs their ensemble 2.5 points of
joint accuracy (benchmarks/records/partial_calibrated_2cpu.log). A partial merge's branches are those models'
own layers, so the plain reset passes that loss on to every partial merge.

The calibrated reset removes the data shift and keeps the merge's correction. For every BatchNorm layer, with the
statistics the plain reset gives (``reset``):

- ``trained``: the layer's statistics before the reset: the plan applied to the endpoints' running statistics
  (in a merged layer, the merge of the matched units' statistics; in a branch of a partial merge, its model's own);
- ``reference``: the same, with each endpoint's statistics first recomputed on the loader (the endpoints
  themselves, unmerged, reset on the same batches and merged by the same plan);

``mean = trained_mean + (reset_mean - reference_mean)`` and ``var = trained_var * reset_var / reference_var``. A
layer whose input merging did not change (a self-merge, a branch fed its own model's features) keeps its trained
statistics exactly; a layer with a reference variance of (nearly) zero, or without trained statistics, takes the
plain reset's. The cost is N more passes over the loader (the endpoints' resets) and N model copies.

:func:`mudsc.merge` does this by default for a partial merge (``stop_at=``, ``reset_bn_stats=None``) and on request
for a full one (``reset_bn_stats="calibrated"``); ``reset_bn_stats=True`` is the plain reset, the original's
semantics and a full merge's default.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .norm import recompute_bn

__all__ = ["RESET_MODES", "bn_statistics", "calibrate_bn", "calibrated_reset", "check_reset_mode", "reset_mode"]

# merge(reset_bn_stats=...): the default (below), none, the plain reset, the calibrated one
RESET_MODES = (None, False, True, "calibrated")
VAR_FLOOR = 1e-12  # a reference variance at or below this leaves the layer with the plain reset's statistics


def check_reset_mode(mode) -> None:
    """ValueError unless ``mode`` is one of :data:`RESET_MODES`."""
    if not any(mode is m or (isinstance(m, str) and mode == m) for m in RESET_MODES):
        raise ValueError(f"reset_bn_stats must be None (the default), True (the plain reset), False or "
                         f"'calibrated', got {mode!r}")


def reset_mode(mode, partial: bool):
    """The reset ``merge(reset_bn_stats=mode)`` runs: ``mode``, or for None (the default) ``"calibrated"`` for a
    partial merge (its branches are the endpoints' own layers, calibrated on their own data) and True (the plain
    reset) for a full one."""
    if mode is None:
        return "calibrated" if partial else True
    return mode


def bn_statistics(model: nn.Module) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (running_mean, running_var)}`` (copies) of every BatchNorm layer of ``model`` that tracks
    running statistics."""
    return {name: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


def calibrate_bn(model: nn.Module, trained: Dict[str, tuple], reference: Dict[str, tuple]) -> int:
    """Move ``model``'s (just reset) BatchNorm statistics onto ``trained`` by their difference to ``reference``
    (module docstring), in place; the number of layers moved. A layer missing from either dict, of another
    size, or with a reference variance <= :data:`VAR_FLOOR` keeps its statistics."""
    moved = 0
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
                continue
            if name not in trained or name not in reference:
                continue
            (t_mean, t_var), (r_mean, r_var) = trained[name], reference[name]
            if t_mean.shape != m.running_mean.shape or r_mean.shape != m.running_mean.shape:
                continue
            t_mean, t_var, r_mean, r_var = (t.to(m.running_mean) for t in (t_mean, t_var, r_mean, r_var))
            ok = r_var > VAR_FLOOR
            m.running_mean.copy_(torch.where(ok, t_mean + (m.running_mean - r_mean), m.running_mean))
            m.running_var.copy_(torch.where(ok, t_var * m.running_var / r_var.clamp_min(VAR_FLOOR), m.running_var))
            moved += 1
    return moved


def calibrated_reset(model: nn.Module, models: Sequence[nn.Module], rebuild: Callable[[Sequence[nn.Module]], nn.Module],
                     loader, max_batches: Optional[int], device, tol: Optional[float], process_group) -> int:
    """The calibrated reset of ``model`` (module docstring), in place; the number of batches its own reset read.

    Args:
        model: the merged model (or :class:`mudsc.PartialMerge`) as built from ``models``, statistics not yet reset.
        models: the N endpoints (not modified: their resets run on copies).
        rebuild: builds the merged model from N models the way ``model`` was built (the plan applied, without its
            fingerprint check: the copies' statistics differ from the plan's).
        loader, max_batches, device, tol, process_group: as :func:`mudsc.norm.recompute_bn`; the endpoints' resets
            read the batches the merged one read.
    """
    trained = bn_statistics(model)
    seen = recompute_bn(model, loader, max_batches=max_batches, device=device, tol=tol,
                        process_group=process_group)
    own_batches = seen if tol is not None else max_batches  # tol is None under a process group
    copies = [copy.deepcopy(m) for m in models]
    for c in copies:
        recompute_bn(c, loader, max_batches=own_batches, device=device, process_group=process_group)
    reference = bn_statistics(rebuild(copies))
    del copies
    calibrate_bn(model, trained, reference)
    return seen
