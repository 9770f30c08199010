"""``trace(model, example_inputs)``: discover a model's permutation spec with torch.fx.

Method. The model is symbolically traced (``torch.fx``) and the graph is run once on ``example_inputs`` by an
interpreter that, next to every real value, carries a description of each tensor axis (a *dim*, see
``spaces.py``): which channel index space it holds, possibly split into blocks (heads) or fused slices. Handlers
per op state the constraints (a ``Linear`` identifies its weight's column space with the input's last axis and
creates a new space for its rows; ``add`` identifies the axes of its operands; a reshape splits or joins factors
using the concrete shapes; ``unbind`` of a fused ``qkv`` partitions its row space; ``q @ kᵀ`` identifies the
head-dim spaces of q and k and ties their head digits...). Model inputs and outputs fix whatever they touch.
At the end every non-fixed leaf space becomes a :class:`~mudsc.spec.data.Group`; parameters/buffers whose axes
hold that space become its members.

Unsupported constructs (an op without a handler, a reshape that mixes channels, grouped convolutions with
``1 < groups < channels`` that would need within-group structure) raise :class:`SpecTraceError` naming the fx
node with ``strict=True``; with ``strict=False`` the channels they touch are fixed (their groups are dropped) and
a warning names the node. Every traced spec is then verified by :func:`mudsc.spec.check.check_spec` unless
``check=False``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_arg

from .data import Group, Member, PermSpec, Tap
from .factors import ResolveProblem, Unsupported, pieces
from .handlers import handle_node
from .spaces import SpaceError
from .state import Call, TraceState, is_tensor


class SpecTraceError(ValueError):
    """The tracer met a construct it cannot prove permutation-invariant (message names the fx node)."""


_SIMILARITY_EXCLUDED_SUFFIXES = ("running_mean", "running_var")


class _SpecInterpreter(fx.Interpreter):
    """Runs the traced graph and, next to every value, its tensor info (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, strict: bool):
        super().__init__(gm)
        self.strict = strict
        self.state = TraceState(gm)
        self.info: Dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        """Run node ``n`` and record its result's tensor info (or the unsupported construct)."""
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = getattr(self, n.op)(n.target, args, kwargs)
        self.state.node = n
        iargs = map_arg(n.args, lambda a: self.info[a])
        ikwargs = map_arg(n.kwargs, lambda a: self.info[a])
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        call = Call(n, args, kwargs, iargs, ikwargs, result, module)
        try:
            self.info[n] = handle_node(self.state, call)
        except (Unsupported, SpaceError) as e:
            self.info[n] = self._unsupported(call, str(e))
        return result

    def _describe(self, c: Call) -> str:
        """The node, its target and its tensor input shapes, for messages."""
        n = c.node
        shapes = [tuple(a.shape) for a in list(c.args) + list(c.kwargs.values()) if is_tensor(a)]
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        if n.op == "call_module":
            target = f"{n.target} ({type(self.module.get_submodule(n.target)).__name__})"
        return f"fx node {n.name!r} ({n.op} {target}) with tensor input shapes {shapes}"

    def _unsupported(self, c: Call, reason: str):
        """Strict: raise naming the node. Else warn, fix the channels the node reads, and return a blank info."""
        message = f"cannot derive a permutation spec through {self._describe(c)}: {reason}"
        if self.strict:
            raise SpecTraceError(message + " (pass strict=False to leave the channels it touches unpermuted)")
        warnings.warn(message + "; the channels it touches are left unpermuted (their groups are dropped)",
                      stacklevel=3)
        for info in (c.iargs, c.ikwargs):
            self.state.fix_all(info)
        return self.state.none_info(c.result)


# -- resolution: spaces -> PermSpec --------------------------------------------------------------------------
def _build_spec(state: TraceState, strict: bool) -> PermSpec:
    sp = state.sp
    for _ in range(100):
        sp.propagate()
        try:
            return _build_spec_once(state)
        except ResolveProblem as problem:
            if strict:
                origins = sorted({sp.origin[s] for s in problem.spaces})
                raise SpecTraceError(f"{problem} (channels created at fx node(s) {origins}); pass strict=False to "
                                     "leave them unpermuted") from None
            warnings.warn(f"{problem}; those channels are left unpermuted", stacklevel=3)
            for s in problem.spaces:
                sp.fix(s)
    raise SpecTraceError("could not settle the spec after fixing 100 unsupported spaces")


def _build_spec_once(state: TraceState) -> PermSpec:
    sp = state.sp
    for space, stride in sorted(sp.misaligned):
        if not sp.fixed[sp.find(space)]:
            raise ResolveProblem(f"a fused part of {sp.size[sp.find(space)]} channels straddles blocks of {stride} "
                                 "channels (e.g. GroupNorm groups across a concatenation)", [space])
    found: Dict[int, dict] = {}
    for name in state.param_order:
        for axis, dim in enumerate(state.param_dims[name]):
            if dim is None:
                continue
            try:
                found_pieces = pieces(state.sp, dim)
            except ResolveProblem as e:
                raise ResolveProblem(f"{name} axis {axis} {e}", e.spaces) from None
            role = state.param_roles.get((name, axis), "output")
            similarity = not name.endswith(_SIMILARITY_EXCLUDED_SUFFIXES)
            for leaf, offset, outer, span, inner, size, lo, hi, n in found_pieces:
                entry = found.setdefault(leaf, {"members": [], "name": None, "size": size})
                member = Member(name, axis, role, offset, outer, span if outer > 1 else 0, inner, similarity)
                if member not in entry["members"]:
                    entry["members"].append(member)
                if entry["name"] is None and role == "output":
                    base = name.rsplit(".", 1)[0] if "." in name else name
                    entry["name"] = base if (lo, hi) == (0, n) else f"{base}[{lo}:{hi}]"
    # block structure
    for leaf, entry in found.items():
        strides = sorted(st for st in sp.strides[leaf] if st < entry["size"])
        if len(strides) > 1:
            raise ResolveProblem(f"group of {entry['size']} channels has nested block structures {strides}",
                                  [leaf])
        if strides and entry["size"] % strides[0]:
            raise ResolveProblem(f"group of {entry['size']} channels does not split into blocks of {strides[0]}",
                                  [leaf])
        entry["num_blocks"] = entry["size"] // strides[0] if strides else 1
    # ties between block digits
    tie_parent = {leaf: leaf for leaf in found}

    def tie_find(a):
        while tie_parent[a] != a:
            tie_parent[a] = tie_parent[tie_parent[a]]
            a = tie_parent[a]
        return a

    for a, b in sp.ties:
        ra, rb = sp.find(a), sp.find(b)
        if ra == rb:
            continue
        fixed_a, fixed_b = ra not in found, rb not in found
        if fixed_a != fixed_b:  # one side is unpermuted: its partner's blocks must stay in place too
            raise ResolveProblem("a head-tied partner is unpermuted", [ra if fixed_b else rb])
        if fixed_a:
            continue
        if found[ra]["num_blocks"] != found[rb]["num_blocks"]:
            raise ResolveProblem(
                f"tied groups have {found[ra]['num_blocks']} and {found[rb]['num_blocks']} blocks", [ra, rb])
        tie_parent[tie_find(ra)] = tie_find(rb)
    # order, names, taps
    order = list(found)
    names: Dict[int, str] = {}
    used = set()
    for leaf in order:
        entry = found[leaf]
        base = entry["name"] or entry["members"][0].name.rsplit(".", 1)[0]
        name, k = base, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        names[leaf] = name
    tie_members: Dict[int, List[int]] = {}
    for leaf in order:
        tie_members.setdefault(tie_find(leaf), []).append(leaf)
    taps = _collect_taps(state, found)
    groups = []
    for leaf in order:
        entry = found[leaf]
        cls = tie_members[tie_find(leaf)]
        tie = names[cls[0]] if len(cls) > 1 and entry["num_blocks"] > 1 else None
        groups.append(Group(names[leaf], entry["size"], entry["members"], entry["num_blocks"], tie, taps[leaf]))
    return PermSpec(groups)


def _collect_taps(state: TraceState, found: Dict[int, dict]) -> Dict[int, List[Tap]]:
    """Consumer inputs first; else the output of the last module producing the channels; else special taps."""
    consumers: Dict[int, List[Tap]] = {leaf: [] for leaf in found}
    producers: Dict[int, List[Tuple[int, Tap]]] = {leaf: [] for leaf in found}
    input_modules = {leaf: {m.name for m in e["members"] if m.role == "input"} for leaf, e in found.items()}
    # A tensor read by several modules (a downsampling block's conv1 and shortcut both read the residual
    # stream) is tapped once: a second tap would count the same samples twice in the group's statistics.
    # Not when an in-place op may change the tensor between the reads (fx keeps the node name).
    mutated = _mutated_in_place(state.gm)
    seen_inputs: Dict[int, set] = {leaf: set() for leaf in found}
    for index, (module, kind, info, source) in enumerate(state.module_taps):
        if not isinstance(info, tuple):
            continue
        for j, dim in enumerate(info):
            if not isinstance(dim, tuple):
                continue
            try:
                found_pieces = pieces(state.sp, dim)
            except ResolveProblem:
                continue
            for leaf, offset, outer, span, inner, size, lo, hi, n in found_pieces:
                if leaf not in found or outer != 1 or inner != 1:
                    continue
                tap = Tap(module, kind, -1 if j == len(info) - 1 else j, None if (lo, hi) == (0, n) else (lo, hi))
                prefix = module + "."
                if kind == "input" and any(name.startswith(prefix) for name in input_modules[leaf]):
                    key = (source, tap.channel_dim, tap.channel_slice)
                    if tap not in consumers[leaf] and key not in seen_inputs[leaf]:
                        if source not in mutated:
                            seen_inputs[leaf].add(key)
                        consumers[leaf].append(tap)
                elif kind == "output":
                    producers[leaf].append((index, tap))
    special: Dict[int, List[Tap]] = {}
    for space, tap in state.special_taps:
        special.setdefault(state.sp.find(space), []).append(tap)
    out = {}
    for leaf in found:
        if consumers[leaf]:
            out[leaf] = consumers[leaf]
        elif producers[leaf]:
            last = producers[leaf][-1][1].module
            out[leaf] = _unique([t for _, t in producers[leaf] if t.module == last])
        else:
            out[leaf] = _unique(special.get(leaf, []))
    return out


def _mutated_in_place(gm: fx.GraphModule) -> set:
    """Names of the fx nodes whose tensor some node may modify in place (``relu_``, ``x.add_(...)``,
    ``inplace=True``, a module with ``inplace=True``): their readers may see different values."""
    out = set()
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or not node.args:
            continue
        target = node.target
        if node.op == "call_module":
            inplace = bool(getattr(gm.get_submodule(target), "inplace", False))
        else:
            name = target if isinstance(target, str) else getattr(target, "__name__", "")
            inplace = bool(node.kwargs.get("inplace", False)) or (
                name.endswith("_") and not name.endswith("__")) or name in ("__iadd__", "__imul__", "__isub__",
                                                                             "__itruediv__", "setitem")
        if inplace and isinstance(node.args[0], fx.Node):
            out.add(node.args[0].name)
    return out


def _unique(taps: List[Tap]) -> List[Tap]:
    out = []
    for t in taps:
        if t not in out:
            out.append(t)
    return out


def trace(
    model: nn.Module,
    example_inputs,
    strict: bool = True,
    check: bool = True,
    rtol: float = 1e-5,
    tracer: Optional[fx.Tracer] = None,
    share_heads: bool = True,
) -> PermSpec:
    """Discover the permutation spec of ``model`` (see the module docstring for the method).

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace symbolically.
        example_inputs: a tensor or a tuple of positional inputs (e.g. ``torch.randn(1, 3, 32, 32)``); one forward
            pass runs on them in eval mode under ``no_grad`` (the model's train/eval flags are restored).
        strict: raise :class:`SpecTraceError` on unsupported constructs (naming the fx node) instead of dropping
            the groups they touch with a warning.
        check: run :func:`mudsc.check_spec` on the result (random permutations of every group, float64).
        rtol: tolerance of that check.
        tracer: an ``fx.Tracer`` instance to trace with (e.g. one with custom leaf modules).
        share_heads: True (default): q/k and v/o groups of one attention layer carry the same ``block_tie``, so
            one head permutation serves both. False reproduces the original MuDSC (ALGORITHM.md §1.7, §8.1.12):
            the ties are removed and the heads of q/k and v/o are matched independently; such a spec is not
            function-preserving (``check_spec`` rejects it), so the check runs on the tied spec before untying.

    Returns:
        :class:`PermSpec`: groups in order of first appearance, each with members, block structure and taps.
    """
    if is_tensor(example_inputs):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    try:
        if tracer is None:
            gm = fx.symbolic_trace(model)
        else:
            gm = fx.GraphModule(model, tracer.trace(model))
    except Exception as e:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError...)
        raise SpecTraceError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
    flags = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        interp = _SpecInterpreter(gm, strict)
        with torch.no_grad():
            interp.run(*example_inputs)
    finally:
        for m, flag in flags.items():
            m.training = flag
    spec = _build_spec(interp.state, strict)
    if check:
        from .check import check_spec

        check_spec(model, spec, example_inputs, rtol=rtol)
    if not share_heads:
        spec = PermSpec([dataclasses.replace(g, block_tie=None) for g in spec.groups])
    return spec
