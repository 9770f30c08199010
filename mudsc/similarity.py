"""Weight-space similarity of units (ALGORITHM.md §3): Pearson correlation (or cosine) of weight vectors.

Model i's unit u owns a weight vector: the concatenation, over the tensors ("pieces") that have the group's
units on some axis, of that tensor's slice at u along the axis, flattened. The *other* axes of a piece may
belong to groups that were already matched; their maps are applied first, **by index**:

- a ``LongTensor`` ``index`` is a gather along that axis (``new[j] = old[index[j]]``: a permutation);
- an :class:`AxisMap` ``(labels, size, scale)`` is a scaled segment sum (``new[k] = scale[k]·Σ_{labels[u]=k}
  old[u]``): the original's multiplication by an unmerge (``scale=None``) or a scaled merge matrix, at
  O(d·rest) instead of the dense ``P_iᵀ W`` (O(d²·rest)).

The correlation itself is a :class:`mudsc.CorrelationAccumulator` over the pieces (every entry of the vector is
one sample), so it inherits the shifted float64 accumulation and the symmetric block product.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from . import _native
from .backends import choose
from .stats import CorrelationAccumulator

__all__ = ["AxisMap", "weight_similarity"]


@dataclass(frozen=True)
class AxisMap:
    """How one model's units along an axis map to K merged units.

    Attributes:
        labels: ``LongTensor[m]``, the merged unit of each of the model's m units.
        size: K.
        scale: ``Tensor[K]`` or None: multiply merged unit k by ``scale[k]`` (None = 1: a plain segment sum).
    """

    labels: torch.Tensor
    size: int
    scale: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        labels = torch.as_tensor(self.labels)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"AxisMap labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.size):
            raise ValueError(f"AxisMap labels must lie in [0, {self.size}), got [{int(labels.min())}, {int(labels.max())}]")
        object.__setattr__(self, "labels", labels.long())
        if self.scale is not None and torch.as_tensor(self.scale).shape != (self.size,):
            raise ValueError(f"AxisMap scale must be [{self.size}], got {tuple(torch.as_tensor(self.scale).shape)}")

    @classmethod
    def unmerge(cls, result: Any, model: int, num_models: int) -> "AxisMap":
        """Model ``model``'s unmerge ``U_iᵀ`` from a :class:`mudsc.MatchResult` (``labels``, ``num_outputs``) of
        ``num_models`` models."""
        labels = torch.as_tensor(result.labels).long()
        om = labels.numel() // num_models
        return cls(labels[model * om : (model + 1) * om], int(result.num_outputs))

    @classmethod
    def merge(cls, result: Any, model: int, num_models: int) -> "AxisMap":
        """Model ``model``'s scaled merge ``N·M_iᵀ`` (``M = U / (colsum(U) + 1e-5)``, ALGORITHM.md §8.1.9)."""
        labels = torch.as_tensor(result.labels).long()
        k = int(result.num_outputs)
        om = labels.numel() // num_models
        counts = torch.bincount(labels, minlength=k).double()
        scale = (num_models / (counts + 1e-5)).float()
        return cls(labels[model * om : (model + 1) * om], k, scale)

    def apply(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """``t`` with ``axis`` (length m) replaced by the K merged units."""
        if t.shape[axis] != self.labels.numel():
            raise ValueError(
                f"AxisMap for {self.labels.numel()} units applied to axis {axis} of a tensor of shape {tuple(t.shape)}"
            )
        shape = list(t.shape)
        shape[axis] = self.size
        out = torch.zeros(shape, dtype=t.dtype, device=t.device)
        out.index_add_(axis, self.labels.to(t.device), t)
        if self.scale is not None:
            view = [1] * t.dim()
            view[axis] = self.size
            out *= self.scale.to(t.device, t.dtype).view(view)
        return out


Piece = Union[tuple, list]


def _transformed(piece: Piece, where: str) -> tuple[torch.Tensor, int]:
    if not isinstance(piece, (tuple, list)) or len(piece) not in (2, 3):
        raise TypeError(f"{where}: a piece is (tensor, axis) or (tensor, axis, {{other_axis: map}}), got {piece!r:.80}")
    t, axis = piece[0], piece[1]
    transforms = piece[2] if len(piece) == 3 and piece[2] is not None else {}
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{where}: weights must be floating point, got {t.dtype}")
    if not isinstance(axis, numbers.Integral) or not -t.dim() <= axis < t.dim():
        raise ValueError(f"{where}: axis {axis!r} is out of range for shape {tuple(t.shape)}")
    axis = int(axis) % t.dim()
    if not isinstance(transforms, Mapping):
        raise TypeError(f"{where}: transforms must be a dict {{axis: index or AxisMap}}, got {type(transforms).__name__}")
    t = t.detach()
    for other, m in transforms.items():
        if not isinstance(other, numbers.Integral) or not -t.dim() <= other < t.dim():
            raise ValueError(f"{where}: transform axis {other!r} is out of range for shape {tuple(t.shape)}")
        other = int(other) % t.dim()
        if other == axis:
            raise ValueError(f"{where}: the unit axis {axis} itself cannot be transformed")
        if isinstance(m, AxisMap):
            t = m.apply(t, other)
        else:
            index = torch.as_tensor(m, device=t.device)
            if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"{where}: an index transform must be a 1-d integer tensor, got {index.dtype}")
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= t.shape[other]):
                raise ValueError(f"{where}: index out of range for axis {other} of shape {tuple(t.shape)}")
            t = t.index_select(other, index.long())
    return t, axis


def weight_similarity(
    pieces: Sequence[Sequence[Piece]],
    kind: str = "pearson",
    eps: Optional[float] = None,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Similarity ``Tensor[N·Om, N·Om]`` of the units of N models from their weights (model-major).

    Args:
        pieces: ``pieces[i]`` lists model i's pieces; piece k of every model must be the same tensor of the same
            architecture. A piece is ``(tensor, axis)`` or ``(tensor, axis, {other_axis: index | AxisMap})``:
            ``axis`` holds the group's Om units; the dict maps other axes through other groups' matchings.
        kind: ``"pearson"`` (default, ALGORITHM.md ``_correlation``: each unit's vector centred by its own mean,
            ``cov / max(σσᵀ, eps)``, eps 1e-7) or ``"cosine"`` (``_cossim``: norms clamped at eps, 1e-8).
        backend: ``"native"`` (index transforms + the native accumulator), ``"reference"`` (the original's dense
            ``P_iᵀ W`` products and float32 formula), or ``"auto"``.
        dtype: the returned dtype (float32 default).
    """
    if kind not in ("pearson", "cosine"):
        raise ValueError(f"kind must be 'pearson' or 'cosine', got {kind!r}")
    if not isinstance(pieces, Sequence) or not pieces or not all(isinstance(p, Sequence) for p in pieces):
        raise TypeError("pieces must be a non-empty list (one entry per model) of lists of pieces")
    counts = {len(p) for p in pieces}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every model needs the same non-zero number of pieces, got {[len(p) for p in pieces]}")
    reasons = [] if _native.HAS_C else [_native.C_ERROR or "mudsc._C is not available"]
    chosen = choose("weight_similarity", backend, lambda: reasons)
    if chosen == "reference":
        from .reference.stats import reference_weight_similarity

        return reference_weight_similarity(pieces, kind=kind, eps=eps).to(dtype)
    n = len(pieces)
    num_pieces = len(pieces[0])
    units = None
    acc = None
    for k in range(num_pieces):
        tensors, axes = [], []
        for i in range(n):
            t, axis = _transformed(pieces[i][k], f"model {i} piece {k}")
            tensors.append(t)
            axes.append(axis)
        om = tensors[0].shape[axes[0]]
        for i in range(1, n):
            if tensors[i].shape != tensors[0].shape or axes[i] != axes[0]:
                raise ValueError(
                    f"piece {k}: model {i} gives shape {tuple(tensors[i].shape)} (axis {axes[i]}) but model 0 gives "
                    f"{tuple(tensors[0].shape)} (axis {axes[0]}) after the transforms"
                )
        if units is None:
            units = om
            device = tensors[0].device
            acc_dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
            acc = CorrelationAccumulator(n * om, device=device, dtype=acc_dtype, backend="native")
        elif om != units:
            raise ValueError(f"piece {k} has {om} units on its axis, piece 0 has {units}")
        acc.update(tensors, axes)
    if kind == "cosine":
        return acc.cosine_similarity(1e-8 if eps is None else eps, dtype=dtype)
    return acc.correlation(1e-7 if eps is None else eps, dtype=dtype)
