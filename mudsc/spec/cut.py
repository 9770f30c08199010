"""Where a model's graph is cut for partial zipping, and how each value crossing the cut holds the groups' units.

:func:`find_cut` traces the model with torch.fx in eval mode and interprets the graph once on example inputs,
as :func:`mudsc.trace` does, which describes every value's axes in channel spaces. The nodes, in graph order, are
split at the first node inside module ``stop_at`` (a ``call_module`` of it or of a submodule, a ``get_attr`` of
one of its tensors, or an op whose ``nn_module_stack`` names it): the *prefix* is every node before it, the
*suffix* the rest. The prefix values the suffix reads are handled by kind:

- parameters read with ``get_attr`` and values that hold no tensor (sizes read with ``x.shape``, constants) are
  *recomputed* after the cut (their nodes are copied into the suffix), so that each model reads its own tensors
  and widths;
- tensors (and the model's inputs) *cross* the cut. Each axis of a crossing tensor gets an :class:`AxisLayout`:
  the axis is ``outer × channels × inner`` where the channels are the leaves of one channel space in order
  (:class:`AxisPart`: a group, a fused slice of one, or channels no group permutes); an axis holding no channel
  space passes as it is. :meth:`AxisLayout.unmerge_index` turns per-group unit maps into the gather that reads
  one model's axis from the merged one (model unit ``u`` of a group takes merged unit ``labels[u]``).

A value that holds tensors but is not one (a tuple returned by a module) cannot cross: :class:`CutError` says
which node, as it does for a ``stop_at`` the graph never enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .factors import normalize
from .resolve import _collect_members, _group_names, build_spec
from .tracer import _SpecInterpreter, _to_graph

__all__ = ["AxisLayout", "AxisPart", "Crossing", "Cut", "CutError", "find_cut"]


class CutError(ValueError):
    """The model cannot be cut at the requested module (the message says why and where)."""


@dataclass(frozen=True)
class AxisPart:
    """A run of channels along an axis: ``size`` units of group ``group`` (None: channels no group permutes)."""

    group: Optional[str]
    size: int


@dataclass(frozen=True)
class AxisLayout:
    """Axis ``axis`` of a crossing tensor: ``outer × Σ parts × inner``, the parts in order along the middle digit."""

    axis: int
    outer: int
    inner: int
    parts: Tuple[AxisPart, ...]

    def unmerge_index(self, labels: Mapping[str, Tuple[np.ndarray, int]]) -> Tuple[int, torch.Tensor]:
        """``(merged length, LongTensor[model length])``: model position ``p`` of the axis reads merged position
        ``index[p]``. ``labels[group] = (int64[size] merged unit of each of this model's units, K)``; a group not in
        ``labels`` keeps its units (identity)."""
        offsets, widths, maps = [], [], []
        merged = 0
        for part in self.parts:
            lab, k = labels.get(part.group, (None, part.size)) if part.group is not None else (None, part.size)
            lab = np.arange(part.size) if lab is None else np.asarray(lab, dtype=np.int64)
            if lab.shape != (part.size,):
                raise CutError(f"group {part.group!r} has {part.size} units at the cut, the map gives {lab.shape}")
            offsets.append(merged)
            widths.append(k)
            maps.append(lab)
            merged += k
        middle = np.concatenate([off + lab for off, lab in zip(offsets, maps)]) if maps else np.zeros(0, np.int64)
        o = np.arange(self.outer).reshape(-1, 1, 1) * (merged * self.inner)
        c = middle.reshape(1, -1, 1) * self.inner
        i = np.arange(self.inner).reshape(1, 1, -1)
        return self.outer * merged * self.inner, torch.from_numpy((o + c + i).reshape(-1))


@dataclass
class Crossing:
    """One value crossing the cut: its prefix node, and the layout of every axis that holds channels."""

    node: fx.Node
    layouts: Tuple[AxisLayout, ...]
    is_tensor: bool


@dataclass
class Cut:
    """A traced graph split at module ``stop_at`` (module docstring).

    Attributes:
        gm: the traced ``fx.GraphModule`` of the model (its nodes are the ones listed here).
        prefix: the nodes before the cut (placeholders included), in graph order.
        suffix: the nodes from the cut on (the output node last).
        crossing: the values the suffix reads from the prefix, in graph order.
        recomputed: prefix nodes copied after the cut (parameters, values without tensors), in graph order.
    """

    stop_at: str
    gm: fx.GraphModule
    prefix: List[fx.Node]
    suffix: List[fx.Node]
    crossing: List[Crossing]
    recomputed: List[fx.Node]


def _inside(node: fx.Node, stop_at: str) -> bool:
    """Whether ``node`` runs inside module ``stop_at`` (a submodule call, one of its tensors, or an op of its
    forward)."""
    prefix = stop_at + "."
    if node.op in ("call_module", "get_attr") and isinstance(node.target, str):
        if node.target == stop_at or node.target.startswith(prefix):
            return True
    for entry in (node.meta.get("nn_module_stack") or {}).values():
        path = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(path, str) and (path == stop_at or path.startswith(prefix)):
            return True
    return False


def _holds_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _layouts(sp, info, names: Mapping[int, str], node: fx.Node) -> Tuple[AxisLayout, ...]:
    """The channel layout of every axis of the tensor ``node`` (tensor info ``info``) that holds channels."""
    out = []
    for axis, dim in enumerate(info):
        dim = normalize(sp, dim)
        real = [(j, f) for j, f in enumerate(dim) if f.space is not None]
        if not real:
            continue
        if len(real) > 1:
            raise CutError(f"fx node {node.name!r} crosses the cut with channels of several spaces in axis {axis}")
        j, (space, n, stride) = real[0]
        root = sp.find(space)
        if stride != 1 or n != sp.size[root]:
            raise CutError(f"fx node {node.name!r} crosses the cut with its axis {axis} holding only the head digit or "
                           "the within-head digit of a group (the cut falls inside an attention layer)")
        parts = []
        for lo, hi, leaf in sp.leaves(root):
            leaf = sp.find(leaf)
            group = names.get(leaf) if not sp.fixed[leaf] and hi - lo > 1 else None
            parts.append(AxisPart(group, hi - lo))
        out.append(AxisLayout(axis, math.prod(f.size for f in dim[:j]), math.prod(f.size for f in dim[j + 1:]),
                              tuple(parts)))
    return tuple(out)


def _split(gm: fx.GraphModule, stop_at: str) -> Tuple[List[fx.Node], List[fx.Node]]:
    nodes = list(gm.graph.nodes)
    first = next((k for k, n in enumerate(nodes) if n.op != "output" and _inside(n, stop_at)), None)
    if first is None:
        entered = sorted({n.target for n in nodes if n.op == "call_module" and "." not in n.target} |
                         {e[0].split(".")[0] for n in nodes for e in (n.meta.get("nn_module_stack") or {}).values()
                          if isinstance(e, tuple)})
        raise CutError(f"stop_at={stop_at!r}: the model's graph never enters that module (top-level modules it "
                       f"runs: {entered})")
    if all(n.op == "placeholder" for n in nodes[:first]):
        raise CutError(f"stop_at={stop_at!r} is the first module the model runs: nothing would be merged")
    return nodes[:first], nodes[first:]


def _interface(prefix: List[fx.Node], suffix: List[fx.Node], values: Mapping[fx.Node, object]):
    """``(crossing nodes, recomputed nodes)``, both in graph order (module docstring)."""
    inside, crossing, copied = set(prefix), set(), set()
    todo = [a for s in suffix for a in s.all_input_nodes]
    while todo:
        n = todo.pop()
        if n not in inside or n in crossing or n in copied:
            continue
        if n.op == "get_attr" or (n.op != "placeholder" and not _holds_tensor(values.get(n))):
            copied.add(n)
            todo.extend(n.all_input_nodes)
        elif n.op == "placeholder" or isinstance(values.get(n), torch.Tensor):
            crossing.add(n)
        else:
            raise CutError(f"fx node {n.name!r} ({n.op} {n.target}) crosses the cut holding a "
                           f"{type(values.get(n)).__name__} of tensors; cut before or after it")
    return [n for n in prefix if n in crossing], [n for n in prefix if n in copied]


def find_cut(model: nn.Module, example_inputs, stop_at: str, tracer: Optional[fx.Tracer] = None) -> Cut:
    """The graph of ``model`` cut before module ``stop_at`` (module docstring).

    Args:
        model: the architecture (any of the N models); traced in eval mode, its train flags restored.
        example_inputs: a tensor or tuple of inputs, run once through the graph (under ``no_grad``).
        stop_at: the qualified name of a submodule (``"layer3"``, ``"blocks.6"``).
        tracer: an ``fx.Tracer`` to trace with (as :func:`mudsc.trace`).

    Raises:
        CutError: ``stop_at`` names no submodule, the graph never enters it or enters it first, or a value the
            cut cannot carry crosses it. :class:`mudsc.SpecTraceError`: the model does not trace strictly.
    """
    if not isinstance(stop_at, str) or not stop_at:
        raise CutError(f"stop_at must be the name of a submodule (e.g. 'layer3'), got {stop_at!r}")
    names = dict(model.named_modules())
    if stop_at not in names:
        close = sorted(n for n in names if n and "." not in n)
        raise CutError(f"stop_at={stop_at!r} is not a submodule of {type(model).__name__} (its top-level "
                       f"modules: {close})")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        gm = _to_graph(model, tracer)
        gm.eval()
        interp = _SpecInterpreter(gm, True, model)
        interp.garbage_collect_values = False  # every prefix value is read below
        with torch.no_grad():
            interp.run(*inputs)
    finally:
        for m, flag in flags.items():
            m.training = flag
    state = interp.state
    build_spec(state, strict=True)  # settles the spaces; raises like mudsc.trace for unsupported constructs
    groups = _group_names(_collect_members(state))
    prefix, suffix = _split(gm, stop_at)
    crossing_nodes, recomputed = _interface(prefix, suffix, interp.env)
    crossing = []
    for n in crossing_nodes:
        value = interp.env[n]
        is_tensor = isinstance(value, torch.Tensor)
        layouts = _layouts(state.sp, interp.info[n], groups, n) if is_tensor and isinstance(interp.info.get(n),
                                                                                              tuple) else ()
        crossing.append(Crossing(n, layouts, is_tensor))
    return Cut(stop_at, gm, prefix, suffix, crossing, recomputed)


def check_groups(cut: Cut, sizes: Mapping[str, int]) -> None:
    """CutError unless every group at the cut is a group of the plan's spec (``sizes``: name -> units) of that
    size: a spec that is not the trace of the model names its groups otherwise."""
    for c in cut.crossing:
        for layout in c.layouts:
            for part in layout.parts:
                if part.group is not None and part.group in sizes and sizes[part.group] != part.size:
                    raise CutError(f"group {part.group!r} has {part.size} units at the cut but {sizes[part.group]} "
                                   "in the plan's spec")

