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

import copy
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from . import _native
from .backends import choose
from .stats import CorrelationAccumulator

__all__ = ["AxisMap", "PieceCache", "weight_moments", "weight_similarity"]


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
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and _native.HAS_C:
            # one pass along any axis, rows added in the same order as index_add_ (same result, no copy)
            return torch.ops.mudsc.axis_segment_sum(t, axis, self.labels, self.size, self.scale)
        # The segment sum runs along dim 0 of a contiguous copy: ATen's index_add_ along an inner axis of a
        # conv weight is ~2x slower than the copy plus a dim-0 index_add_ (whole rows). The result is a view.
        x = t if axis == 0 else t.movedim(axis, 0).contiguous()
        out = torch.zeros((self.size,) + tuple(x.shape[1:]), dtype=t.dtype, device=t.device)
        out.index_add_(0, self.labels.to(t.device), x)
        out = out if axis == 0 else out.movedim(0, axis)
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
    acc = weight_moments(pieces)
    if kind == "cosine":
        return acc.cosine_similarity(1e-8 if eps is None else eps, dtype=dtype)
    return acc.correlation(1e-7 if eps is None else eps, dtype=dtype)


# Pieces with fewer entries per unit than this (biases, norm scales), or whose product is under _SMALL_WORK
# multiply-adds (small models), are not worth a product and a cache entry of their own: they are stacked
# into one update.
_SMALL_PIECE = 64
_SMALL_WORK = 1 << 24


class PieceCache:
    """Per-piece moments kept between :func:`weight_moments` calls of one group (the MuDSC descent).

    A piece's contribution to the similarity sums depends only on its weights and on the maps of its other
    axes; ``keys[k]`` (any comparable value) names those maps, and an entry is reused while its key is unchanged.
    The last ``versions`` entries of every piece are kept: the descent returns to earlier maps (a sweep without
    improvement restarts from the best maps), and on ResNet-20x8 a fifth of the pieces it would otherwise
    recompute are ones it computed 2-5 versions earlier. A changed piece with a single mapped axis is brought up
    to date from the closest kept version (:func:`weight_moments`) unless ``incremental`` is off. Products of
    pieces with few entries per unit are not cached. ``budget_bytes`` caps the float64 moments kept over all
    groups (a ViT-L MLP piece holds 512 MiB); past it, pieces are recomputed.
    """

    def __init__(self, budget_bytes: int = 1 << 30, versions: int = 6) -> None:
        self.budget_bytes = int(budget_bytes)
        self.versions = max(1, int(versions))
        self.bytes = 0
        self.entries: dict = {}
        self.shifts: dict = {}
        self.reused = 0
        self.computed = 0
        self.updated = 0  # pieces brought up to date from a kept version (slots removed and added)
        self.reuse = True  # False: compute every piece (the same arithmetic, for tests)
        self.incremental = True  # False: a changed piece is always recomputed in full
        self.max_generations = 8  # incremental updates in a row before a piece is recomputed in full


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


def _slot_signature(pieces: Sequence[Sequence[Piece]], k: int, n: int) -> Optional[tuple]:
    """``(axis, maps, slot_keys, Counter(slot_keys))`` of piece ``k`` when exactly one of its other axes is
    transformed, by an :class:`AxisMap` of the same length and size in every model; else None.

    A slot (merged unit) of that axis contributes its own samples to the piece's moments, and those depend only
    on which units of each model it sums and on its scale: ``slot_keys[s]`` is that, for slot s.
    """
    axis, maps = None, []
    for i in range(n):
        piece = pieces[i][k]
        transforms = piece[2] if len(piece) == 3 and piece[2] else {}
        if len(transforms) != 1:
            return None
        (b, m), = transforms.items()
        if not isinstance(m, AxisMap) or not isinstance(b, numbers.Integral):
            return None
        b = int(b) % piece[0].dim()
        if axis is None:
            axis = b
        elif b != axis or m.size != maps[0].size or m.labels.numel() != maps[0].labels.numel():
            return None
        maps.append(m)
    size = maps[0].size
    members = []
    for m in maps:
        lab = m.labels.cpu().numpy()
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(size + 1))
        members.append([order[bounds[s]:bounds[s + 1]].tobytes() for s in range(size)])
    scale = maps[0].scale
    scales = [None] * size if scale is None else scale.detach().cpu().numpy().tolist()
    if any((m.scale is None) != (scale is None) or (m.scale is not None and not torch.equal(m.scale, scale))
           for m in maps[1:]):
        return None
    keys = [tuple(members[i][s] for i in range(n)) + (scales[s],) for s in range(size)]
    return axis, maps, keys, Counter(keys)


def _slot_diff(old_counts: Counter, old_keys: list, new_counts: Counter, new_keys: list) -> tuple:
    """Slots of the old version whose content is gone and slots of the new one that are new (as multisets:
    ``*_counts`` are ``Counter(*_keys)``)."""
    gone = {key: c - new_counts.get(key, 0) for key, c in old_counts.items() if c > new_counts.get(key, 0)}
    new = {key: c - old_counts.get(key, 0) for key, c in new_counts.items() if c > old_counts.get(key, 0)}

    def pick(keys: list, budget: dict) -> list:
        out = []
        if budget:
            for s, key in enumerate(keys):
                if budget.get(key, 0) > 0:
                    budget[key] -= 1
                    out.append(s)
        return out

    return pick(old_keys, gone), pick(new_keys, new)


def _slot_rows(pieces, k: int, n: int, axis: int, maps: list, slots: list) -> list:
    """Per model, piece ``k`` transformed on ``axis`` to just the given slots (in that order)."""
    sel = torch.as_tensor(slots, dtype=torch.long)
    out = []
    for i in range(n):
        x, m = pieces[i][k][0].detach(), maps[i]
        where = torch.full((m.size,), -1, dtype=torch.long)
        where[sel] = torch.arange(len(slots))
        lab = where[m.labels]
        pos = torch.nonzero(lab >= 0).view(-1)
        scale = None if m.scale is None else m.scale[sel]
        out.append(AxisMap(lab[pos], len(slots), scale).apply(x.index_select(axis, pos.to(x.device)), axis))
    return out


def weight_moments(
    pieces: Sequence[Sequence[Piece]],
    cache: Optional[PieceCache] = None,
    group: Any = None,
    keys: Optional[Sequence[Any]] = None,
) -> CorrelationAccumulator:
    """The native :class:`mudsc.CorrelationAccumulator` behind :func:`weight_similarity` (same ``pieces``).

    All pieces are accumulated about one shift (the per-unit mean of the untransformed weights). With ``cache``
    (plus ``group`` and ``keys[k]`` per piece) every large piece gets its own moments, which are added up; a
    piece whose key matches one of its kept versions reuses it, and a changed piece whose only mapped axis is
    an :class:`AxisMap` is brought up to date from the closest kept version: the samples of the merged units
    whose members (or scale) changed are subtracted and the new ones added, when that is at most half of them.
    The result then differs from a recomputation only in rounding.
    """
    n = len(pieces)
    num_pieces = len(pieces[0])
    transformed: dict = {}

    def transformed_piece(k: int):
        if k not in transformed:
            tensors, axes = [], []
            for i in range(n):
                t, axis = _transformed(pieces[i][k], f"model {i} piece {k}")
                tensors.append(t)
                axes.append(axis)
            for i in range(1, n):
                if tensors[i].shape != tensors[0].shape or axes[i] != axes[0]:
                    raise ValueError(
                        f"piece {k}: model {i} gives shape {tuple(tensors[i].shape)} (axis {axes[i]}) but model 0 "
                        f"gives {tuple(tensors[0].shape)} (axis {axes[0]}) after the transforms"
                    )
            transformed[k] = (tensors, axes)
        return transformed[k]

    if cache is None:  # validate everything up front (the cached path is fed by the library itself)
        for k in range(num_pieces):
            transformed_piece(k)
    units = None
    for k in range(num_pieces):
        t, axis = pieces[0][k][0], int(pieces[0][k][1])
        if units is None:
            units = t.shape[axis]
        elif t.shape[axis] != units:
            raise ValueError(f"piece {k} has {t.shape[axis]} units on its axis, piece 0 has {units}")
    first = pieces[0][0][0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    f = n * units
    shift = cache.shifts.get(group) if cache is not None else None
    if shift is None:
        shift = _unit_shift(pieces, n, dtype)
        if cache is not None:
            cache.shifts[group] = shift

    def fresh() -> CorrelationAccumulator:
        acc = CorrelationAccumulator(f, device=first.device, dtype=dtype, backend="native")
        acc._shift = shift  # a common shift: accumulators add without rebasing
        return acc

    total = fresh()
    small = []
    for k in range(num_pieces):
        per_unit = pieces[0][k][0].numel() // max(units, 1)
        if per_unit < _SMALL_PIECE or f * f * per_unit < _SMALL_WORK:
            small.append(k)
            continue
        if cache is None:
            tensors, axes = transformed_piece(k)
            total.update(tensors, axes)
            continue
        entry_key = (group, k)
        key = keys[k] if keys is not None else None
        # [(key, accumulator, slot signature, generation)], most recently used last
        kept = cache.entries.setdefault(entry_key, [])
        hit = next((v for v in range(len(kept)) if kept[v][0] == key), None) if cache.reuse else None
        if hit is not None:
            cache.reused += 1
            kept.append(kept.pop(hit))
            total.merge(kept[-1][1])
            continue
        acc, generation = None, 0
        sig = _slot_signature(pieces, k, n) if cache.reuse and cache.incremental else None
        if sig is not None:
            # Bring the closest kept version up to date: remove the samples of its slots whose content is gone,
            # add those of the new slots. The descent changes a tenth to a quarter of a neighbour's merged
            # units per re-solve, so this is a fraction of the product; past half the slots, recompute.
            best = None
            for _, old_acc, old_sig, old_gen in kept:
                if old_sig is None or old_sig[0] != sig[0] or old_gen >= cache.max_generations:
                    continue
                if len(old_sig[2]) != len(sig[2]) or old_sig[1][0].labels.numel() != sig[1][0].labels.numel():
                    continue
                removed, added = _slot_diff(old_sig[3], old_sig[2], sig[3], sig[2])
                if best is None or len(removed) + len(added) < best[0]:
                    best = (len(removed) + len(added), old_acc, old_sig, old_gen, removed, added)
            if best is not None and best[0] <= len(sig[2]) // 2:
                _, old_acc, old_sig, old_gen, removed, added = best
                acc = copy.copy(old_acc)  # the kept version stays as it is
                acc._moment = old_acc._moment.clone()
                acc._sums = old_acc._sums.clone()
                acc._nonfinite = old_acc._nonfinite.clone()
                unit_axis = int(pieces[0][k][1]) % pieces[0][k][0].dim()
                if added:
                    acc.update(_slot_rows(pieces, k, n, sig[0], sig[1], added), unit_axis)
                if removed:
                    gone = fresh().update(_slot_rows(pieces, k, n, old_sig[0], old_sig[1], removed), unit_axis)
                    acc._moment -= gone._moment
                    acc._sums -= gone._sums
                    acc._count -= gone._count
                    acc._nonfinite -= gone._nonfinite
                acc._final = None
                generation = old_gen + 1
                cache.updated += 1
        if acc is None:
            tensors, axes = transformed_piece(k)
            acc = fresh().update(tensors, axes)
            cache.computed += 1
        total.merge(acc)
        size = f * f * 8
        if kept and (len(kept) >= cache.versions or cache.bytes + size > cache.budget_bytes):
            kept.pop(0)  # the least recently used version of this piece
            cache.bytes -= size
        if cache.bytes + size <= cache.budget_bytes:
            kept.append((key, acc, sig, generation))
            cache.bytes += size
    if small:
        # one update over the stacked rows [units, Σ entries] of every small piece, per model
        stacked = []
        for i in range(n):
            rows = []
            for k in small:
                tensors, axes = transformed_piece(k)
                rows.append(tensors[i].movedim(axes[i], 0).reshape(units, -1).to(dtype))
            stacked.append(torch.cat(rows, dim=1))
        total.update(stacked, channel_dim=0)
    return total
