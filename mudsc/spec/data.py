"""The permutation-spec data model: groups of (tensor, axis) members that share one unit index space.

A :class:`PermSpec` lists permutation groups. Group ``g`` has ``size`` units per model; permuting a model by
``perm: int64[size]`` ("new unit j takes old unit perm[j]") at every member of every group leaves the model's
function unchanged (this is what :func:`mudsc.check_spec` verifies).

Member layout. A member is one axis of one parameter or buffer (a ``state_dict`` key). Along that axis the member
occupies the indices ``offset + o·span + c·inner + i`` for ``o < outer``, ``c < size`` (the group's unit) and
``i < inner``. The common cases:

- a whole axis: ``offset 0, outer 1, inner 1`` (``Linear.weight`` axis 0, ``BatchNorm.bias`` axis 0);
- a slice of a fused axis: ``offset > 0`` (the q, k or v third of a fused ``qkv.weight`` axis 0);
- a flattened conv channel: ``inner = H·W`` (the first ``Linear`` after ``flatten`` of ``[B, C, H, W]``).

Block structure. A group with ``num_blocks = b > 1`` (attention heads, GroupNorm groups) splits its units into b
contiguous blocks of ``size / b``; only block-respecting permutations are allowed (move whole blocks, and permute
freely inside each block). Groups with the same ``block_tie`` must use one block permutation (q/k and v/o of one
attention layer share the head permutation).

Views. ``PermSpec.views`` (``{tensor name: View}``, see ``views.py``) lists tensors stored compactly (a grouped
convolution's weight, a per-head table): members address their *dense* form, which every stage reads and writes
through ``views.expand`` / ``views.compact``.

Roles. ``"output"``: the axis carries the group's units as produced values (weight rows, biases, norm
parameters, running statistics, ``cls_token``); merging averages them. ``"input"``: the axis consumes the units
(weight columns); merging sums the columns of units merged together.

Taps. Where to observe a group's activations: ``module`` (qualified name), ``kind`` ("input": first positional
argument of the module's forward, read with a forward pre-hook; "output": its return value, forward hook),
``channel_dim`` (the axis holding the units: 1 for ``[B, C, H, W]``, -1 for ``[B, T, C]``), optional
``channel_slice = (start, stop)`` along that axis (fused outputs), and optional ``linear = {"weight", "bias",
"rows"}`` meaning "apply ``F.linear`` with those rows of that weight/bias to the tapped tensor first" (for
``nn.MultiheadAttention``, whose q/k/v never exist as a module's input or output). Every axis other than
``channel_dim`` is a sample axis. A collector must consume the tensor inside the hook (in-place activations may
overwrite it later).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch

from .views import View

ROLES = ("output", "input")
TAP_KINDS = ("input", "output")


@dataclass(frozen=True)
class Member:
    """One axis (or a structured part of one axis) of a parameter/buffer that carries a group's units.

    Attributes:
        name: ``state_dict`` key of the parameter or buffer.
        axis: the tensor axis (non-negative).
        role: "output" (produces the units: averaged when merging) or "input" (consumes them: summed).
        offset, outer, span, inner: the member's indices along ``axis`` are
            ``offset + o·span + c·inner + i`` (o < outer, c < group size, i < inner); ``span`` defaults to
            ``size·inner`` when 0.
        similarity: False for tensors that are permuted/merged but must not enter weight-similarity vectors
            (BatchNorm running statistics).
    """

    name: str
    axis: int
    role: str
    offset: int = 0
    outer: int = 1
    span: int = 0
    inner: int = 1
    similarity: bool = True

    def indices(self, size: int) -> torch.Tensor:
        """``int64[outer, size, inner]``: the axis indices this member occupies, unit c on the middle axis."""
        span = self.span or size * self.inner
        o = torch.arange(self.outer).view(-1, 1, 1) * span
        c = torch.arange(size).view(1, -1, 1) * self.inner
        i = torch.arange(self.inner).view(1, 1, -1)
        return self.offset + o + c + i

    def extent(self, size: int) -> int:
        """One past the largest axis index the member touches."""
        span = self.span or size * self.inner
        return self.offset + (self.outer - 1) * span + size * self.inner


@dataclass(frozen=True)
class Tap:
    """Where a group's activations are observed (see the module docstring for the collector contract)."""

    module: str
    kind: str
    channel_dim: int
    channel_slice: Optional[Tuple[int, int]] = None
    linear: Optional[Dict[str, object]] = None


@dataclass
class Group:
    """A permutation group: ``size`` units per model shared by all ``members``.

    Attributes:
        name: unique, readable (derived from the first producing tensor; ``[a:b]`` marks a fused slice).
        size: units per model.
        members: the (tensor, axis, role, layout) entries.
        num_blocks: 1 when unstructured; else heads / GroupNorm groups (each of ``size // num_blocks`` units).
        block_tie: groups with equal non-None ``block_tie`` share the block permutation.
        taps: activation taps, in preference order (all of them are meant to be used; samples concatenate).
    """

    name: str
    size: int
    members: List[Member]
    num_blocks: int = 1
    block_tie: Optional[str] = None
    taps: List[Tap] = field(default_factory=list)

    @property
    def block_size(self) -> int:
        """Units per block (``size // num_blocks``)."""
        return self.size // self.num_blocks


class PermSpec:
    """An ordered collection of :class:`Group` s, with lookups by group and by tensor name."""

    def __init__(self, groups: List[Group], views: Optional[Mapping[str, View]] = None):
        names = [g.name for g in groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"group names must be unique, got duplicates {duplicates}")
        for g in groups:
            _validate_group(g)
        self.groups: List[Group] = list(groups)
        self.views: Dict[str, View] = dict(views or {})
        for name, view in self.views.items():
            if not isinstance(view, View):
                raise TypeError(f"views[{name!r}] must be a mudsc.spec.views.View, got {type(view).__name__}")
        self._by_name = {g.name: g for g in self.groups}
        self._by_tensor: Dict[str, List[Tuple[Member, Group]]] = {}
        for g in self.groups:
            for m in g.members:
                self._by_tensor.setdefault(m.name, []).append((m, g))
        for entries in self._by_tensor.values():
            entries.sort(key=lambda mg: (mg[0].axis, mg[0].offset))

    # -- lookups ---------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Group:
        if name not in self._by_name:
            raise KeyError(f"no group named {name!r}; groups are {list(self._by_name)[:8]}...")
        return self._by_name[name]

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def tensor_names(self) -> List[str]:
        """Every parameter/buffer name that is a member of some group."""
        return list(self._by_tensor)

    def members_of(self, name: str) -> List[Tuple[Member, Group]]:
        """``[(member, group)]`` for tensor ``name`` sorted by (axis, offset); empty when it is in no group."""
        return list(self._by_tensor.get(name, []))

    def axes_of(self, name: str, ndim: Optional[int] = None) -> List[Tuple[int, Optional[str], Optional[str]]]:
        """``[(axis, group name or None, role or None)]`` for tensor ``name``.

        One entry per member (a fused axis has several), sorted by (axis, offset). With ``ndim``, every axis
        without a member gets ``(axis, None, None)`` too, so the list covers the whole tensor.
        """
        out = [(m.axis, g.name, m.role) for m, g in self._by_tensor.get(name, [])]
        if ndim is not None:
            covered = {a for a, _, _ in out}
            out += [(a, None, None) for a in range(ndim) if a not in covered]
            out.sort(key=lambda t: t[0])
        return out

    # -- permutations ----------------------------------------------------------------------------------------
    def random_permutations(self, seed: int = 0) -> Dict[str, torch.Tensor]:
        """``{group name: int64[size]}``, block-respecting; tied groups share the block permutation.

        Block permutation π (over blocks) and per-block permutations σ_b give
        ``perm[b·bs + j] = π[b]·bs + σ_b[j]``.
        """
        gen = torch.Generator().manual_seed(seed)
        tie_perm: Dict[str, torch.Tensor] = {}
        out = {}
        for g in self.groups:
            if g.num_blocks == 1:
                out[g.name] = torch.randperm(g.size, generator=gen)
                continue
            if g.block_tie is not None:
                if g.block_tie not in tie_perm:
                    tie_perm[g.block_tie] = torch.randperm(g.num_blocks, generator=gen)
                blocks = tie_perm[g.block_tie]
            else:
                blocks = torch.randperm(g.num_blocks, generator=gen)
            bs = g.block_size
            within = torch.stack([torch.randperm(bs, generator=gen) for _ in range(g.num_blocks)])
            out[g.name] = (blocks.view(-1, 1) * bs + within).reshape(-1)
        return out

    def identity_permutations(self) -> Dict[str, torch.Tensor]:
        """``{group name: arange(size)}``."""
        return {g.name: torch.arange(g.size) for g in self.groups}

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (``{"version": 1, "groups": [...]}``); inverse of :meth:`from_dict`."""
        groups = []
        for g in self.groups:
            groups.append(
                {
                    "name": g.name,
                    "size": g.size,
                    "num_blocks": g.num_blocks,
                    "block_tie": g.block_tie,
                    "members": [_member_to_dict(m) for m in g.members],
                    "taps": [_tap_to_dict(t) for t in g.taps],
                }
            )
        out = {"version": 1, "groups": groups}
        if self.views:  # absent when empty, so specs without views serialise as before
            out["views"] = {name: view.to_dict() for name, view in sorted(self.views.items())}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PermSpec":
        """Build from :meth:`to_dict` output or a hand-written dict of the same shape.

        Members may be ``{"name", "axis", "role", ...}`` dicts or ``[name, axis, role]`` lists; only ``name``,
        ``size`` and ``members`` are required per group.
        """
        if not isinstance(data, dict) or "groups" not in data:
            raise ValueError("a spec dict needs a 'groups' list")
        if data.get("version", 1) != 1:
            raise ValueError(f"unsupported spec version {data.get('version')!r}; this library reads version 1")
        groups = []
        for gd in data["groups"]:
            for key in ("name", "size", "members"):
                if key not in gd:
                    raise ValueError(f"group {gd.get('name', gd)!r} lacks the required key {key!r}")
            members = []
            for md in gd["members"]:
                if isinstance(md, (list, tuple)):
                    md = dict(zip(("name", "axis", "role"), md))
                members.append(Member(**md))
            taps = [
                Tap(
                    module=td["module"],
                    kind=td["kind"],
                    channel_dim=int(td["channel_dim"]),
                    channel_slice=tuple(td["channel_slice"]) if td.get("channel_slice") is not None else None,
                    linear=_linear_from_dict(td.get("linear")),
                )
                for td in gd.get("taps", [])
            ]
            groups.append(
                Group(
                    name=gd["name"],
                    size=int(gd["size"]),
                    members=members,
                    num_blocks=int(gd.get("num_blocks", 1)),
                    block_tie=gd.get("block_tie"),
                    taps=taps,
                )
            )
        views = {}
        for name, vd in (data.get("views") or {}).items():
            try:
                views[name] = View(**vd)
            except TypeError as e:
                raise ValueError(f"view of {name!r} must be {{kind, axis, blocks, repeats}}, got {vd!r}") from e
        return cls(groups, views)

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "PermSpec":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other) -> bool:
        return isinstance(other, PermSpec) and self.to_dict() == other.to_dict()

    # -- display ---------------------------------------------------------------------------------------------
    def __str__(self) -> str:
        rows = [("group", "size", "blocks", "tie", "members", "taps", "first members")]
        for g in self.groups:
            first = ", ".join(_short_member(m) for m in g.members[:3]) + (" ..." if len(g.members) > 3 else "")
            rows.append(
                (
                    g.name,
                    str(g.size),
                    "-" if g.num_blocks == 1 else f"{g.num_blocks}x{g.block_size}",
                    g.block_tie or "-",
                    str(len(g.members)),
                    str(len(g.taps)),
                    first,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"PermSpec: {len(self.groups)} groups"]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PermSpec({len(self.groups)} groups: {', '.join(g.name for g in self.groups[:4])}...)"


def _short_member(m: Member) -> str:
    tag = "out" if m.role == "output" else "in"
    extra = f"@{m.offset}" if m.offset else ""
    extra += f"x{m.inner}" if m.inner > 1 else ""
    return f"{m.name}[{m.axis}{extra}]:{tag}"


def _member_to_dict(m: Member) -> dict:
    d = {"name": m.name, "axis": m.axis, "role": m.role}
    defaults = Member("", 0, "output")
    for key, value in asdict(m).items():
        if key not in d and value != getattr(defaults, key):
            d[key] = value
    return d


def _tap_to_dict(t: Tap) -> dict:
    d = {"module": t.module, "kind": t.kind, "channel_dim": t.channel_dim}
    if t.channel_slice is not None:
        d["channel_slice"] = list(t.channel_slice)
    if t.linear is not None:
        d["linear"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.linear.items()}
    return d


def _linear_from_dict(d):
    if d is None:
        return None
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def _validate_group(g: Group) -> None:
    if g.size < 1:
        raise ValueError(f"group {g.name!r} has size {g.size}; sizes must be positive")
    if g.num_blocks < 1 or g.size % g.num_blocks:
        raise ValueError(f"group {g.name!r}: size {g.size} does not split into num_blocks={g.num_blocks} blocks")
    if not g.members:
        raise ValueError(f"group {g.name!r} has no members")
    for m in g.members:
        if m.role not in ROLES:
            raise ValueError(f"member {m.name!r} axis {m.axis} of group {g.name!r} has role {m.role!r}; "
                             f"expected one of {ROLES}")
        if m.axis < 0 or m.offset < 0 or m.outer < 1 or m.inner < 1:
            raise ValueError(f"member {m.name!r} of group {g.name!r} has an invalid layout {m}")
    for t in g.taps:
        if t.kind not in TAP_KINDS:
            raise ValueError(f"tap on {t.module!r} of group {g.name!r} has kind {t.kind!r}; expected {TAP_KINDS}")
