"""Weight vectors of a group's units under the current maps of the other groups (ALGORITHM.md §3, §5).

Model i's unit u owns a weight vector: the slices at u of the group's similarity members (its *pieces*), with
the other axes of each piece mapped by the groups that own them. :class:`MapState` holds the current map of
every group (None: not matched yet, read as the identity) and builds those pieces for
:func:`mudsc.weight_similarity` / :func:`mudsc.similarity.weight_moments`.

Axis rule (ALGORITHM.md §8.1.10). Default ``axis_rule="merge"``: other groups' axes are transformed exactly as in
the final merge (output axes by the scaled merge ``N·M_i``: cluster means; input axes by the unmerge ``U_i``:
sums of merged columns), so a unit's weight vector is the slice of the tensors it will be averaged with.
``axis_rule="original"`` reproduces the original's swapped assignment (input axes ``N·M_i`` with its ``+1e-5``,
output axes ``U_i``). For alignment with N = 2 both agree to rounding; for zip they differ on clusters whose
size differs from N.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..maps import ORIGINAL_MERGE_EPS, AxisMap, MatchResult, merge_scale
from ..spec import Group, PermSpec

__all__ = ["MapState"]


class MapState:
    """Current unit maps of all groups (None = identity) and the per-axis index maps derived from them."""

    def __init__(self, spec: PermSpec, num_models: int, axis_rule: str):
        self.spec = spec
        self.n = num_models
        self.axis_rule = axis_rule
        self.maps: Dict[str, Optional[MatchResult]] = {g.name: None for g in spec.groups}

    def labels(self, group: Group) -> Tuple[torch.Tensor, int, torch.Tensor]:
        """``(labels int64[N·size], K, counts float64[K])`` of the group's current map (identity if none)."""
        r = self.maps[group.name]
        if r is None:
            lab = torch.arange(group.size).repeat(self.n)
            k = group.size
        else:
            lab = torch.as_tensor(np.asarray(r.labels), dtype=torch.long)
            k = int(r.num_outputs)
        return lab, k, torch.bincount(lab, minlength=k).double()

    def map_key(self, name: str):
        """A comparable key of group ``name``'s current map (None for the identity)."""
        r = self.maps[name]
        return None if r is None else (int(r.num_outputs), np.asarray(r.labels, dtype=np.int64).tobytes())

    def axis_map(self, length: int, members, model: int) -> Optional[AxisMap]:
        """One :class:`AxisMap` over a whole tensor axis of ``length`` carrying ``members`` [(Member, Group)];
        positions outside the members pass through. None when it is the identity."""
        assigned = torch.full((length,), -1, dtype=torch.long)
        scales = []
        cursor = 0
        identity = True
        for member, group in members:
            lab, k, counts = self.labels(group)
            lab_i = lab[model * group.size:(model + 1) * group.size]
            pos = member.indices(group.size)
            o = torch.arange(member.outer).view(-1, 1, 1) * (k * member.inner)
            c = lab_i.view(1, -1, 1) * member.inner
            ii = torch.arange(member.inner).view(1, 1, -1)
            assigned[pos.reshape(-1)] = (cursor + o + c + ii).reshape(-1)
            averaged = (member.role == "output") == (self.axis_rule == "merge")
            eps = 0.0 if self.axis_rule == "merge" else ORIGINAL_MERGE_EPS
            scale = merge_scale(counts, self.n, eps) if averaged else torch.ones(k, dtype=torch.float64)
            scales.append(scale.view(1, -1, 1).expand(member.outer, k, member.inner).reshape(-1))
            if self.maps[group.name] is not None or eps:
                identity = False
            cursor += member.outer * k * member.inner
        if identity:
            return None
        rest = assigned < 0
        assigned[rest] = cursor + torch.arange(int(rest.sum()))
        scales.append(torch.ones(int(rest.sum()), dtype=torch.float64))
        scale = torch.cat(scales)
        return AxisMap(assigned, cursor + int(rest.sum()), None if bool((scale == 1).all()) else scale.float())

    def _similarity_members(self, group: Group, tensors: Sequence[Mapping[str, torch.Tensor]]):
        """``(member, {other axis: [(member, group)]})`` for every floating-point similarity member of ``group``:
        the pieces of :meth:`pieces`, in order, with the groups mapping their other axes."""
        for member in group.members:
            if not member.similarity or not tensors[0][member.name].is_floating_point():
                continue
            others: Dict[int, list] = {}
            for m2, g2 in self.spec.members_of(member.name):
                if m2.axis != member.axis:
                    others.setdefault(m2.axis, []).append((m2, g2))
            yield member, others

    def piece_neighbours(self, group: Group, tensors: Sequence[Mapping[str, torch.Tensor]]) -> List[List[str]]:
        """Per piece of :meth:`pieces` (same order), the names of the groups whose maps enter it."""
        return [sorted({g2.name for ms in others.values() for _, g2 in ms})
                for _, others in self._similarity_members(group, tensors)]

    def piece_keys(self, group: Group, tensors: Sequence[Mapping[str, torch.Tensor]]) -> List[tuple]:
        """Per piece of :meth:`pieces`, the keys of the current maps that enter it (a :class:`PieceCache` key)."""
        return [tuple(self.map_key(name) for name in names) for names in self.piece_neighbours(group, tensors)]

    def pieces(self, group: Group, tensors: Sequence[Mapping[str, torch.Tensor]]) -> List[list]:
        """``pieces[i]`` for :func:`mudsc.weight_similarity`: every similarity member of ``group`` in model i,
        narrowed to its units (the unit axis reshaped to ``(outer, size, inner)``), other axes mapped."""
        out: List[list] = [[] for _ in range(self.n)]
        for member, others in self._similarity_members(group, tensors):
            a = member.axis
            idx = member.indices(group.size).reshape(-1)
            for i in range(self.n):
                t = tensors[i][member.name].detach()
                whole = idx.numel() == t.shape[a] and member.offset == 0 and member.outer == 1
                x = t if whole else t.index_select(a, idx.to(t.device))
                shape = list(x.shape)
                shape[a:a + 1] = [member.outer, group.size, member.inner]
                x = x.reshape(shape)
                transforms = {}
                for b, ms in others.items():
                    amap = self.axis_map(t.shape[b], ms, i)
                    if amap is not None:
                        transforms[b if b < a else b + 2] = amap
                out[i].append((x, a + 1, transforms))
        return out
