"""Weight-space similarity of units (ALGORITHM.md §3): Pearson correlation (or cosine) of weight vectors.

Model i's unit u owns a weight vector: the concatenation, over the tensors ("pieces") that have the group's
units on some axis, of that tensor's slice at u along the axis, flattened. The *other* axes of a piece may
belong to groups that were already matched; their maps are applied first, **by index**:

- a ``LongTensor`` ``index`` is a gather along that axis (``new[j] = old[index[j]]``: a permutation);
- an :class:`AxisMap` ``(labels, size, scale)`` is a scaled segment sum (``new[k] = scale[k]·Σ_{labels[u]=k}
  old[u]``): the original's multiplication by an unmerge (``scale=None``) or a scaled merge matrix, at
  O(d·rest) instead of the dense ``P_iᵀ W`` (O(d²·rest)).

The correlation itself is a :class:`mudsc.CorrelationAccumulator` over the pieces (every entry of the vector is
one sample), so it inherits the shifted float64 accumulation and the symmetric block product. All pieces of a
group are accumulated about one shift, so their moments add: :func:`weight_moments` returns the accumulator, and
inside the MuDSC descent it takes a :class:`mudsc.PieceCache` that keeps each large piece's moments between
re-solves (:mod:`mudsc.piece_cache`). The reference twin is :mod:`mudsc.reference.similarity`.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .backends import choose
from .maps import AxisMap
from .piece_cache import SMALL_WORK, PieceCache
from .reference import similarity as _reference_similarity
from .stats import CorrelationAccumulator

__all__ = ["weight_moments", "weight_similarity"]


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
    if choose("weight_similarity", backend, needs="ops") == "reference":
        return _reference_similarity.weight_similarity(pieces, kind=kind, eps=eps).to(dtype)
    acc = weight_moments(pieces)
    if kind == "cosine":
        return acc.cosine_similarity(1e-8 if eps is None else eps, dtype=dtype)
    return acc.correlation(1e-7 if eps is None else eps, dtype=dtype)


# Pieces with fewer entries per unit than this (biases, norm scales), or whose product is under ``small_work``
# multiply-adds (small models), are not worth a product and a cache entry of their own: they are stacked into one
# update.
_SMALL_PIECE = 64


def _unit_shift(pieces: Sequence[Sequence[Piece]], n: int, dtype: torch.dtype) -> torch.Tensor:
    """Per unit (model-major), the mean of its untransformed weight entries: the accumulators' common shift.
    It does not depend on other groups' maps, so cached pieces stay valid when it is reused."""
    parts = []
    for i in range(n):
        total, count = None, 0
        for k, piece in enumerate(pieces[i]):
            t, axis = piece[0], int(piece[1]) % piece[0].dim()
            rows = t.detach().movedim(axis, 0).reshape(t.shape[axis], -1)
            s = rows.sum(dim=1, dtype=torch.float64)
            total = s if total is None else total + s
            count += rows.shape[1]
        parts.append(total / max(count, 1))
    return torch.cat(parts).to(dtype)


class _Pieces:
    """The pieces of one :func:`weight_moments` call: validation, transformed tensors (computed once each)."""

    def __init__(self, pieces: Sequence[Sequence[Piece]]) -> None:
        self.pieces = pieces
        self.n = len(pieces)
        self.count = len(pieces[0])
        self._transformed: dict = {}
        self.units = None
        for k in range(self.count):
            t, axis = pieces[0][k][0], int(pieces[0][k][1])
            if self.units is None:
                self.units = t.shape[axis]
            elif t.shape[axis] != self.units:
                raise ValueError(f"piece {k} has {t.shape[axis]} units on its axis, piece 0 has {self.units}")

    def transformed(self, k: int) -> tuple:
        """``(tensors, axes)``: piece ``k`` of every model with its transforms applied; ValueError on a mismatch."""
        if k not in self._transformed:
            tensors, axes = [], []
            for i in range(self.n):
                t, axis = _transformed(self.pieces[i][k], f"model {i} piece {k}")
                tensors.append(t)
                axes.append(axis)
            for i in range(1, self.n):
                if tensors[i].shape != tensors[0].shape or axes[i] != axes[0]:
                    raise ValueError(
                        f"piece {k}: model {i} gives shape {tuple(tensors[i].shape)} (axis {axes[i]}) but model 0 "
                        f"gives {tuple(tensors[0].shape)} (axis {axes[0]}) after the transforms"
                    )
            self._transformed[k] = (tensors, axes)
        return self._transformed[k]

    def is_small(self, k: int, small_work: int) -> bool:
        """Piece ``k`` is stacked with the other small ones instead of getting a product of its own."""
        f = self.n * self.units
        per_unit = self.pieces[0][k][0].numel() // max(self.units, 1)
        return per_unit < _SMALL_PIECE or f * f * per_unit < small_work

    def stacked(self, ks: Sequence[int], dtype: torch.dtype) -> list:
        """Per model, the rows ``[units, Σ entries]`` of the pieces ``ks`` side by side."""
        out = []
        for i in range(self.n):
            rows = []
            for k in ks:
                tensors, axes = self.transformed(k)
                rows.append(tensors[i].movedim(axes[i], 0).reshape(self.units, -1).to(dtype))
            out.append(torch.cat(rows, dim=1))
        return out


def weight_moments(
    pieces: Sequence[Sequence[Piece]],
    cache: Optional[PieceCache] = None,
    group: Any = None,
    keys: Optional[Sequence[Any]] = None,
) -> CorrelationAccumulator:
    """The native :class:`mudsc.CorrelationAccumulator` behind :func:`weight_similarity` (same ``pieces``).

    All pieces are accumulated about one shift (the per-unit mean of the untransformed weights), so their
    moments add exactly. With ``cache`` (plus ``group`` and ``keys[k]``, the key of piece k's maps) every large
    piece gets its own moments, looked up, brought up to date or computed by the :class:`PieceCache`, and added
    up; the result then differs from a recomputation only in rounding. Small pieces are stacked into one update.
    """
    ps = _Pieces(pieces)
    if cache is None:  # validate everything up front (the cached path is fed by the library itself)
        for k in range(ps.count):
            ps.transformed(k)
    first = pieces[0][0][0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    f = ps.n * ps.units
    if cache is None:
        shift = _unit_shift(pieces, ps.n, dtype)
    else:
        shift = cache.shift(group, lambda: _unit_shift(pieces, ps.n, dtype))

    def fresh() -> CorrelationAccumulator:
        return CorrelationAccumulator(f, device=first.device, dtype=dtype, backend="native").reshift(shift)

    small_work = cache.small_work if cache is not None else SMALL_WORK
    total = fresh()
    small = [k for k in range(ps.count) if ps.is_small(k, small_work)]
    for k in range(ps.count):
        if k in small:
            continue
        if cache is None:
            total.update(*ps.transformed(k))
        else:
            total.merge(_cached_piece(ps, k, cache, (group, k), keys[k] if keys is not None else None, fresh))
    if small:
        total.update(ps.stacked(small, dtype), channel_dim=0)
    return total


def _cached_piece(ps: _Pieces, k: int, cache: PieceCache, entry: Any, key: Any, fresh) -> CorrelationAccumulator:
    """Piece ``k``'s moments through ``cache``: a kept version, an updated one, or a full product (kept)."""
    acc = cache.lookup(entry, key)
    if acc is not None:
        return acc
    sig = cache.signature(ps.pieces, k)
    updated = cache.update(entry, ps.pieces, k, sig, fresh)
    if updated is not None:
        acc, generation = updated
    else:
        acc, generation = fresh().update(*ps.transformed(k)), 0
        cache.computed += 1
    cache.store(entry, key, acc, sig, generation)
    return acc
