"""Tap choice: where each group's activations are observed, from the tap candidates the tracer recorded.

Input. Per group (keyed by its leaf space) the members found by resolution, and the trace state's
:class:`~mudsc.spec.state.ModuleTap` candidates (every leaf module's first tensor input and its output, with
their tensor infos, in graph order) and :class:`~mudsc.spec.state.SpecialTap` entries.

Rule. A group is tapped where its channels are consumed: at the input of every module whose parameters hold the
group as an "input" member, provided the channels lie along one axis with nothing permutable around them
(``outer == inner == 1``). A tensor read by several such modules is tapped once, unless some node may modify it
in place between the reads (:func:`mutated_in_place`). A group without consumers is tapped at the output of the
last module producing it, and one without either at its special taps (``nn.MultiheadAttention`` q/k/v).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Set, Tuple

import torch.fx as fx

from .data import Member, Tap
from .factors import ResolveProblem, pieces
from .state import ModuleTap, TraceState

_INPLACE_OPERATORS = ("__iadd__", "__imul__", "__isub__", "__itruediv__", "setitem")


def mutated_in_place(gm: fx.GraphModule) -> Set[str]:
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
                name.endswith("_") and not name.endswith("__")) or name in _INPLACE_OPERATORS
        if inplace and isinstance(node.args[0], fx.Node):
            out.add(node.args[0].name)
    return out


def unique(taps: List[Tap]) -> List[Tap]:
    """``taps`` without repeats, in first-seen order."""
    out = []
    for t in taps:
        if t not in out:
            out.append(t)
    return out


def _candidate_taps(state: TraceState, entry: ModuleTap, groups: Mapping[int, List[Member]]):
    """``(leaf, tap)`` for every group whose whole channel axis (or a slice of it) the candidate tensor holds."""
    info = entry.info
    if not isinstance(info, tuple):
        return
    for j, dim in enumerate(info):
        if not isinstance(dim, tuple):
            continue
        try:
            found = pieces(state.sp, dim)
        except ResolveProblem:
            continue
        for piece in found:
            if piece.leaf not in groups or piece.outer != 1 or piece.inner != 1:
                continue
            whole = (piece.start, piece.stop) == (0, piece.total)
            channel_dim = -1 if j == len(info) - 1 else j
            yield piece.leaf, Tap(entry.module, entry.kind, channel_dim, None if whole else (piece.start, piece.stop))


def _consumers_and_producers(state: TraceState, groups: Mapping[int, List[Member]]):
    """Per group: input taps of the modules consuming it (deduplicated by tensor), output taps of producers."""
    consumers: Dict[int, List[Tap]] = {leaf: [] for leaf in groups}
    producers: Dict[int, List[Tuple[int, Tap]]] = {leaf: [] for leaf in groups}
    input_modules = {leaf: {m.name for m in members if m.role == "input"} for leaf, members in groups.items()}
    # A tensor read by several modules (a downsampling block's conv1 and shortcut both read the residual
    # stream) is tapped once: a second tap would count the same samples twice in the group's statistics.
    # Not when an in-place op may change the tensor between the reads (fx keeps the node name).
    mutated = mutated_in_place(state.gm)
    seen_inputs: Dict[int, set] = {leaf: set() for leaf in groups}
    for index, entry in enumerate(state.module_taps):
        for leaf, tap in _candidate_taps(state, entry, groups):
            prefix = entry.module + "."
            if entry.kind == "input" and any(name.startswith(prefix) for name in input_modules[leaf]):
                key = (entry.source, tap.channel_dim, tap.channel_slice)
                if tap not in consumers[leaf] and key not in seen_inputs[leaf]:
                    if entry.source not in mutated:
                        seen_inputs[leaf].add(key)
                    consumers[leaf].append(tap)
            elif entry.kind == "output":
                producers[leaf].append((index, tap))
    return consumers, producers


def collect_taps(state: TraceState, groups: Mapping[int, List[Member]]) -> Dict[int, List[Tap]]:
    """Taps per group (keyed by leaf space): consumer inputs; else the last producer's output; else special."""
    consumers, producers = _consumers_and_producers(state, groups)
    special: Dict[int, List[Tap]] = {}
    for space, tap in state.special_taps:
        special.setdefault(state.sp.find(space), []).append(tap)
    out = {}
    for leaf in groups:
        if consumers[leaf]:
            out[leaf] = consumers[leaf]
        elif producers[leaf]:
            last = producers[leaf][-1][1].module
            out[leaf] = unique([t for _, t in producers[leaf] if t.module == last])
        else:
            out[leaf] = unique(special.get(leaf, []))
    return out
