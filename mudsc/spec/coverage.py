"""How much of a model a spec permutes: :func:`permuted_share`.

Measure. A parameter's axis 0 holds the units it produces (a weight's rows, a bias, a norm's scale), so the share
of a model that merging can align is the share of parameter entries whose axis-0 index is permuted by some group:

    share = Σ_p numel(p) · |rows of p covered by axis-0 members| / rows(p)  /  Σ_p numel(p)

over the model's parameters (``named_parameters()``, a tied tensor once; buffers are not counted). A member that
covers part of axis 0 (the v third of a fused ``qkv`` whose q/k were left unpermuted) counts its part; a
0-dimensional parameter counts as unpermuted. Tensors whose units sit on another axis are counted as they are:
an ``nn.Embedding`` table's axis 0 is its vocabulary and axis 1 its channels, so it lowers the share. A tensor
with a view (``views.py``) counts its stored rows: a per-head table's row is permuted when its head is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .data import PermSpec

__all__ = ["permuted_share"]


def _covered_rows(model: nn.Module, spec: PermSpec) -> dict:
    """``{parameter name: bool[rows]}``: the axis-0 indices some axis-0 member of ``spec`` occupies."""
    params = dict(model.named_parameters())
    known = set(params) | {name for name, _ in model.named_buffers()}
    covered = {}
    for group in spec.groups:
        for m in group.members:
            if m.name not in known:
                raise ValueError(f"spec member {m.name!r} (group {group.name!r}) is not a parameter or buffer of "
                                 f"{type(model).__name__}: was the spec traced from another architecture?")
            if m.axis != 0 or m.name not in params:
                continue
            rows = params[m.name].shape[0] if params[m.name].dim() > 0 else 0
            view = spec.views.get(m.name)
            repeats = view.repeats if view is not None and view.axis == 0 else 1  # a per-head table's dense rows
            if m.extent(group.size) > rows * repeats:
                dense = " dense" if repeats > 1 else ""
                raise ValueError(f"spec member {m.name!r} axis 0 reaches index {m.extent(group.size) - 1} (group "
                                 f"{group.name!r}), but the tensor has {rows * repeats}{dense} rows")
            mask = covered.setdefault(m.name, torch.zeros(rows, dtype=torch.bool))
            mask[m.indices(group.size).flatten() // repeats] = True
    return covered


def permuted_share(model: nn.Module, spec: PermSpec) -> float:
    """The share of ``model``'s parameter entries whose axis-0 index a group of ``spec`` permutes (module docstring).

    Args:
        model: the model the spec describes.
        spec: its :class:`~mudsc.spec.data.PermSpec` (e.g. from :func:`mudsc.trace`).

    Returns:
        float in [0, 1]: 1 when every parameter's axis 0 is permuted, 0 for an empty spec.

    Raises:
        ValueError: the model has no parameter entries, or a member names a tensor the model lacks or reaches past
            its axis 0.
    """
    covered = _covered_rows(model, spec)
    total = permuted = 0.0
    for name, p in model.named_parameters():
        total += p.numel()
        if name in covered and p.shape[0] > 0:
            permuted += p.numel() * float(covered[name].sum()) / p.shape[0]
    if total == 0:
        raise ValueError(f"{type(model).__name__} has no parameter entries: a permuted share is undefined")
    return permuted / total
