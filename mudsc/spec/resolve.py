"""Resolution: turn the channel spaces and parameter dims recorded by a trace into a :class:`PermSpec`.

Every non-fixed leaf space (a space after all partitions) of more than one channel that some parameter axis holds
becomes a :class:`~mudsc.spec.data.Group`, in the order parameters were first met. Its members are those axes
(layout from :func:`~mudsc.spec.factors.pieces`); its name comes from the first parameter producing it
(``[a:b]`` marks a fused slice, ``#k`` a repeat); its block count from the space's block stride (heads, GroupNorm
groups); its ``block_tie`` from the ties between block digits, grouped with a second
:class:`~mudsc.spec.spaces.Spaces` store over the groups' block indices; its taps from ``taps.py``.

A parameter axis holding a space aliased to the block digit of another (``Spaces.alias_block``: a table with one
entry per head, added to attention logits) is read through a ``"repeat"`` view (``views.py``): a member of the
head-structured group, each entry standing for its block's units.

An axis or space that has no such form (a product of two permutable factors, a lone head digit, nested blocks,
a fused part straddling blocks, a head-tied partner that is fixed) is a :class:`~mudsc.spec.factors.ResolveProblem`:
with ``strict`` it raises :class:`SpecTraceError`; otherwise its spaces are fixed with a warning and resolution
restarts (at most 100 times).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, List, Optional, Tuple

from .data import Group, Member, PermSpec
from .factors import Dim, Factor, ResolveProblem, normalize, pieces
from .spaces import Spaces
from .state import SpecTraceError, TraceState
from .taps import collect_taps
from .views import View

_SIMILARITY_EXCLUDED_SUFFIXES = ("running_mean", "running_var")
_MAX_RESTARTS = 100


@dataclasses.dataclass
class _Candidate:
    """A future group: its members, the name given by its first producer, its size and block count."""

    members: List[Member]
    name: Optional[str]
    size: int
    num_blocks: int = 1


def build_spec(state: TraceState, strict: bool) -> PermSpec:
    """The spec of a finished trace; unresolvable spaces raise (``strict``) or are fixed with a warning."""
    sp = state.sp
    for _ in range(_MAX_RESTARTS):
        sp.propagate()
        try:
            return _build_once(state)
        except ResolveProblem as problem:
            if strict:
                origins = sorted({sp.origin[s] for s in problem.spaces})
                raise SpecTraceError(f"{problem} (channels created at fx node(s) {origins}); pass strict=False to "
                                     "leave them unpermuted") from None
            warnings.warn(f"{problem}; those channels are left unpermuted", stacklevel=3)
            for s in problem.spaces:
                sp.fix(s)
    raise SpecTraceError(f"could not settle the spec after fixing {_MAX_RESTARTS} unsupported spaces")


def _build_once(state: TraceState) -> PermSpec:
    """One resolution attempt (raises :class:`ResolveProblem` naming the spaces to fix)."""
    _check_alignment(state.sp)
    param_dims, views = dense_dims(state)
    found = _collect_members(state, (param_dims, views))
    _count_blocks(state.sp, found)
    tie_classes = _tie_classes(state.sp, found)
    names = _group_names(found)
    taps = collect_taps(state, {leaf: entry.members for leaf, entry in found.items()})
    groups = []
    for leaf, entry in found.items():
        tied = tie_classes[leaf]
        tie = names[tied[0]] if len(tied) > 1 and entry.num_blocks > 1 else None
        groups.append(Group(names[leaf], entry.size, entry.members, entry.num_blocks, tie, taps[leaf]))
    members = {m.name for g in groups for m in g.members}
    return PermSpec(groups, {name: view for name, view in views.items() if name in members})


def _check_alignment(sp: Spaces) -> None:
    """Raise for a permutable fused part that straddles a block boundary of its parent."""
    for space, stride in sorted(sp.misaligned):
        if not sp.fixed[sp.find(space)]:
            raise ResolveProblem(f"a fused part of {sp.size[sp.find(space)]} channels straddles blocks of {stride} "
                                 "channels (e.g. GroupNorm groups across a concatenation)", [space])


def _block_aliases(sp: Spaces) -> Dict[int, Tuple[int, int]]:
    """``{root of a: (root of b, stride)}`` of ``sp.block_aliases``; one table aliased to the blocks of two spaces
    ties their block digits (both index the same heads)."""
    out: Dict[int, Tuple[int, int]] = {}
    for a, b, stride in sp.block_aliases:
        ra, rb = sp.find(a), sp.find(b)
        if ra in out and out[ra][0] != rb:
            sp.tie(out[ra][0], rb)
        out.setdefault(ra, (rb, stride))
    return out


def dense_dims(state: TraceState) -> Tuple[Dict[str, List[Optional[Dim]]], Dict[str, View]]:
    """The parameter dims the members are read from, and the views they need (``views.py``): an axis that holds
    only a space aliased to the block digit of another (a per-head table) becomes that space, repeated per block."""
    sp = state.sp
    aliases = _block_aliases(sp)
    views = dict(state.views)
    out: Dict[str, List[Optional[Dim]]] = {}
    for name in state.param_order:
        dims = list(state.param_dims[name])
        for axis, dim in enumerate(dims):
            hits = [f for f in (dim or ()) if f.space is not None and sp.find(f.space) in aliases]
            if not hits:
                continue
            real = [f for f in normalize(sp, dim) if f.space is not None]
            root = sp.find(hits[0].space)
            target, stride = aliases[root]
            if len(normalize(sp, dim)) != 1 or name in views:
                raise ResolveProblem(f"{name} axis {axis} holds a per-block table with other entries", [root, target])
            if sp.fixed[root] and not sp.fixed[target]:
                raise ResolveProblem(f"{name} axis {axis} is a per-block table that must keep its order", [target])
            dims[axis] = (Factor(target, real[0].size * stride, 1),)
            views[name] = View("repeat", axis, real[0].size, stride)
        out[name] = dims
    return out, views


def _collect_members(state: TraceState, dense=None) -> Dict[int, _Candidate]:
    """Per leaf space (in order of first appearance): the parameter axes holding it, as members (``dense``:
    :func:`dense_dims`'s result, computed when not given). A group is named after its first producing tensor that
    is not a per-head table (a table read before the projections would name the heads' group after itself)."""
    param_dims, views = dense_dims(state) if dense is None else dense
    found: Dict[int, _Candidate] = {}
    for name in state.param_order:
        for axis, dim in enumerate(param_dims[name]):
            if dim is None:
                continue
            try:
                axis_pieces = pieces(state.sp, dim)
            except ResolveProblem as e:
                raise ResolveProblem(f"{name} axis {axis} {e}", e.spaces) from None
            role = state.param_roles.get((name, axis), "output")
            similarity = not name.endswith(_SIMILARITY_EXCLUDED_SUFFIXES)
            for p in axis_pieces:
                entry = found.setdefault(p.leaf, _Candidate([], None, p.size))
                member = Member(name, axis, role, p.offset, p.outer, p.span if p.outer > 1 else 0, p.inner,
                                similarity)
                if member not in entry.members:
                    entry.members.append(member)
                if entry.name is None and role == "output" and views.get(name, None) is None:
                    base = name.rsplit(".", 1)[0] if "." in name else name
                    entry.name = base if (p.start, p.stop) == (0, p.total) else f"{base}[{p.start}:{p.stop}]"
    return found


def _count_blocks(sp: Spaces, found: Dict[int, _Candidate]) -> None:
    """Set each candidate's block count from its space's block stride (one stride at most, dividing the size)."""
    for leaf, entry in found.items():
        strides = sorted(st for st in sp.strides[leaf] if st < entry.size)
        if len(strides) > 1:
            raise ResolveProblem(f"group of {entry.size} channels has nested block structures {strides}", [leaf])
        if strides and entry.size % strides[0]:
            raise ResolveProblem(f"group of {entry.size} channels does not split into blocks of {strides[0]}",
                                 [leaf])
        entry.num_blocks = entry.size // strides[0] if strides else 1


def _tie_classes(sp: Spaces, found: Dict[int, _Candidate]) -> Dict[int, List[int]]:
    """Per leaf: the leaves whose block digits are tied to its own (itself included, in group order)."""
    blocks = Spaces()  # one space of block indices per candidate group
    index = {leaf: blocks.new(entry.num_blocks, sp.origin[leaf]) for leaf, entry in found.items()}
    for a, b in sp.ties:
        ra, rb = sp.find(a), sp.find(b)
        if ra == rb:
            continue
        fixed_a, fixed_b = ra not in found, rb not in found
        if fixed_a != fixed_b:  # one side is unpermuted: its partner's blocks must stay in place too
            raise ResolveProblem("a head-tied partner is unpermuted", [ra if fixed_b else rb])
        if fixed_a:
            continue
        if found[ra].num_blocks != found[rb].num_blocks:
            raise ResolveProblem(
                f"tied groups have {found[ra].num_blocks} and {found[rb].num_blocks} blocks", [ra, rb])
        blocks.union(index[ra], index[rb])
    classes: Dict[int, List[int]] = {}
    for leaf in found:
        classes.setdefault(blocks.find(index[leaf]), []).append(leaf)
    return {leaf: classes[blocks.find(index[leaf])] for leaf in found}


def _group_names(found: Dict[int, _Candidate]) -> Dict[int, str]:
    """Unique group names: the producer's name, else the first member's module; repeats get ``#2``, ``#3``..."""
    names: Dict[int, str] = {}
    used = set()
    for leaf, entry in found.items():
        base = entry.name or entry.members[0].name.rsplit(".", 1)[0]
        name, k = base, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        names[leaf] = name
    return names
