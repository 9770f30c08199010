"""The merged width of every group, known before any heavy work, and a probe that the merged model can run.

Widths (ALGORITHM.md §4): alignment and averaging keep each group's width ``size``; zip keeps
``K = floor(N·size·(1 − reduce) + 1e-4)`` units, in the group form ``groups·floor(Og·N·(1 − reduce) + 1e-4)``
(``Og = size / groups``: whole head-sets). The default ``reduce`` is ZipIt's ``1 − 1/N``
(:func:`default_reduce`), which keeps the input architecture for every N: ``K = size`` exactly.

A ``reduce`` that changes widths is accepted only when the model still runs with them: :func:`check_widths`
merges the models with maps of those widths that need no statistics (:func:`probe_maps`: any surjective,
block-respecting labels) and runs the result once on the example inputs, before the statistics pass. A model
whose forward hard-codes a width (a ViT's head reshape, an attention module's stored width) fails there, and the
error names the module (:func:`mudsc.probe.run_named`).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch.nn as nn

from ..maps import MatchResult
from ..matching import default_reduce
from ..probe import ModelRunError, run_named
from ..reference.matching import zip_target_width
from ..spec import PermSpec, apply_maps
from .registry import MethodInfo

__all__ = ["check_widths", "default_reduce", "probe_maps", "target_widths"]


def target_widths(spec: PermSpec, num_models: int, method: MethodInfo, reduce: float) -> Dict[str, int]:
    """``{group: merged width K}`` that ``method`` produces with ``reduce`` (the solvers' own formulas)."""
    out = {}
    for g in spec.groups:
        if method.solver != "zip":
            out[g.name] = g.size
        elif g.num_blocks > 1:
            out[g.name] = g.num_blocks * zip_target_width(num_models * (g.size // g.num_blocks), reduce)
        else:
            out[g.name] = zip_target_width(num_models * g.size, reduce)
    return out


def probe_maps(spec: PermSpec, num_models: int, widths: Dict[str, int]) -> Dict[str, MatchResult]:
    """Maps of the given widths for every group, without statistics: unit j of block b of model i goes to slot
    ``(i·Og + j) mod R`` of merged block b (``R = K / blocks``), which hits every slot when ``K <= N·size``."""
    out = {}
    for g in spec.groups:
        blocks = max(g.num_blocks, 1)
        og, r = g.size // blocks, widths[g.name] // blocks
        i, b, j = np.meshgrid(np.arange(num_models), np.arange(blocks), np.arange(og), indexing="ij")
        labels = (b * r + (i * og + j) % r).reshape(-1).astype(np.int64)
        out[g.name] = MatchResult(labels, widths[g.name], 0.0)
    return out


def check_widths(models: Sequence[nn.Module], spec: PermSpec, method: MethodInfo, reduce: float,
                 example_inputs: Any) -> Dict[str, int]:
    """The merged widths (:func:`target_widths`), after checking that a model with them runs on
    ``example_inputs``; ValueError naming the failing module and the changed groups otherwise. Warns when the
    widths differ from the input architecture's (its state dict then loads only into a model of those widths)."""
    n = len(models)
    widths = target_widths(spec, n, method, reduce)
    changed = {g.name: (g.size, widths[g.name]) for g in spec.groups if widths[g.name] != g.size}
    if not changed:
        return widths
    bad = [name for name, (_, k) in changed.items() if k < 1 or k > n * spec[name].size]
    if bad:
        raise ValueError(f"reduce={reduce!r} leaves group {bad[0]!r} with {widths[bad[0]]} merged units")
    listed = ", ".join(f"{name} {a} -> {b}" for name, (a, b) in list(changed.items())[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    try:
        run_named(apply_maps(list(models), spec, probe_maps(spec, n, widths)), example_inputs,
                  "a model with the merged widths")
    except ModelRunError as exc:
        raise ValueError(
            f"reduce={reduce!r} changes merged widths ({listed}{more}), and {exc}; this architecture does not "
            f"follow a width change there. Use the default reduce (1 - 1/N = {default_reduce(n):.6g}, which keeps "
            "the input widths) or an alignment method") from exc
    warnings.warn(f"reduce={reduce!r} changes merged widths ({listed}{more}): the merged model runs, but its state "
                  "dict loads only into a model built with these widths, not into the input architecture")
    return widths
