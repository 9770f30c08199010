"""The merge methods (ALGORITHM.md §4–§6): statistics pass, dual-space coordinate descent, and the one-call API.

Pipeline: ``collect_stats`` (activation correlation per group, once) -> ``match`` (per-group unit maps: a
:class:`mudsc.MergePlan`) -> ``MergePlan.apply`` (merged module) -> ``reset_bn``. ``merge`` runs all of them.

Methods (``METHODS``; "start" is the matching the descent starts from, S the similarity it solves on):

========== =========== ======== ===========================================================================
method      activations descent  what it is
========== =========== ======== ===========================================================================
avg         no          no       weight averaging (identity maps)
rebasin     no          yes      Git Re-Basin-style weight matching: LAP on weight Pearson correlation, start
                                 from identity (MuDSC's ``_useperm``)
act-align   yes         no       activation alignment: LAP on activation correlation (``_act_useperm``)
zipit       yes         no       ZipIt!: greedy zip on activation correlation (``_act``)
wzip        no          yes      weight-space zip from identity (``""``)
mudsc-align yes         yes      MuDSC (alignment): start from act-align, LAP on S = b·S_w + (1−b)·S_act
mudsc-zip   yes         yes      MuDSC (zip): start from zipit, zip on S = b·S_w + (1−b)·S_act
========== =========== ======== ===========================================================================

``b`` = ``balance`` (the paper's balanced factor ``fix_rate``): the weight of the **weight-space** term, 0..1.
Groups with ``num_blocks > 1`` (attention heads, GroupNorm groups) use the group solvers
(:func:`mudsc.group_permute_match` / :func:`mudsc.group_zip_match`).

Coordinate descent (ALGORITHM.md §5): each sweep visits every coordinate once in a random order drawn from a
``torch.Generator`` seeded with ``seed`` (one generator for the whole descent); a visit rebuilds the weight
vectors with the *current* maps of the other groups (Gauss–Seidel), mixes in the cached activation term and
re-solves. The sweep's value is the unweighted mean over groups of the merge values. A sweep counts only if it
strictly improves the best value; a non-improving sweep reverts the maps to the best snapshot; ``patience``
consecutive non-improving sweeps stop the descent (at most ``max_sweeps``); the best snapshot is returned.

Decisions where the original is ambiguous or wrong (ALGORITHM.md §8.1):

- Weight-vector axis rule (§8.1.10). Default ``axis_rule="merge"``: other groups' axes are transformed exactly
  as in the final merge (output axes by the scaled merge ``N·M_i``: cluster means; input axes by the unmerge
  ``U_i``: sums of merged columns), so a unit's weight vector is the slice of the tensors it will be averaged
  with. ``axis_rule="original"`` reproduces the original's swapped assignment (input axes ``N·M_i`` with its
  ``+1e-5``, output axes ``U_i``). For alignment with N = 2 both agree to 5e-6; for zip they differ on clusters
  whose size differs from N. Groups not matched yet (the first sweep of weight-only methods) are identity.
- Tied heads (§8.1.12). Groups sharing a ``block_tie`` (a ViT block's q/k and v/o) form **one coordinate**:
  they are solved together with one head pairing. For every model i ≥ 1 and every group of the tie, the g×g
  matrix of mean matched similarities of head blocks (model 0 head j × model i head k, Og×Og LAPs) is computed;
  the matrices of the tied groups are summed and one outer LAP gives the pairing. Each group's similarity then
  gets a large negative constant on the model-0 × model-i head blocks outside the pairing, which forces the
  group solvers (inner LAPs, or per-head-set zips) to use it, so the result is "group solver with this head
  pairing". The original's independent q/k and v/o head matching is available by tracing with
  ``mudsc.trace(..., share_heads=False)`` (no ties; that spec is not function-preserving).
- Activation taps follow the spec's taps (the tracer's choice), not the original's per-architecture quirks
  (no duplicated k activations, every tap of a group contributes samples).
- Groups without taps use their weight similarity in activation methods (reported as ``fallback_groups``).
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .norm import first_input, reset_bn
from .plan import MergePlan, fingerprint
from . import _native
from .similarity import AxisMap, PieceCache, weight_moments, weight_similarity
from .solvers import (
    MatchResult,
    _check_zip_parameters,
    batch_linear_sum_assignment,
    group_permute_match,
    group_zip_match,
    linear_sum_assignment,
    permute_match,
    zip_match,
)
from .spec import Group, PermSpec, trace
from .stats import CorrelationAccumulator

__all__ = ["METHODS", "ActivationStats", "MergeResult", "collect_stats", "match", "merge"]


# Reuse a weight piece's moments while the maps on its other axes are unchanged (see match); tests switch it off.
_CACHE_WEIGHT_SIMILARITY = True
_INCREMENTAL_WEIGHT_SIMILARITY = True  # bring changed pieces up to date from a kept version (PieceCache)


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs and does: activation statistics, coordinate descent, solver ("lap"/"zip"/None)."""

    name: str
    activations: bool
    descent: bool
    solver: Optional[str]
    description: str


METHODS: Dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("avg", False, False, None, "weight averaging"),
        MethodInfo("rebasin", False, True, "lap", "weight matching (LAP on weight correlation), from identity"),
        MethodInfo("act-align", True, False, "lap", "activation alignment (LAP on activation correlation)"),
        MethodInfo("zipit", True, False, "zip", "ZipIt! zip on activation correlation"),
        MethodInfo("wzip", False, True, "zip", "weight-space zip, from identity"),
        MethodInfo("mudsc-align", True, True, "lap", "MuDSC alignment: act-align start, dual-space LAP descent"),
        MethodInfo("mudsc-zip", True, True, "zip", "MuDSC zip: zipit start, dual-space zip descent"),
    )
}

AXIS_RULES = ("merge", "original")
_HEAD_PENALTY = -1.0e4  # below any correlation mix (|S| <= 1): forbids head pairs outside the joint pairing


def _progress_bar(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------------
def _check_models(models) -> List[nn.Module]:
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError("models must be a list of at least two nn.Module instances")
    models = list(models)
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{i}] is a {type(m).__name__}, not an nn.Module")
    if len(models) < 2:
        raise ValueError(f"merging needs at least two models, got {len(models)}")
    ref_type = type(models[0])
    ref = _shapes(models[0])
    for i, m in enumerate(models[1:], 1):
        if type(m) is not ref_type:
            raise ValueError(f"model {i} is a {type(m).__name__} but model 0 is a {ref_type.__name__}; merged "
                             "models must share one architecture")
        shapes = _shapes(m)
        for name in ref:
            if name not in shapes:
                raise ValueError(f"model {i} lacks parameter/buffer {name!r} of model 0")
            if shapes[name] != ref[name]:
                raise ValueError(f"parameter {name!r} has shape {shapes[name]} in model {i} but {ref[name]} in "
                                 "model 0")
        extra = [k for k in shapes if k not in ref]
        if extra:
            raise ValueError(f"model {i} has parameter/buffer {extra[0]!r} that model 0 lacks")
    return models


def _shapes(model: nn.Module) -> Dict[str, tuple]:
    out = {k: tuple(v.shape) for k, v in model.named_parameters()}
    out.update({k: tuple(v.shape) for k, v in model.named_buffers()})
    return out


def _check_method(method: str) -> MethodInfo:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


def _check_hyperparameters(balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule) -> None:
    if not isinstance(balance, numbers.Real) or not 0.0 <= float(balance) <= 1.0:
        raise ValueError(f"balance (the weight of the weight-space term) must be in [0, 1], got {balance!r}")
    _check_zip_parameters(reduce, alpha, beta)
    for name, value, low in (("max_sweeps", max_sweeps, 1), ("patience", patience, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if axis_rule not in AXIS_RULES:
        raise ValueError(f"axis_rule must be one of {AXIS_RULES}, got {axis_rule!r}")


def _check_max_batches(max_batches) -> None:
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, numbers.Integral)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")


def _peek(loader) -> Tuple[torch.Tensor, Iterable]:
    """First model input of ``loader`` and an iterable over all of its items (the first one included)."""
    if loader is None:
        raise ValueError("this needs a loader (activation statistics), got loader=None")
    try:
        it = iter(loader)
    except TypeError as exc:
        raise TypeError(f"loader must be iterable (a DataLoader, list of batches, ...), got "
                        f"{type(loader).__name__}") from exc
    sentinel = object()
    first = next(it, sentinel)
    if first is sentinel:
        raise ValueError("the loader yielded no batches")
    return first_input(first), itertools.chain([first], it)


# ----------------------------------------------------------------------------------------------------------------
# activation statistics
# ----------------------------------------------------------------------------------------------------------------
class ActivationStats:
    """Per-group activation statistics of N models: one :class:`CorrelationAccumulator` per group over the
    ``N·size`` units (model-major). ``correlation(group)`` is computed once and cached, so methods and balance
    sweeps reuse it.

    Attributes:
        spec, num_models, accumulators (``{group name: CorrelationAccumulator}``; groups without taps are
        absent), num_batches, timing (``{"forward": s, "stats": s}``).
    """

    def __init__(self, spec: PermSpec, num_models: int, accumulators: Dict[str, CorrelationAccumulator],
                 num_batches: int, timing: Dict[str, float], backend: str):
        self.spec = spec
        self.num_models = num_models
        self.accumulators = accumulators
        self.num_batches = num_batches
        self.timing = dict(timing)
        self.backend = backend
        self._cache: Dict[str, torch.Tensor] = {}

    def correlation(self, group: str) -> Optional[torch.Tensor]:
        """``Tensor[N·size, N·size]`` float32 activation correlation of ``group`` (None without taps)."""
        if group not in self._cache:
            acc = self.accumulators.get(group)
            if acc is None:
                return None
            self._cache[group] = acc.correlation(dtype=torch.float32).cpu()
        return self._cache[group]

    def __repr__(self) -> str:
        return (f"ActivationStats({self.num_models} models, {len(self.accumulators)} groups, "
                f"{self.num_batches} batches)")


def _tapped_tensor(value, tap, group: Group, module: nn.Module, where: str) -> torch.Tensor:
    x = value[0] if isinstance(value, (tuple, list)) else value
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: the tapped value is a {type(x).__name__}, not a tensor")
    x = x.detach()
    if tap.linear is not None:
        weight = _resolve(module, tap.linear["weight"])
        lo, hi = tap.linear["rows"]
        bias = _resolve(module, tap.linear["bias"]) if tap.linear.get("bias") else None
        x = F.linear(x, weight[lo:hi], bias[lo:hi] if bias is not None else None)
    if tap.channel_slice is not None:
        lo, hi = tap.channel_slice
        x = x.narrow(tap.channel_dim, lo, hi - lo)
    if x.dim() == 0 or x.shape[tap.channel_dim] != group.size:
        raise ValueError(f"{where}: expected {group.size} channels on dim {tap.channel_dim}, got shape "
                         f"{tuple(x.shape)}")
    return x


def _resolve(root: nn.Module, name: str) -> torch.Tensor:
    module_name, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    return getattr(module, leaf).detach()


def collect_stats(
    models: Sequence[nn.Module],
    spec: PermSpec,
    loader: Iterable,
    max_batches: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    backend: str = "auto",
    progress: bool = True,
) -> ActivationStats:
    """One pass over ``loader``: the activation correlation of every group's units across the N models.

    Hooks are registered on every tap of every group (forward pre-hooks for ``kind="input"``, forward hooks for
    ``"output"``). Per batch every model runs a full fp32 forward under ``no_grad`` in eval mode (flags are
    restored). A hook copies its channel slice at once (later in-place ops cannot alter it); the last model's
    hook feeds the N copies of one tap call to the group's accumulator (features concatenated model-major,
    every other axis a sample).

    Args:
        models: N >= 2 models of one architecture.
        spec: their :class:`mudsc.PermSpec`.
        loader: yields ``Tensor[B, ...]`` or ``(inputs, targets)`` tuples/lists (the first element is used).
        max_batches: at most this many batches (None: all).
        device: run the models there (copies are made when they live elsewhere; default: model 0's device).
        backend: of the accumulators (``"reference"``: the original's per-batch float32 moments).
        progress: a tqdm bar over the batches.

    Returns:
        :class:`ActivationStats`; ``timing["forward"]`` is the models' own forward time, ``timing["stats"]``
        the time spent in hooks and accumulation.
    """
    models = _check_models(models)
    _check_max_batches(max_batches)
    if not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    first, batches = _peek(loader)
    n = len(models)
    first_param = next(iter(models[0].parameters()), None)
    dev = torch.device(device) if device is not None else (first_param.device if first_param is not None
                                                            else torch.device("cpu"))
    run_models = []
    for m in models:
        p = next(iter(m.parameters()), None)
        run_models.append(m if p is None or p.device == dev else copy.deepcopy(m).to(dev))
    accumulators = {g.name: CorrelationAccumulator(n * g.size, device=dev, backend=backend)
                    for g in spec.groups if g.taps}
    pending: Dict[Tuple[str, int], List[List[tuple]]] = {}
    calls: Dict[Tuple[int, str, int], int] = {}
    # Models 0..N-2 keep their tapped tensors until model N-1 has run. A tensor that nothing modifies in place
    # can be kept as is; one that an in-place op changes later (relu_, inplace=True) must be copied. Which
    # holds is learnt per (model, group, tap) on the first batch: the tensor is copied, and its version
    # counter tells at the end of the batch whether it changed. From the second batch on, unchanged ones are
    # kept without a copy, and their version is still checked.
    must_copy: Dict[Tuple[int, str, int], bool] = {}
    hook_time = [0.0]
    handles = []

    def make_hook(i: int, g: Group, t_index: int, tap, model: nn.Module):
        key = (g.name, t_index)
        where = f"model {i}, group {g.name!r}, tap {tap.kind} of {tap.module!r}"

        def consume(value):
            t0 = time.perf_counter()
            x = _tapped_tensor(value, tap, g, model, where)
            call = calls.get((i, g.name, t_index), 0)
            calls[(i, g.name, t_index)] = call + 1
            slots = pending.setdefault(key, [])
            if i < n - 1:
                if i > 0 and call >= len(slots):
                    raise RuntimeError(f"{where}: fired more often than in model 0")
                kept = _keep_tapped(x, must_copy.get((i, g.name, t_index)), (i, g.name, t_index))
                if i == 0:
                    slots.append([kept])
                else:
                    slots[call].append(kept)
            else:
                if call >= len(slots):
                    raise RuntimeError(f"{where}: fired more often than in model 0")
                xs = [_check_kept(entry, must_copy, where) for entry in slots[call]] + [x]
                slots[call] = None
                accumulators[g.name].update(xs, channel_dim=tap.channel_dim)
            hook_time[0] += time.perf_counter() - t0

        if tap.kind == "input":
            return lambda module, args: consume(args[0] if args else None)
        return lambda module, args, output: consume(output)

    flags = [{m: m.training for m in model.modules()} for model in run_models]
    num_batches = 0
    forward_total = 0.0
    try:
        for i, model in enumerate(run_models):
            model.eval()
            for g in spec.groups:
                for t_index, tap in enumerate(g.taps):
                    try:
                        module = model.get_submodule(tap.module)
                    except AttributeError as exc:
                        raise ValueError(f"group {g.name!r} taps module {tap.module!r}, which model {i} lacks") from exc
                    hook = make_hook(i, g, t_index, tap, model)
                    handles.append(module.register_forward_pre_hook(hook) if tap.kind == "input"
                                   else module.register_forward_hook(hook))
        total = max_batches
        if total is None and hasattr(loader, "__len__"):
            try:
                total = len(loader)
            except TypeError:
                total = None
        for batch in _progress_bar(batches, progress, total=total, desc="mudsc stats", leave=False):
            if max_batches is not None and num_batches >= max_batches:
                break
            x = first_input(batch).to(dev)
            pending.clear()
            calls.clear()
            t0 = time.perf_counter()
            h0 = hook_time[0]
            with torch.no_grad():
                for i, model in enumerate(run_models):
                    try:
                        model(x)
                    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                        if num_batches == 0 and i == 0:
                            raise ValueError(f"model 0 cannot run on the loader's first batch of shape "
                                             f"{tuple(x.shape)}: {exc}") from exc
                        raise
            forward_total += (time.perf_counter() - t0) - (hook_time[0] - h0)
            num_batches += 1
    finally:
        for h in handles:
            h.remove()
        for model, fl in zip(run_models, flags):
            for m, training in fl.items():
                m.training = training
    if num_batches == 0:
        raise ValueError("the loader yielded no batches")
    for name, acc in accumulators.items():
        if acc.num_samples == 0:
            raise ValueError(f"the taps of group {name!r} never fired during the data pass; the spec does not match "
                             "the models' forward")
    return ActivationStats(spec, n, accumulators, num_batches, {"forward": forward_total, "stats": hook_time[0]},
                           backend)


def _version(t: torch.Tensor) -> Optional[int]:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return None


def _keep_tapped(x: torch.Tensor, copy_needed: Optional[bool], key) -> tuple:
    """``(tensor to use, original, its version, key)`` for a tapped activation kept until model N-1 has run:
    a copy unless this tap is known not to be modified in place (``copy_needed is False``)."""
    version = _version(x)
    if copy_needed is False and version is not None:
        return (x, x, version, key)
    return (x.clone(), x, version, key)


def _check_kept(entry: tuple, must_copy: Dict, where: str) -> torch.Tensor:
    """The kept tensor of ``entry``; learns (first time) or checks whether its source was modified in place."""
    data, source, version, key = entry
    changed = version is None or _version(source) != version
    known = must_copy.get(key)
    if known is None:
        must_copy[key] = changed
    elif known is False and changed and data is source:
        raise RuntimeError(
            f"{where}: this activation was modified in place after it was observed, although it was not on the "
            "first batch (data-dependent in-place ops?); its statistics would be wrong, so the pass stops here")
    return data


# ----------------------------------------------------------------------------------------------------------------
# weight vectors
# ----------------------------------------------------------------------------------------------------------------
class _MapState:
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
            eps = 0.0 if self.axis_rule == "merge" else 1e-5
            scale = self.n / (counts + eps) if averaged else torch.ones(k, dtype=torch.float64)
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


# ----------------------------------------------------------------------------------------------------------------
# solving one coordinate (a group, or the groups of one head tie)
# ----------------------------------------------------------------------------------------------------------------
def _block_scores(sim: np.ndarray, n: int, g: int, model: int, backend: str) -> np.ndarray:
    """``float32[g, g]``: mean matched similarity of head j of model 0 against head k of ``model`` (Og² LAPs)."""
    om = sim.shape[0] // n
    og = om // g
    block = sim[:om, model * om:(model + 1) * om].astype(np.float64)
    blocks = np.ascontiguousarray(block.reshape(g, og, g, og).transpose(0, 2, 1, 3).reshape(g * g, og, og))
    cols = np.asarray(batch_linear_sum_assignment(blocks, maximize=True, backend=backend))
    matched = np.take_along_axis(blocks, cols[:, :, None], axis=2)[:, :, 0]
    return matched.mean(axis=1).astype(np.float32).reshape(g, g)


def _joint_head_pairing(sims: Sequence[np.ndarray], n: int, g: int, backend: str) -> List[np.ndarray]:
    """One head pairing per model i >= 1 (``pairing[i-1][j]`` = head of model i paired with model 0's head j),
    maximising the sum over the tied groups of the mean matched block similarities."""
    out = []
    for i in range(1, n):
        total = sum(_block_scores(s, n, g, i, backend).astype(np.float64) for s in sims)
        _, cols = linear_sum_assignment(total, maximize=True, backend=backend)
        out.append(np.asarray(cols, dtype=np.int64))
    return out


def _restrict_to_pairing(sim: np.ndarray, n: int, g: int, pairing: List[np.ndarray]) -> np.ndarray:
    """``sim`` with ``_HEAD_PENALTY`` on the model-0 × model-i head blocks outside ``pairing`` (both triangles)."""
    s = np.array(sim, dtype=np.float32, copy=True)
    om = s.shape[0] // n
    og = om // g
    for i, cols in enumerate(pairing, 1):
        forbid = np.ones((g, g), dtype=bool)
        forbid[np.arange(g), cols] = False
        big = np.kron(forbid, np.ones((og, og), dtype=bool))
        block = s[:om, i * om:(i + 1) * om]
        block[big] = _HEAD_PENALTY
        s[i * om:(i + 1) * om, :om] = block.T
    return s


def _solve_group(group: Group, sim: np.ndarray, n: int, solver: str, reduce, alpha, beta, backend) -> MatchResult:
    if solver == "lap":
        if group.num_blocks > 1:
            return group_permute_match(sim, n, group.num_blocks, backend=backend)
        return permute_match(sim, n, backend=backend)
    if group.num_blocks > 1:
        return group_zip_match(sim, n, group.num_blocks, reduce, alpha, beta, backend=backend)
    return zip_match(sim, n, reduce, alpha, beta, backend=backend)


def _solve_coordinate(groups: List[Group], sims: Dict[str, torch.Tensor], n: int, solver: str, reduce, alpha, beta,
                      backend: str) -> Dict[str, MatchResult]:
    arrays = {g.name: np.ascontiguousarray(sims[g.name].detach().cpu().numpy().astype(np.float32))
              for g in groups}
    if len(groups) > 1:
        g = groups[0].num_blocks
        pairing = _joint_head_pairing([arrays[x.name] for x in groups], n, g, backend)
        arrays = {name: _restrict_to_pairing(a, n, g, pairing) for name, a in arrays.items()}
    return {grp.name: _solve_group(grp, arrays[grp.name], n, solver, reduce, alpha, beta, backend) for grp in groups}


def _coordinates(spec: PermSpec) -> List[List[Group]]:
    """Groups in spec order; groups with one ``block_tie`` (and equal block counts) form one coordinate."""
    coords: List[List[Group]] = []
    by_tie: Dict[str, List[Group]] = {}
    for g in spec.groups:
        if g.block_tie is not None and g.num_blocks > 1:
            if g.block_tie in by_tie:
                if by_tie[g.block_tie][0].num_blocks != g.num_blocks:
                    raise ValueError(f"groups tied by {g.block_tie!r} have different block counts "
                                     f"({by_tie[g.block_tie][0].num_blocks} and {g.num_blocks})")
                by_tie[g.block_tie].append(g)
                continue
            by_tie[g.block_tie] = [g]
            coords.append(by_tie[g.block_tie])
        else:
            coords.append([g])
    return coords


# ----------------------------------------------------------------------------------------------------------------
# match
# ----------------------------------------------------------------------------------------------------------------
def match(
    models: Sequence[nn.Module],
    spec: PermSpec,
    method: str = "mudsc-zip",
    stats: Optional[ActivationStats] = None,
    balance: float = 0.5,
    reduce: float = 0.5,
    alpha: float = 0.5,
    beta: float = 1.0,
    max_sweeps: int = 100,
    patience: int = 5,
    seed: int = 0,
    backend: str = "auto",
    progress: bool = True,
    axis_rule: str = "merge",
) -> MergePlan:
    """Per-group unit maps of N models by ``method`` (see the module docstring): a :class:`mudsc.MergePlan`.

    Args:
        models: N >= 2 models of one architecture (only their weights are read).
        spec: their :class:`mudsc.PermSpec`.
        method: one of ``METHODS``.
        stats: :func:`collect_stats` output; required by the activation methods and reused unchanged (a
            balance sweep calls ``match(..., stats=stats, balance=b)`` repeatedly).
        balance: weight of the weight-space term in MuDSC's ``S = balance·S_w + (1−balance)·S_act`` (0..1).
        reduce, alpha, beta: zip parameters (:func:`mudsc.zip_match`): fraction of units removed (0.5: the
            merged width equals one model's for N = 2), similarity decay of merged units, within-model budget.
        max_sweeps, patience, seed: coordinate descent limits and the seed of its group order.
        backend: passed to every solver and similarity call.
        progress: a tqdm bar over the sweeps.
        axis_rule: ``"merge"`` (default) or ``"original"``: how other groups' maps enter weight vectors.

    The plan's ``info`` holds ``history`` (per sweep: value, best value, improved), ``sweeps``,
    ``fallback_groups`` and ``timing`` (``similarity`` and ``solve`` seconds).
    """
    info_m = _check_method(method)
    models = _check_models(models)
    _check_hyperparameters(balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule)
    if not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    n = len(models)
    if info_m.activations:
        if stats is None:
            raise ValueError(f"method {method!r} uses activation statistics: pass stats=collect_stats(...)")
        if stats.num_models != n:
            raise ValueError(f"stats were collected for {stats.num_models} models, got {n} models")
        if stats.spec.to_dict() != spec.to_dict():
            raise ValueError("stats were collected with a different spec than the one given")
    tensors = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in models]
    for g in spec.groups:
        for mem in g.members:
            if mem.name not in tensors[0]:
                raise ValueError(f"group {g.name!r} names {mem.name!r}, which is not a parameter or buffer of the "
                                 "models")
    state = _MapState(spec, n, axis_rule)
    timing = {"similarity": 0.0, "solve": 0.0}
    coords = _coordinates(spec)
    values: Dict[str, float] = {}
    history: List[dict] = []
    fallback = [g.name for g in spec.groups if info_m.activations and stats.correlation(g.name) is None] \
        if info_m.activations else []
    hyper = {"balance": float(balance), "reduce": float(reduce), "alpha": float(alpha), "beta": float(beta),
             "max_sweeps": int(max_sweeps), "patience": int(patience), "seed": int(seed), "axis_rule": axis_rule,
             "backend": backend}

    # A group's weight similarity is a sum over its pieces (member tensors), and a piece depends only on its
    # weights and on the current maps of the groups on its other axes. The native path keeps every large
    # piece's moments and recomputes a piece only when one of those maps changed (how often depends on how much
    # the maps still move). The reference backend recomputes everything, as the original does.
    cache = PieceCache() if backend != "reference" and _native.HAS_C else None
    if cache is not None:
        cache.reuse = _CACHE_WEIGHT_SIMILARITY
        cache.incremental = _INCREMENTAL_WEIGHT_SIMILARITY

    def map_key(name: str):
        r = state.maps[name]
        return None if r is None else (int(r.num_outputs), np.asarray(r.labels, dtype=np.int64).tobytes())

    def weight_part(group: Group) -> torch.Tensor:
        pieces = state.pieces(group, tensors)
        if cache is None:
            return weight_similarity(pieces, backend=backend).float().cpu()
        keys = [tuple(map_key(name) for name in names) for names in state.piece_neighbours(group, tensors)]
        return weight_moments(pieces, cache, group.name, keys).correlation(1e-7, dtype=torch.float32).cpu()

    def similarity(group: Group, mix: Optional[float]) -> torch.Tensor:
        """mix None: activation only; else ``mix·S_w + (1−mix)·S_act`` (S_w alone without activations)."""
        t0 = time.perf_counter()
        act = stats.correlation(group.name) if info_m.activations else None
        if act is not None and mix is not None and mix == 0.0:
            mix = None
        if act is None or mix is not None:
            sw = weight_part(group)
            s = sw if act is None else mix * sw + (1.0 - mix) * act
        else:
            s = act
        timing["similarity"] += time.perf_counter() - t0
        return s

    def solve(groups: List[Group], sims) -> None:
        t0 = time.perf_counter()
        results = _solve_coordinate(groups, sims, n, info_m.solver, reduce, alpha, beta, backend)
        timing["solve"] += time.perf_counter() - t0
        for name, r in results.items():
            state.maps[name] = r
            values[name] = float(r.merge_value)

    if info_m.solver is None:  # avg: identity maps
        for g in spec.groups:
            lab = np.tile(np.arange(g.size, dtype=np.int64), n)
            state.maps[g.name] = MatchResult(lab, g.size, 1.0)
            values[g.name] = 1.0
    elif info_m.activations:  # the activation-only matching: the result (act-align, zipit) or the start (mudsc)
        for coord in coords:
            solve(coord, {g.name: similarity(g, None) for g in coord})
    if info_m.descent:
        mix = float(balance) if info_m.activations else None
        gen = torch.Generator().manual_seed(int(seed))
        best: Optional[Dict[str, MatchResult]] = None
        best_values: Dict[str, float] = {}
        best_value = -math.inf
        stall = 0
        for sweep in _progress_bar(range(int(max_sweeps)), progress, desc=f"mudsc {method}", leave=False):
            for c in torch.randperm(len(coords), generator=gen).tolist():
                coord = coords[c]
                solve(coord, {g.name: similarity(g, mix) for g in coord})
            value = float(np.mean([values[g.name] for g in spec.groups]))
            improved = best is None or value > best_value
            if improved:
                best, best_values, best_value, stall = dict(state.maps), dict(values), value, 0
            else:
                stall += 1
                state.maps = dict(best)
                values = dict(best_values)
            history.append({"sweep": sweep, "value": value, "best": best_value, "improved": improved})
            if stall >= patience:
                break
        state.maps = dict(best)
        values = dict(best_values)
    maps = {name: MatchResult(np.asarray(r.labels, dtype=np.int64), int(r.num_outputs), float(values[name]))
            for name, r in state.maps.items()}
    info = {"history": history, "sweeps": len(history), "fallback_groups": fallback, "timing": timing,
            "weight_pieces": {"computed": cache.computed if cache else None, "reused": cache.reused if cache else None,
                              "updated": cache.updated if cache else None},
            "merge_value": float(np.mean(list(values.values()))) if values else 0.0}
    return MergePlan(spec=spec, maps=maps, num_models=n, method=method, hyperparameters=hyper,
                     fingerprints=[fingerprint(m) for m in models], info=info)


# ----------------------------------------------------------------------------------------------------------------
# merge
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """What :func:`merge` returns.

    Attributes:
        model: the merged ``nn.Module`` (BatchNorm statistics recomputed when a loader was given).
        plan: the :class:`mudsc.MergePlan` (``plan.apply(models)`` rebuilds ``model`` before the BN reset).
        report: ``{"method", "num_models", "groups": {name: {"size", "num_outputs", "merge_value"}},
            "merge_value", "history", "sweeps", "fallback_groups", "num_batches", "timing": {"trace", "forward",
            "stats", "similarity", "solve", "apply", "reset_bn", "total"}}`` (seconds).
    """

    model: nn.Module
    plan: MergePlan
    report: Dict[str, Any] = field(default_factory=dict)


def merge(
    models: Sequence[nn.Module],
    loader: Optional[Iterable] = None,
    method: str = "mudsc-zip",
    spec: Optional[PermSpec] = None,
    example_inputs: Any = None,
    balance: float = 0.5,
    reduce: float = 0.5,
    alpha: float = 0.5,
    beta: float = 1.0,
    max_sweeps: int = 100,
    patience: int = 5,
    seed: int = 0,
    max_batches: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    backend: str = "auto",
    progress: bool = True,
    axis_rule: str = "merge",
    reset_bn_stats: bool = True,
) -> MergeResult:
    """Merge N models of one architecture into one, without training.

    Args:
        models: N >= 2 ``nn.Module`` s with identical parameter names and shapes (not modified).
        loader: yields ``Tensor[B, ...]`` or ``(inputs, targets)``; needed by the activation methods, and used
            to recompute BatchNorm statistics of the result (``reset_bn_stats``); must be re-iterable for that.
        method: one of ``mudsc.METHODS`` (default ``"mudsc-zip"``).
        spec: the models' :class:`mudsc.PermSpec` (default: ``mudsc.trace(models[0], example_inputs)``).
        example_inputs: inputs for tracing (default: the loader's first batch).
        balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule: see :func:`match`.
        max_batches: batches of the statistics pass and of the BatchNorm reset (None: all).
        device: where the statistics pass runs (default: model 0's device).
        backend: ``"auto"`` | ``"native"`` | ``"reference"`` for every solver, statistic and similarity.
        progress: tqdm bars on the data pass and the sweeps.
        reset_bn_stats: recompute BatchNorm running statistics of the merged model (needs a loader).

    Every argument is checked (methods, N, shapes, hyperparameters, an empty loader, a first batch the models
    cannot run) before the statistics pass or the descent start.
    """
    t_start = time.perf_counter()
    info_m = _check_method(method)
    models = _check_models(models)
    _check_hyperparameters(balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule)
    _check_max_batches(max_batches)
    if spec is not None and not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    first = None
    one_shot = False
    if loader is not None:
        first, loader_items = _peek(loader)
        if iter(loader) is loader:  # a one-shot iterator (generator): keep the peeked batch, no second pass
            loader, one_shot = loader_items, True
    elif info_m.activations:
        raise ValueError(f"method {method!r} uses activation statistics: pass a loader")
    timing = {"trace": 0.0, "forward": 0.0, "stats": 0.0, "similarity": 0.0, "solve": 0.0, "apply": 0.0,
              "reset_bn": 0.0}
    if spec is None:
        inputs = example_inputs if example_inputs is not None else first
        if inputs is None:
            raise ValueError("pass spec=..., example_inputs=... or a loader: tracing needs example inputs")
        if first is not None:
            try:
                with torch.no_grad():
                    was = models[0].training
                    models[0].eval()
                    try:
                        models[0](first[:1].to(next(models[0].parameters()).device))
                    finally:
                        models[0].train(was)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"model 0 cannot run on the loader's first batch of shape {tuple(first.shape)}: "
                                 f"{exc}") from exc
        t0 = time.perf_counter()
        spec = trace(models[0], inputs)
        timing["trace"] = time.perf_counter() - t0
    stats = None
    if info_m.activations:
        stats = collect_stats(models, spec, loader, max_batches=max_batches, device=device, backend=backend,
                              progress=progress)
        timing.update(stats.timing)
    plan = match(models, spec, method, stats=stats, balance=balance, reduce=reduce, alpha=alpha, beta=beta,
                 max_sweeps=max_sweeps, patience=patience, seed=seed, backend=backend, progress=progress,
                 axis_rule=axis_rule)
    timing.update(plan.info["timing"])
    t0 = time.perf_counter()
    model = plan.apply(models, check=False)
    timing["apply"] = time.perf_counter() - t0
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if reset_bn_stats and has_bn and one_shot and info_m.activations:
        warnings.warn("the loader is a one-shot iterator consumed by the statistics pass, so the merged model's "
                      "BatchNorm statistics were not recomputed; pass a re-iterable loader (a DataLoader or list)")
    elif reset_bn_stats and has_bn and loader is not None:
        t0 = time.perf_counter()
        reset_bn(model, loader, max_batches=max_batches, device=device)
        timing["reset_bn"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - t_start
    report = {
        "method": method,
        "num_models": len(models),
        "groups": {g.name: {"size": g.size, "num_outputs": int(plan.maps[g.name].num_outputs),
                            "merge_value": float(plan.maps[g.name].merge_value)} for g in spec.groups},
        "merge_value": plan.info["merge_value"],
        "history": plan.info["history"],
        "sweeps": plan.info["sweeps"],
        "fallback_groups": plan.info["fallback_groups"],
        "num_batches": stats.num_batches if stats is not None else 0,
        "timing": timing,
    }
    return MergeResult(model=model, plan=plan, report=report)
