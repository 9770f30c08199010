"""Partial zipping (ZipIt!, Stoica et al., ICLR 2024): merge N models up to a module and keep each model's own layers
from it on, trading size for accuracy.

``partial_merge(models, plan, stop_at, example_inputs)`` cuts the models' graph before module ``stop_at``
(:func:`mudsc.spec.cut.find_cut`) and builds a :class:`PartialMerge`:

- ``prefix``: the graph before the cut on the merged weights (the plan applied, :meth:`mudsc.MergePlan.apply`); it
  returns the values the rest of the graph reads;
- ``branches[i]``: the graph from the cut on, with model ``i``'s own weights (a copy: the inputs are not shared).
  Every tensor crossing the cut reaches branch ``i`` through model ``i``'s unmerge map: along an axis holding a
  group's units, model unit ``u`` reads merged unit ``labels_i[u]`` (a gather, ``U_i`` of ALGORITHM.md §6.2); other
  axes pass unchanged. Sizes and parameters the rest of the graph reads are recomputed in each branch;
- ``forward(x) = combine([branch_i(x)])``: ``"mean"`` (default) averages the branches' outputs, ``"sum"`` adds
  them, ``"cat"`` concatenates them along the last axis, a callable gets the list; :meth:`PartialMerge.branch_outputs`
  gives the list itself.

Every group of the plan before the cut is applied; the groups after it are not used. A self-merge (N copies of one
model, identity maps) reproduces the model exactly. The result's state dict holds the prefix's merged tensors under
``prefix.<name>`` and branch ``i``'s under ``branches.<i>.<name>``; it does not load into the original architecture
(it is not one): rebuild it with ``partial_merge`` from the plan.
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.fx as fx
import torch.nn as nn

from .maps import AxisMap
from .plan import MergePlan
from .spec.cut import Cut, CutError, check_groups, find_cut

__all__ = ["COMBINE", "CutError", "PartialMerge", "check_combine", "partial_merge"]

COMBINE = ("mean", "sum", "cat")


def _combine(outputs: List, how):
    """The branches' outputs combined by ``how`` (module docstring)."""
    if callable(how):
        return how(outputs)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise TypeError(f"combine={how!r} needs tensor outputs; the branches return "
                        f"{type(outputs[0]).__name__}: pass combine=<callable on the list of outputs>")
    if how == "cat":
        return torch.cat(outputs, dim=-1)
    total = outputs[0]
    for o in outputs[1:]:
        total = total + o
    return total / len(outputs) if how == "mean" else total


def _prefix_graph(cut: Cut) -> fx.Graph:
    """The nodes before the cut, returning the crossing values (a tuple, in :attr:`Cut.crossing` order)."""
    graph, env = fx.Graph(), {}
    for n in cut.prefix:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(tuple(env[c.node] for c in cut.crossing))
    return graph


def _branch_graph(cut: Cut) -> fx.Graph:
    """The nodes from the cut on (recomputed prefix nodes first), reading the crossing values as placeholders."""
    graph, env = fx.Graph(), {}
    for c in cut.crossing:
        env[c.node] = graph.placeholder(c.node.name)
    for n in cut.recomputed + cut.suffix:
        env[n] = graph.node_copy(n, lambda a: env[a])
    return graph


class PartialMerge(nn.Module):
    """N models merged up to a module, each with its own layers after it (module docstring).

    Attributes:
        prefix: ``fx.GraphModule``, the merged layers before the cut.
        branches: ``nn.ModuleList`` of N ``fx.GraphModule`` s, each model's layers from the cut on.
        stop_at: the module the cut is before.
        combine: ``"mean"`` | ``"sum"`` | ``"cat"`` | a callable on the list of branch outputs.
    """

    def __init__(self, prefix: fx.GraphModule, branches: Sequence[fx.GraphModule], gathers: Sequence[Sequence],
                 stop_at: str, combine: Union[str, Callable] = "mean"):
        super().__init__()
        self.prefix = prefix
        self.branches = nn.ModuleList(branches)
        self.stop_at = stop_at
        self.combine = combine
        # gathers[i][j]: [(axis, buffer name)] reading crossing value j of branch i from the merged one
        self._gathers: List[List[List[tuple]]] = []
        for i, per_value in enumerate(gathers):
            rows = []
            for j, axes in enumerate(per_value):
                row = []
                for axis, index in axes:
                    name = f"_unmerge_{i}_{j}_{axis}"
                    self.register_buffer(name, index, persistent=False)
                    row.append((axis, name))
                rows.append(row)
            self._gathers.append(rows)

    def branch_inputs(self, *inputs) -> List[tuple]:
        """Per branch, the crossing values it reads (the prefix's, through that model's unmerge maps)."""
        values = self.prefix(*inputs)
        out = []
        for rows in self._gathers:
            mine = []
            for value, row in zip(values, rows):
                for axis, name in row:
                    value = value.index_select(axis, getattr(self, name))
                mine.append(value.clone() if isinstance(value, torch.Tensor) and not row else value)
            out.append(tuple(mine))
        return out

    def branch_outputs(self, *inputs) -> List:
        """The N branches' outputs (each model's own layers after the cut, on the merged features)."""
        return [branch(*args) for branch, args in zip(self.branches, self.branch_inputs(*inputs))]

    def forward(self, *inputs):
        """The branches' outputs combined by :attr:`combine`."""
        return _combine(self.branch_outputs(*inputs), self.combine)

    def parameter_counts(self) -> dict:
        """``{"prefix": merged parameters, "branches": [per branch], "total"}`` (element counts)."""
        prefix = sum(p.numel() for p in self.prefix.parameters())
        branches = [sum(p.numel() for p in b.parameters()) for b in self.branches]
        return {"prefix": prefix, "branches": branches, "total": prefix + sum(branches)}


def check_combine(combine) -> None:
    """TypeError/ValueError unless ``combine`` is one of :data:`COMBINE` or a callable."""
    if not callable(combine) and combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE} or a callable on the list of branch outputs, got "
                         f"{combine!r}")


def _gathers(cut: Cut, plan: MergePlan, num_models: int) -> tuple:
    """``(gathers, lengths)``: per model, per crossing value, the ``(axis, index)`` gathers of its unmerge maps; per
    crossing value, ``{axis: merged length}``."""
    gathers, lengths = [], []
    for i in range(num_models):
        maps = {name: AxisMap.unmerge(result, i, num_models) for name, result in plan.maps.items()}
        labels = {name: (m.labels.numpy(), m.size) for name, m in maps.items()}
        rows = [[(layout.axis, layout.unmerge_index(labels)) for layout in c.layouts] for c in cut.crossing]
        gathers.append([[(axis, index) for axis, (_, index) in row] for row in rows])
        lengths = [{axis: length for axis, (length, _) in row} for row in rows]
    return gathers, lengths


def _check_shapes(model: "PartialMerge", cut: Cut, lengths: List[dict], inputs: tuple) -> None:
    """CutError unless the merged prefix's crossing tensors have the lengths the unmerge maps expect."""
    with torch.no_grad():
        values = model.prefix(*inputs)
    for c, value, expected in zip(cut.crossing, values, lengths):
        for axis, length in expected.items():
            if value.shape[axis] != length:
                raise CutError(f"fx node {c.node.name!r} crossing the cut has {value.shape[axis]} entries along axis "
                               f"{axis} in the merged model, the plan's maps give {length}")


def partial_merge(models: Sequence[nn.Module], plan: MergePlan, stop_at: str, example_inputs,
                  combine: Union[str, Callable] = "mean", check: bool = True, tracer: Optional[fx.Tracer] = None,
                  cut: Optional[Cut] = None) -> PartialMerge:
    """Merge ``models`` with ``plan`` up to module ``stop_at``; each keeps its own layers from it on.

    Args:
        models: the N models the plan was computed for (not modified; the branches hold copies of their layers).
        plan: a :class:`mudsc.MergePlan` (from :func:`mudsc.merge` or :func:`mudsc.match`).
        stop_at: qualified name of the first module not merged (``"layer3"``, ``"blocks.6"``).
        example_inputs: a tensor or tuple of inputs the graph is traced and checked on (one or two samples).
        combine: how :meth:`PartialMerge.forward` combines the branch outputs (module docstring).
        check: check the plan's fingerprints against the models (:meth:`mudsc.MergePlan.apply`).
        tracer: an ``fx.Tracer`` to trace with (as :func:`mudsc.trace`).
        cut: a :func:`mudsc.spec.cut.find_cut` of these models at ``stop_at`` computed before (skips the trace).

    Returns:
        :class:`PartialMerge`. Raises :class:`mudsc.spec.cut.CutError` for a module the cut cannot be put before.
    """
    check_combine(combine)
    if len(models) != plan.num_models:
        raise ValueError(f"the plan merges {plan.num_models} models, got {len(models)}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if cut is None:
        cut = find_cut(models[0], inputs, stop_at, tracer)
    check_groups(cut, {g.name: g.size for g in plan.spec.groups})
    merged = plan.apply(models, check=check)
    prefix = fx.GraphModule(merged, _prefix_graph(cut))
    branch = _branch_graph(cut)
    branches = [copy.deepcopy(fx.GraphModule(m, branch)) for m in models]
    for b, m in zip(branches, models):
        b.train(m.training)
    prefix.train(models[0].training)
    gathers, lengths = _gathers(cut, plan, len(models))
    result = PartialMerge(prefix, branches, gathers, stop_at, combine)
    device = next(merged.parameters(), torch.empty(0)).device
    result.to(device)
    _check_shapes(result, cut, lengths, tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs))
    return result



