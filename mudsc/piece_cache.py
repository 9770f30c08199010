"""Weight moments kept between the re-solves of the MuDSC descent: :class:`PieceCache`.

A group's weight similarity is a sum over its pieces (member tensors, :mod:`mudsc.similarity`), and piece k's
moments (a :class:`mudsc.CorrelationAccumulator` about the group's common shift) depend only on its weights and
on the maps of its other axes. The cache keeps, per ``(group, piece)``, the last ``versions`` moments with the
key of the maps they were computed under (any comparable value; the descent uses the maps' labels):

- :meth:`PieceCache.lookup`: a kept version under the same key is reused as it is;
- :meth:`PieceCache.update`: a changed piece whose only mapped axis is an :class:`mudsc.AxisMap` is brought up
  to date from the closest kept version. Merged unit ("slot") s of that axis contributes its own samples, which
  depend only on which units of each model it sums and on its scale (its *slot key*); the samples of the slots
  whose content is gone are subtracted and the new slots' samples added, when that is at most half the slots
  and the version has had fewer than ``max_generations`` such updates;
- :meth:`PieceCache.store`: the new version is kept, the least recently used one of that piece dropped past
  ``versions`` or past ``budget_bytes`` of float64 moments over all groups.

An updated version differs from a recomputation only in float64 rounding. ``reuse=False`` computes every piece
(the same arithmetic as without a cache, for tests); ``incremental=False`` recomputes changed pieces in full.
Pieces whose product is under ``small_work`` multiply-adds are stacked into one product by the caller instead
of being cached (:func:`mudsc.similarity.weight_moments`).
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .maps import AxisMap
from .stats import CorrelationAccumulator

__all__ = ["PieceCache", "SlotSignature"]

SMALL_WORK = 1 << 24
"""Default ``small_work``: pieces whose product is under this many multiply-adds are stacked, not cached."""


class SlotSignature(NamedTuple):
    """The merged units of the one mapped axis of a piece: ``axis``, the per-model ``maps``, the key of every
    slot (``keys[s]``: the members of slot s in each model and its scale) and their multiset ``counts``."""

    axis: int
    maps: List[AxisMap]
    keys: List[tuple]
    counts: Counter


class _Version(NamedTuple):
    """One kept version of a piece: the key it was computed under, its moments, its slot signature (None when
    it cannot be updated) and how many incremental updates it is away from a full product."""

    key: Any
    moments: CorrelationAccumulator
    signature: Optional[SlotSignature]
    generation: int


class PieceCache:
    """Per-piece weight moments kept between :func:`mudsc.similarity.weight_moments` calls (module docstring).

    Args:
        budget_bytes: cap on the float64 moments kept over all groups (a ViT-L MLP piece holds 512 MiB).
        versions: versions kept per piece (the descent returns to earlier maps after a sweep without
            improvement, so older versions get reused).
        reuse: reuse kept versions at all (False: every piece is computed).
        incremental: bring changed pieces up to date from a kept version.
        max_generations: incremental updates in a row before a piece is recomputed in full.
        small_work: pieces under this many multiply-adds are stacked into one product, not cached.

    Counters: ``reused``, ``computed`` (full products) and ``updated`` (incremental updates).
    """

    def __init__(self, budget_bytes: int = 1 << 30, versions: int = 6, reuse: bool = True, incremental: bool = True,
                 max_generations: int = 8, small_work: int = SMALL_WORK) -> None:
        self.budget_bytes = int(budget_bytes)
        self.versions = max(1, int(versions))
        self.reuse = bool(reuse)
        self.incremental = bool(incremental)
        self.max_generations = int(max_generations)
        self.small_work = int(small_work)
        self.bytes = 0
        self.reused = 0
        self.computed = 0
        self.updated = 0
        self._entries: Dict[Any, List[_Version]] = {}
        self._shifts: Dict[Any, torch.Tensor] = {}

    def shift(self, group: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The common shift of ``group``'s accumulators: ``compute()`` the first time, then the kept one."""
        if group not in self._shifts:
            self._shifts[group] = compute()
        return self._shifts[group]

    def lookup(self, entry: Any, key: Any) -> Optional[CorrelationAccumulator]:
        """The kept moments of piece ``entry`` computed under ``key`` (marked most recently used), or None."""
        if not self.reuse:
            return None
        kept = self._entries.setdefault(entry, [])
        hit = next((v for v in range(len(kept)) if kept[v].key == key), None)
        if hit is None:
            return None
        self.reused += 1
        kept.append(kept.pop(hit))
        return kept[-1].moments

    def signature(self, pieces: Sequence[Sequence[tuple]], k: int) -> Optional[SlotSignature]:
        """Piece ``k``'s :class:`SlotSignature` when incremental updates are on and it can be updated."""
        if not (self.reuse and self.incremental):
            return None
        return slot_signature(pieces, k, len(pieces))

    def update(self, entry: Any, pieces: Sequence[Sequence[tuple]], k: int, sig: Optional[SlotSignature],
               fresh: Callable[[], CorrelationAccumulator]) -> Optional[Tuple[CorrelationAccumulator, int]]:
        """``(moments, generation)`` of piece ``k`` brought up to date from the closest kept version of
        ``entry`` (slots removed and added), or None when no version is close enough. ``fresh()`` makes an empty
        accumulator about the group's shift."""
        if sig is None:
            return None
        best = self._closest(entry, sig)
        if best is None or best[0] > len(sig.keys) // 2:
            return None
        _, old, removed, added = best
        acc = old.moments.copy()  # the kept version stays as it is
        unit_axis = int(pieces[0][k][1]) % pieces[0][k][0].dim()
        if added:
            acc.update(slot_rows(pieces, k, sig.axis, sig.maps, added), unit_axis)
        if removed:
            sig_old = old.signature
            acc.subtract(fresh().update(slot_rows(pieces, k, sig_old.axis, sig_old.maps, removed), unit_axis))
        self.updated += 1
        return acc, old.generation + 1

    def _closest(self, entry: Any, sig: SlotSignature) -> Optional[tuple]:
        """``(slots to change, version, removed slots, added slots)`` of the kept version of ``entry`` that
        needs the fewest slot changes to become ``sig``, among those that can be updated."""
        best = None
        for old in self._entries.get(entry, []):
            s = old.signature
            if s is None or s.axis != sig.axis or old.generation >= self.max_generations:
                continue
            if len(s.keys) != len(sig.keys) or s.maps[0].labels.numel() != sig.maps[0].labels.numel():
                continue
            removed, added = slot_diff(s.counts, s.keys, sig.counts, sig.keys)
            if best is None or len(removed) + len(added) < best[0]:
                best = (len(removed) + len(added), old, removed, added)
        return best

    def store(self, entry: Any, key: Any, moments: CorrelationAccumulator, sig: Optional[SlotSignature],
              generation: int) -> None:
        """Keep ``moments`` as the newest version of ``entry`` (dropping its least recently used version past
        ``versions`` or the byte budget)."""
        kept = self._entries.setdefault(entry, [])
        f = moments.num_features
        size = f * f * 8
        if kept and (len(kept) >= self.versions or self.bytes + size > self.budget_bytes):
            kept.pop(0)
            self.bytes -= size
        if self.bytes + size <= self.budget_bytes:
            kept.append(_Version(key, moments, sig, generation))
            self.bytes += size

    def counters(self) -> Dict[str, int]:
        """``{"computed", "reused", "updated"}``: what the pieces looked up so far took."""
        return {"computed": self.computed, "reused": self.reused, "updated": self.updated}


def slot_signature(pieces: Sequence[Sequence[tuple]], k: int, n: int) -> Optional[SlotSignature]:
    """The :class:`SlotSignature` of piece ``k`` when exactly one of its other axes is transformed, by an
    :class:`AxisMap` of the same length and size in every model (and one scale); else None."""
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
    return SlotSignature(axis, maps, keys, Counter(keys))


def slot_diff(old_counts: Counter, old_keys: list, new_counts: Counter, new_keys: list) -> tuple:
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


def slot_rows(pieces, k: int, axis: int, maps: list, slots: list) -> list:
    """Per model, piece ``k`` transformed on ``axis`` to just the given slots (in that order)."""
    sel = torch.as_tensor(slots, dtype=torch.long)
    out = []
    for i in range(len(pieces)):
        x, m = pieces[i][k][0].detach(), maps[i]
        where = torch.full((m.size,), -1, dtype=torch.long)
        where[sel] = torch.arange(len(slots))
        lab = where[m.labels]
        pos = torch.nonzero(lab >= 0).view(-1)
        scale = None if m.scale is None else m.scale[sel]
        out.append(AxisMap(lab[pos], len(slots), scale).apply(x.index_select(axis, pos.to(x.device)), axis))
    return out
