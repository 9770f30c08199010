"""How much of a model a spec permutes: :func:`permuted_share`.

Measure. Each parameter has a *unit axis*, the one holding the units it produces: axis 0 for a weight's rows, a
bias, a norm's scale; the channel axis of an ``nn.Embedding`` table (axis 1: its axis 0 is the vocabulary), and in
general the axis of the parameter's first output-role member when it has one off axis 0. The share of a model that
merging can align is the share of parameter entries whose unit-axis index is permuted by some group:

    share = Σ_p numel(p) · |indices of p's unit axis covered by members| / length(unit axis)  /  Σ_p numel(p)

over the model's parameters (``named_parameters()``, a tied tensor once; buffers are not counted). A member that
covers part of the axis (the v third of a fused ``qkv`` whose q/k were left unpermuted) counts its part; a
0-dimensional parameter counts as unpermuted, and so do a classifier's rows (the model's outputs: no group holds
them, although its columns are permuted). A tensor with a view (``views.py``) counts its stored entries: a
per-head table's entry is permuted when its head is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .data import PermSpec

__all__ = ["permuted_share"]


def _unit_axes(spec: PermSpec) -> dict:
    """``{tensor name: unit axis}`` where it is not 0: the axis of the tensor's first output-role member, for the
    tensors whose axis 0 holds no output member (an ``nn.Embedding`` table)."""
    axes = {}
    for name in spec.tensor_names():
        outputs = sorted({m.axis for m, _ in spec.members_of(name) if m.role == "output"})
        if outputs and outputs[0] != 0:
            axes[name] = outputs[0]
    return axes


def _covered_rows(model: nn.Module, spec: PermSpec) -> dict:
    """``{parameter name: (unit axis, bool[length])}``: the unit-axis indices some member of ``spec`` occupies."""
    params = dict(model.named_parameters())
    known = set(params) | {name for name, _ in model.named_buffers()}
    unit = _unit_axes(spec)
    covered = {}
    for group in spec.groups:
        for m in group.members:
            if m.name not in known:
                raise ValueError(f"spec member {m.name!r} (group {group.name!r}) is not a parameter or buffer of "
                                 f"{type(model).__name__}: was the spec traced from another architecture?")
            axis = unit.get(m.name, 0)
            if m.axis != axis or m.name not in params:
                continue
            rows = params[m.name].shape[axis] if params[m.name].dim() > axis else 0
            view = spec.views.get(m.name)
            repeats = view.repeats if view is not None and view.axis == axis else 1  # a per-head table's dense rows
            if m.extent(group.size) > rows * repeats:
                dense = " dense" if repeats > 1 else ""
                raise ValueError(f"spec member {m.name!r} axis {axis} reaches index {m.extent(group.size) - 1} "
                                 f"(group {group.name!r}), but the tensor has {rows * repeats}{dense} entries there")
            mask = covered.setdefault(m.name, (axis, torch.zeros(rows, dtype=torch.bool)))[1]
            mask[m.indices(group.size).flatten() // repeats] = True
    return covered


def permuted_share(model: nn.Module, spec: PermSpec) -> float:
    """The share of ``model``'s parameter entries whose unit-axis index a group of ``spec`` permutes (module
    docstring; the unit axis is axis 0 but for embedding tables).

    Args:
        model: the model the spec describes.
        spec: its :class:`~mudsc.spec.data.PermSpec` (e.g. from :func:`mudsc.trace`).

    Returns:
        float in [0, 1]: 1 when every parameter's unit axis is permuted, 0 for an empty spec.

    Raises:
        ValueError: the model has no parameter entries, or a member names a tensor the model lacks or reaches past
            its unit axis.
    """
    covered = _covered_rows(model, spec)
    total = permuted = 0.0
    for name, p in model.named_parameters():
        total += p.numel()
        if name in covered and len(covered[name][1]) > 0:
            axis, mask = covered[name]
            permuted += p.numel() * float(mask.sum()) / len(mask)
    if total == 0:
        raise ValueError(f"{type(model).__name__} has no parameter entries: a permuted share is undefined")
    return permuted / total
