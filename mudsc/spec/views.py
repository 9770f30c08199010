"""Dense views of parameters stored in a compact layout that a :class:`~mudsc.spec.data.Member` cannot address.

A member re-indexes one axis of a tensor with one permutation. Two kinds of layer store a tensor so that the
units of one axis depend on the index along another, or stand for whole blocks of a group:

- ``"grouped"``: a grouped convolution's weight ``[O, I/g, *k]`` (``g = blocks``). Column ``i`` of row ``o`` is
  input channel ``b·I/g + i`` where ``b = o // (O/g)`` is the row's group. Its dense form is the block-diagonal
  ``[O, I, *k]`` (zero outside the g diagonal blocks ``[b·O/g, (b+1)·O/g) x [b·I/g, (b+1)·I/g)``), in which the
  input channels are an ordinary member on axis 1 (``axis`` is 1).
- ``"repeat"``: a table with one entry per block of a group along ``axis`` (Swin's relative-position-bias table
  ``[positions, heads]``, a per-head logit scale ``[heads, 1, 1]``). Its dense form repeats each entry
  ``repeats`` times along ``axis`` (``blocks`` entries become ``blocks·repeats`` units), so the axis is an
  ordinary member of the head-structured group.

Every stage that reads members reads the dense form (:func:`dense_tensors`, :func:`expand`) and every stage that
writes a model writes the compact one back (:func:`compact`). Block-respecting maps keep the structure; a merged
dense ``"grouped"`` weight with entries outside its diagonal blocks cannot be stored, and :func:`compact` raises
rather than drop them (a model that silently lost weights would be a broken merge). A merged ``"repeat"`` table
takes the mean of each block's entries (exact under permutations; under zip a block's units may mix the tables of
several models, and their mean is the merged entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import torch

VIEW_KINDS = ("grouped", "repeat")

__all__ = ["VIEW_KINDS", "View", "compact", "dense_shape", "dense_tensors", "expand"]


@dataclass(frozen=True)
class View:
    """How tensor entries map to a dense layout (module docstring).

    Attributes:
        kind: ``"grouped"`` or ``"repeat"``.
        axis: the axis whose dense length differs from the stored one (1 for ``"grouped"``).
        blocks: convolution groups (``"grouped"``), or table entries along ``axis`` (``"repeat"``).
        repeats: units per entry in the dense form (``"repeat"``; 1 for ``"grouped"``).
    """

    kind: str
    axis: int
    blocks: int
    repeats: int = 1

    def __post_init__(self):
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"view kind must be one of {VIEW_KINDS}, got {self.kind!r}")
        if self.kind == "grouped" and self.axis != 1:
            raise ValueError(f"a grouped view is on axis 1 (a convolution weight's input channels), got {self.axis}")
        if self.axis < 0 or self.blocks < 1 or self.repeats < 1:
            raise ValueError(f"invalid view {self}: axis, blocks and repeats must be non-negative / positive")

    def to_dict(self) -> dict:
        """``{"kind", "axis", "blocks", "repeats"}`` (JSON-serialisable; ``View(**d)`` is the inverse)."""
        return {"kind": self.kind, "axis": self.axis, "blocks": self.blocks, "repeats": self.repeats}


def _check_rank(shape: Sequence[int], view: View, what: str) -> None:
    """Raise unless a tensor of ``shape`` has the view's axis (and, grouped, rows that split into its groups)."""
    if view.axis >= len(shape):
        raise ValueError(f"{what} of shape {tuple(shape)} has no axis {view.axis} for its {view.kind} view")
    if view.kind == "grouped" and shape[0] % view.blocks:
        raise ValueError(f"{what}: {shape[0]} rows do not split into {view.blocks} convolution groups")
    if view.kind == "repeat" and shape[view.axis] != view.blocks:
        raise ValueError(f"{what}: axis {view.axis} has {shape[view.axis]} entries, its view expects {view.blocks}")


def dense_shape(shape: Sequence[int], view: View, what: str = "tensor") -> tuple:
    """The dense shape of a stored tensor of ``shape`` (``what`` names it in errors)."""
    _check_rank(shape, view, what)
    out = list(shape)
    out[view.axis] = shape[view.axis] * (view.blocks if view.kind == "grouped" else view.repeats)
    return tuple(out)


def expand(t: torch.Tensor, view: View, what: str = "tensor") -> torch.Tensor:
    """The dense form of stored tensor ``t``: ``Tensor[dense_shape(t.shape)]``, same dtype and device."""
    _check_rank(t.shape, view, what)
    if view.kind == "repeat":
        return t.repeat_interleave(view.repeats, dim=view.axis)
    g = view.blocks
    rows, cols = t.shape[0] // g, t.shape[1]
    out = t.new_zeros(dense_shape(t.shape, view, what))
    for b in range(g):
        out[b * rows:(b + 1) * rows, b * cols:(b + 1) * cols] = t[b * rows:(b + 1) * rows]
    return out


def compact(dense: torch.Tensor, view: View, what: str = "tensor") -> torch.Tensor:
    """The stored form of a dense tensor (the inverse of :func:`expand`; for a merged one see the module docstring).

    Raises:
        ValueError: the dense length does not split into the view's blocks, or a ``"grouped"`` weight has non-zero
            entries outside its diagonal blocks (the maps did not respect the convolution's groups).
    """
    g, a = view.blocks, view.axis
    length = dense.shape[a] if a < dense.dim() else 0
    if a >= dense.dim() or length % g or (view.kind == "grouped" and dense.shape[0] % g):
        raise ValueError(f"{what}: a dense tensor of shape {tuple(dense.shape)} does not split into {g} blocks "
                         f"along axis {a} for its {view.kind} view")
    if view.kind == "repeat":
        return dense.unflatten(a, (g, length // g)).mean(a + 1)
    rows, cols = dense.shape[0] // g, length // g
    out = dense.new_empty(rows * g, cols, *dense.shape[2:])
    outside = dense.clone()
    for b in range(g):
        out[b * rows:(b + 1) * rows] = dense[b * rows:(b + 1) * rows, b * cols:(b + 1) * cols]
        outside[b * rows:(b + 1) * rows, b * cols:(b + 1) * cols] = 0
    if bool(outside.ne(0).any()):
        raise ValueError(f"{what}: the merged grouped-convolution weight has non-zero entries outside its {g} "
                         "diagonal blocks: the maps of its input and output channels do not move the same groups "
                         "together, so no grouped convolution can hold it")
    return out


def dense_tensors(tensors: Mapping[str, torch.Tensor], views: Mapping[str, View]) -> Dict[str, torch.Tensor]:
    """``tensors`` with every tensor that has a view replaced by its dense form (the others are the same objects)."""
    out = dict(tensors)
    for name, view in views.items():
        if name in out:
            out[name] = expand(out[name], view, name)
    return out
