"""The one-call API: :func:`merge` runs every stage (trace, statistics, matching, apply, BatchNorm reset) and
returns a :class:`MergeResult` with the merged model, the plan and a report of every stage's time. ``avg`` skips
the trace (identity maps need no groups), so it merges models torch.fx cannot trace."""

from __future__ import annotations

import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..backends import choose
from ..collect import collect_stats, loader_length
from ..distributed import Collective, broadcast_model, min_over_ranks, resolve_group, share_plan, world_of
from ..distributed import check_device as check_group_device
from ..inputs import check_device, check_finite_weights, check_max_batches, check_models, peek
from ..memory import (SAFE_FRACTION, MemoryPlan, available_bytes, format_bytes, keep_bytes, moment_bytes,
                      packed_moments, parse_bytes, plan_passes, shard_groups)
from ..calibrate import calibrated_reset, check_reset_mode, reset_mode
from ..norm import recompute_bn
from ..partial import check_combine, partial_merge
from ..plan import MergePlan, fingerprint
from ..probe import run_named
from ..repair import repair as repair_model
from ..sampling import MATCH_TOL, NORM_TOL, StableMatching, check_tolerance
from ..spec import PermSpec, SpecTraceError, permuted_share, trace
from ..spec.cut import find_cut
from .coordinates import coordinates, solve_group
from .descent import run_matching
from .registry import check_hyperparameters, check_method
from .widths import check_widths, default_reduce

__all__ = ["MergeResult", "merge"]


@dataclass
class MergeResult:
    """What :func:`merge` returns.

    Attributes:
        model: the merged ``nn.Module`` (BatchNorm statistics recomputed when a loader was given); with ``stop_at``
            a :class:`mudsc.PartialMerge`.
        plan: the :class:`mudsc.MergePlan` (``plan.apply(models)`` rebuilds ``model`` before the BN reset and REPAIR).
        report: ``{"method", "num_models", "groups": {name: {"size", "num_outputs", "merge_value", "positions"}},
            "merge_value", "history", "sweeps", "fallback_groups", "num_batches", "timing"}``. ``timing`` (seconds)
            has one entry per stage, which add up to ``total``: ``checks`` (arguments, weight scan, loader peek),
            ``trace`` (with the coverage share), ``width_probe``, ``forward`` (the models' forward passes of the
            statistics pass), ``stats`` (the rest of that pass), ``similarity`` and ``solve`` (of the matching),
            ``matching_other`` (the rest of it: correlations, bookkeeping, fingerprints), ``apply``, ``final_check``
            (the merged model's forward pass), ``reset_bn`` and ``repair``. ``samples``: what the passes read
            (:mod:`mudsc.sampling`): ``{"adaptive", "loader_batches", "stats_batches", "group_batches",
            "stopped_early": {group: batches}, "solves", "rule_seconds", "bn_batches"}``; ``memory``: the memory
            plan and the measured peaks;
            ``distributed``: ``{"world_size", "rank", "backend", "rank_peaks"}`` under a process group, else None;
            ``repair``: REPAIR's ``{"modules", "batches", "max_scale", "seconds"}``, None when it did not run;
            ``partial``: ``{"stop_at", "parameters", "models_parameters"}`` of a partial merge, else None;
            ``coverage`` (always): ``{"permuted_share", "groups", "strict", "traced"}``: the share of models[0]'s
            parameter entries whose output unit (axis-0 row; an embedding's channel) a group of the spec permutes
            (:func:`mudsc.spec.permuted_share`; 1.0 when every parameter's units are aligned, lower with the class
            logits or the channels ``strict=False`` left unpermuted; 0.0 for
            ``avg``), the spec's number of groups, the ``strict`` argument, and whether merge traced the spec
            (False: ``spec=`` was given, or ``avg`` needs none).
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
    reduce: Optional[float] = None,
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
    reset_bn_stats: Union[bool, str, None] = None,
    repair: Optional[bool] = None,
    zip_decay: str = "same-model",
    max_memory: Optional[Union[int, str]] = None,
    adaptive: bool = True,
    sample_tol: float = MATCH_TOL,
    process_group: Any = None,
    stop_at: Optional[str] = None, combine: Union[str, Callable] = "mean", strict: bool = True,
) -> MergeResult:
    """Merge N models of one architecture into one, without training.

    Args:
        models: N >= 2 ``nn.Module`` s with identical parameter names and shapes (not modified).
        loader: yields ``Tensor[B, ...]`` or ``(inputs, targets)``; needed by the activation methods, and used
            to recompute BatchNorm statistics of the result (``reset_bn_stats``); must be re-iterable for that.
        method: one of ``mudsc.METHODS`` (default ``"mudsc-zip"``). progress: tqdm bars on the data pass and sweeps.
        spec: the models' :class:`mudsc.PermSpec` (default: ``mudsc.trace(models[0], example_inputs)``); one
            written by hand (:mod:`mudsc.spec`, checked with :func:`mudsc.check_spec`) for models the tracer cannot
            follow. ``avg`` needs none: it averages every tensor.
        example_inputs: inputs for tracing (default: two samples of the loader's first batch; unused by ``"avg"``).
        balance, reduce, alpha, beta, max_sweeps, patience, seed, axis_rule, zip_decay: see :func:`match` (``reduce``
            defaults to ``1 - 1/N``, which keeps the input widths; one that changes them is accepted only when the
            model runs with the new widths, checked before the statistics pass: :mod:`mudsc.methods.widths`).
        max_batches: at most this many batches in the statistics pass and in the BatchNorm reset (None: all).
        adaptive, sample_tol: stop both early once more data stops changing them (:mod:`mudsc.sampling`: a group's
            map from half its batches loses <= ``sample_tol`` of mean merged correlation; the BatchNorm statistics
            drift < ``NORM_TOL``); ``report["samples"]`` says what was read. False: every batch.
        device, backend: where the statistics pass runs (default: model 0's device); ``"auto"`` | ``"native"`` |
            ``"reference"`` for every solver, statistic and similarity.
        reset_bn_stats: the result's BatchNorm statistics recomputed on the loader (True; the original's), not (False),
            or the endpoints' own moved by what merging changed (``"calibrated"``, :mod:`mudsc.calibrate`); None
            (default): True, ``"calibrated"`` with ``stop_at``.
        repair: REPAIR the merged units' activation statistics (:mod:`mudsc.repair`; N + 1 more passes over the
            loader). None (default): for models without BatchNorm (GroupNorm, LayerNorm, none), whose BatchNorm
            reset does nothing, when the loader can be read again; True: also with BatchNorm (after its reset).
        max_memory: bytes (or ``"16GB"``) the statistics may take (default: a safe fraction of what the device has
            free); more groups than fit are split over several passes, same plan (:mod:`mudsc.memory`).
        process_group: merge across the ranks of a ``torch.distributed`` group (:mod:`mudsc.distributed`; each
            rank passes the same models and arguments and its own shard of the data; the same plan and model on
            every rank; ``adaptive`` off). None (default): the default group if initialized with several ranks.
        stop_at, combine: partial zipping (:mod:`mudsc.partial`): merge the layers before module ``stop_at``
            (``"layer3"``), keep each model's own from it on; the result is a :class:`mudsc.PartialMerge` combining
            the branches' outputs by ``combine``. The plan is the full merge's (:func:`mudsc.partial_merge`).
        strict: trace strictly (an unsupported construct raises :class:`mudsc.SpecTraceError` naming its fx node);
            False: its channels stay unpermuted, with a warning. Unused with ``spec=``; ``stop_at`` cuts strictly.

    Every argument is checked (models: N, shapes, dtypes, devices, NaN/Inf; hyperparameters, device, loader, a first
    batch the models cannot run, merged widths they cannot run with) before the statistics pass. The merged model is
    run once on the example inputs at the end: a failure raises, naming the module, instead of returning it broken.
    """
    t_start = time.perf_counter()
    group = resolve_group(process_group)
    timing = dict.fromkeys(STAGES, 0.0)
    with Collective(group, "the checks and the trace") as step:  # a failure on one rank raises on every rank
        info_m, models, hyper, device = _check_all(method, models, group, (balance, reduce, alpha, beta, max_sweeps,
                                                   patience, seed, axis_rule, zip_decay), spec, max_batches, adaptive,
                                                   sample_tol, max_memory, device, reset_bn_stats)
        first, loader, one_shot = _peek_loader(loader, info_m.activations, method)
        timing["checks"] = time.perf_counter() - t_start
        spec, probe_inputs, coverage = _trace_and_probe(models, spec, example_inputs, first, info_m, hyper[1], timing,
                                                        strict)
        cut = _cut(models[0], stop_at, combine, probe_inputs, timing)
        step.share(models=[_rounded(fingerprint(m)) for m in models] if group is not None else None,
                   spec=spec.to_dict(), arguments=[method, hyper, max_batches, max_memory, backend, reset_bn_stats,
                                                   one_shot, repair, stop_at, strict])
        repair = _wants_repair(repair, models[0], loader, one_shot)
    adaptive = adaptive and group is None  # stopping decisions would need the global statistics
    rule = _stopping_rule(spec, len(models), info_m.solver, (hyper[1], alpha, beta, zip_decay), backend,
                          sample_tol if adaptive else None)
    stats, memory, stats_wall = (_statistics(models, spec, info_m, loader, one_shot, max_memory, max_batches, device,
                                             backend, progress, rule, group) if info_m.activations else (None,) * 2 + (0.0,))
    t0 = time.perf_counter()  # the models, weights and hyperparameters were checked above
    plan = share_plan(run_matching(models, spec, info_m, stats, *hyper[:7], backend, progress, axis_rule,  # checked
                                   zip_decay=zip_decay, workers=SOLVE_WORKERS), group)
    _matching_timing(timing, plan, stats, stats_wall, time.perf_counter() - t0)
    model, bn_batches, repaired = _build(models, plan, probe_inputs, (loader, reset_bn_stats), one_shot and
                                         info_m.activations, max_batches, device, adaptive, group, timing,
                                         loader if repair else None, (cut, combine))
    report = _report(method, models, spec, plan, stats, timing, t_start, (memory, device, group), coverage=coverage,
                     samples=(adaptive, loader_length(loader, max_batches), rule, bn_batches), repair=repaired,
                     partial=_partial_report(model, models, stop_at))
    return MergeResult(model=model, plan=plan, report=report)


STAGES = ("checks", "trace", "width_probe", "forward", "stats", "similarity", "solve", "matching_other", "apply",
          "final_check", "reset_bn", "repair")  # report["timing"]'s stages, in order; they add up to its "total"


def _build(models, plan: MergePlan, probe_inputs, bn: tuple, consumed: bool, max_batches, device, adaptive: bool,
           group, timing: Dict[str, float], repair_loader=None, partial=(None, "mean")) -> tuple:
    """``(merged model, BN reset batches or None, REPAIR's summary or None)``: the plan applied, the result run on
    the probe inputs (an error names the module), its BatchNorm statistics reset as ``bn = (loader, reset_bn_stats)``
    say (:func:`merge`),
    REPAIR on ``repair_loader`` (None: not), and under a process group rank 0's weights on every rank (they are
    computed identically everywhere); seconds go in ``timing``. ``partial = (cut, combine)``: with a cut
    (:func:`mudsc.spec.cut.find_cut`) the result is the :class:`mudsc.PartialMerge` there, REPAIR on its prefix."""
    t0 = time.perf_counter()
    cut, combine = partial
    mode = reset_mode(bn[1], cut is not None)
    bn_loader, calibrate = (bn[0] if mode else None), mode == "calibrated"
    model = plan.apply(models, check=False) if cut is None else partial_merge(
        models, plan, cut.stop_at, probe_inputs, combine, check=False, cut=cut)
    timing["apply"] = time.perf_counter() - t0
    if probe_inputs is not None:
        t0 = time.perf_counter()
        run_named(model, probe_inputs, "the merged model")
        timing["final_check"] = time.perf_counter() - t0
    rebuild = None
    if calibrate:  # the calibrated reset (mudsc.calibrate) rebuilds the result from the endpoints reset on the data
        rebuild = (lambda ms: plan.apply(ms, check=False)) if cut is None else (lambda ms: partial_merge(
            ms, plan, cut.stop_at, probe_inputs, combine, check=False, cut=cut))
    timing["reset_bn"], bn_batches = _reset_bn(model, bn_loader, consumed, max_batches, device,
                                               NORM_TOL if adaptive else None, group, (models, rebuild))
    repaired = None
    if repair_loader is not None:
        t0 = time.perf_counter()
        repaired = repair_model(model if cut is None else model.prefix, models, plan.spec, plan.maps, repair_loader,
                                max_batches, device, process_group=group if group is not None else False)
        timing["repair"] = repaired["seconds"] = time.perf_counter() - t0
    broadcast_model(model, group)
    return model, bn_batches, repaired


def _cut(model: nn.Module, stop_at: Optional[str], combine, probe_inputs, timing: Dict[str, float]):
    """The graph of ``model`` cut before ``stop_at`` for partial zipping (None without ``stop_at``), found on the
    probe inputs before any data pass; its seconds count as ``trace``."""
    if stop_at is None:
        return None
    check_combine(combine)
    if probe_inputs is None:
        raise ValueError("stop_at needs example inputs to cut the graph on: pass a loader or example_inputs")
    t0 = time.perf_counter()
    cut = find_cut(model, probe_inputs, stop_at)
    timing["trace"] += time.perf_counter() - t0
    return cut


def _partial_report(model: nn.Module, models, stop_at: Optional[str]) -> Optional[dict]:
    """``report["partial"]``: ``{"stop_at", "parameters": {"prefix", "branches", "total"}, "models_parameters"}``
    (element counts; the N models' together) for a partial merge, else None."""
    if stop_at is None:
        return None
    return {"stop_at": stop_at, "parameters": model.parameter_counts(),
            "models_parameters": sum(p.numel() for m in models for p in m.parameters())}


def _wants_repair(repair: Optional[bool], model: nn.Module, loader, one_shot: bool) -> bool:
    """Whether :func:`merge` runs REPAIR (its ``repair`` argument); ValueError for ``repair=True`` without a
    loader that can be read again."""
    if repair is not None and not isinstance(repair, bool):
        raise TypeError(f"repair must be True, False or None, got {repair!r}")
    if repair and (loader is None or one_shot):
        raise ValueError("repair=True needs a loader that can be read again (a list, a DataLoader): REPAIR reads it "
                         "once per model and once more for the merged model")
    if repair is None:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        return loader is not None and not one_shot and not has_bn
    return repair


def _trace_and_probe(models, spec, example_inputs, first, info_m, reduce, timing, strict: bool = True) -> tuple:
    """``(spec, probe inputs or None, report["coverage"])``: ``spec`` or the trace of ``models[0]`` (``strict`` or
    not), with the width probe run on the probe inputs (example inputs, else two samples of the loader's first
    batch); their seconds go in ``timing``, the coverage's count as ``trace``."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    traced = spec is None and info_m.solver is not None
    t0 = time.perf_counter()
    if spec is None:
        spec = _trace(models[0], example_inputs, first, needs_groups=info_m.solver is not None, strict=strict)
    coverage = _coverage_report(models[0], spec, strict, traced)
    timing["trace"] = time.perf_counter() - t0
    probe_inputs = _on_device_of(models[0], example_inputs if example_inputs is not None else
                                 (first[:2] if first is not None else None))
    if probe_inputs is not None:
        t0 = time.perf_counter()
        check_widths(models, spec, info_m, reduce, probe_inputs)
        timing["width_probe"] = time.perf_counter() - t0
    return spec, probe_inputs, coverage


def _coverage_report(model: nn.Module, spec: PermSpec, strict: bool, traced: bool) -> dict:
    """``report["coverage"]``: ``{"permuted_share", "groups", "strict", "traced"}``: the share of ``model``'s
    parameter entries whose output unit a group of ``spec`` permutes (:func:`mudsc.spec.permuted_share`; 0 for a
    model without parameter entries), the number of groups, the ``strict`` argument, and whether :func:`merge`
    traced the spec (False: one passed as ``spec=``, or ``avg``, which needs none)."""
    has_entries = any(p.numel() for p in model.parameters())
    share = permuted_share(model, spec) if has_entries else 0.0
    return {"permuted_share": float(share), "groups": len(spec.groups), "strict": strict, "traced": traced}


def _rounded(fp: dict) -> dict:
    """A :func:`mudsc.plan.fingerprint` with its sums at 10 significant digits: what ranks compare (their last bits
    may differ between CPU types for the same weights)."""
    return {k: [shape, dtype] + [float(f"{x:.10g}") for x in sums] for k, (shape, dtype, *sums) in fp.items()}


def _distributed_report(group, memory: dict) -> Optional[dict]:
    """``report["distributed"]``: the process group's ranks, this rank, its backend and every rank's measured peak
    (``peak_rss_gib`` / ``cuda_peak_allocated_gib`` of each rank's ``report["memory"]``, gathered); None: one
    process."""
    if group is None:
        return None
    import torch.distributed as dist

    peaks = [None] * dist.get_world_size(group)
    dist.all_gather_object(peaks, {k: memory[k] for k in ("peak_rss_gib", "cuda_peak_allocated_gib") if k in memory},
                           group=group)
    return {"world_size": dist.get_world_size(group), "rank": dist.get_rank(group),
            "backend": str(dist.get_backend(group)), "rank_peaks": peaks}


def _check_all(method, models, group, hyper: tuple, spec, max_batches, adaptive, sample_tol, max_memory,
               device, reset_bn_stats=None) -> tuple:
    """``(method info, models, hyperparameters with the default reduce filled in, device)``, every argument of
    :func:`merge` checked before any data moves."""
    info_m = check_method(method)
    check_reset_mode(reset_bn_stats)
    models = check_models(models)
    check_group_device(group, _device_of(models[0]), "the models")
    if hyper[1] is None:
        hyper = (hyper[0], default_reduce(len(models))) + hyper[2:]
    check_hyperparameters(*hyper)
    return info_m, models, hyper, _check_arguments(models, spec, max_batches, adaptive, sample_tol, max_memory,
                                                   device)


def _check_arguments(models, spec, max_batches, adaptive, sample_tol, max_memory, device) -> Optional[torch.device]:
    """The arguments :func:`merge` checks after the method and hyperparameters, before any data moves; the
    checked device."""
    check_max_batches(max_batches)
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive must be True or False, got {adaptive!r}")
    check_tolerance(sample_tol)
    if max_memory is not None:
        parse_bytes(max_memory)
    device = check_device(device)
    check_finite_weights(models)
    if spec is not None and not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    return device


# Solves of the activation-only matching that run at once (the zips and LAPs are single-threaded native code that
# releases the GIL): two, the cores of the machines this was measured on; the plan is the sequential one.
SOLVE_WORKERS = 2 if (os.cpu_count() or 1) > 1 else 1


def _matching_timing(timing: Dict[str, float], plan: MergePlan, stats, stats_wall: float, wall: float) -> None:
    """Fill the statistics and matching stages of ``timing``: passes deferred by the memory plan ran inside the
    matching's similarity stage and count as forward / stats; ``matching_other`` is the rest of the matching
    (correlations finalised on first use, maps, the plan's fingerprints)."""
    timing.update(plan.info["timing"])
    deferred = 0.0
    if stats is not None:
        deferred = stats.timing.get("deferred_wall", 0.0)
        timing["similarity"] -= deferred
        timing["forward"] = stats.timing["forward"]
        timing["stats"] = stats_wall + deferred - timing["forward"]  # hooks, accumulation, allocation, planning
    timing["matching_other"] = wall - timing["similarity"] - timing["solve"] - deferred


def _memory_plan(models, spec: PermSpec, info_m, dev: torch.device, max_memory, one_shot: bool,
                 backend: str, group=None) -> MemoryPlan:
    """The passes of the statistics (:mod:`mudsc.memory`) on ``dev`` for ``max_memory`` bytes (None: a safe
    fraction of what it has free, the least over the ranks of ``group``, so that every rank plans the same
    passes). Under a process group, when one process would need several passes (or could not fit a group at all)
    and sharding the groups over the ranks fits one pass, the groups are sharded
    (:func:`mudsc.memory.shard_groups`). ValueError when several passes are needed but the loader is one-shot."""
    budget = parse_bytes(max_memory) if max_memory is not None else min_over_ranks(
        int(SAFE_FRACTION * available_bytes(dev)), group)
    n = len(models)
    coords = [[(g.name, n * g.size) for g in coord if g.taps] for coord in coordinates(spec)]
    packed = packed_moments(dev, backend)
    try:
        memory = plan_passes(coords, keep_correlations=info_m.descent, budget=budget, explicit=max_memory is not None,
                             packed=packed)
    except MemoryError:
        memory = None  # sharding the groups over the ranks may still fit
    if (memory is None or memory.passes > 1) and group is not None and choose("statistics", backend, needs="ops") == "native":
        sharded = shard_groups(coords, info_m.descent, budget, world_of(group), packed)
        if sharded is not None:  # one pass, each rank holding the moments of its own groups
            names = [name for coord in coords for name, _ in coord]
            return MemoryPlan(budget=budget, chunks=[names], peaks=[max(sharded[1])], explicit=max_memory is not None,
                              group_bytes={name: moment_bytes(f, packed) for coord in coords for name, f in coord},
                              owners=sharded[0], rank_peaks=sharded[1])
    if memory is None:
        return plan_passes(coords, keep_correlations=info_m.descent, budget=budget, explicit=max_memory is not None,
                           packed=packed)  # raises the MemoryError naming the group that does not fit
    if memory.passes > 1 and one_shot:
        raise ValueError(f"the statistics need {memory.passes} passes over the loader to fit "
                         f"{format_bytes(budget)} (float64 moments of {format_bytes(sum(memory.group_bytes.values()))}"
                         "), but the loader is a one-shot iterator: pass a re-iterable loader (a list, a "
                         "DataLoader) or a larger max_memory")
    return memory


def _stopping_rule(spec: PermSpec, n: int, solver: Optional[str], zip_args: tuple, backend: str,
                   tol: Optional[float]) -> Optional[StableMatching]:
    """The statistics pass's stopping rule at ``tol`` (:mod:`mudsc.sampling`; its per-group state serves every
    pass of the memory plan), solving with the method's own solver and ``(reduce, alpha, beta, decay)``; None for
    ``tol=None`` (every batch)."""
    if tol is None or solver is None:
        return None
    reduce, alpha, beta, decay = zip_args
    groups = {g.name: g for g in spec.groups}

    def solve(name, sim):
        return solve_group(groups[name], sim, n, solver, reduce, alpha, beta, backend, decay).labels

    return StableMatching(solve, tol)


def _statistics(models, spec: PermSpec, info_m, loader, one_shot, max_memory, max_batches, device, backend, progress,
                rule: Optional[StableMatching] = None, group=None):
    """``(stats, memory plan, seconds)``: the transient statistics of the first chunk of the memory plan, the
    other chunks deferred to the matching (one more pass each, run when it first asks for one of their groups);
    ``rule`` may end each pass early. Under a process ``group`` every pass sums its statistics over the ranks
    (the matching asks for the deferred groups in the same order on every rank)."""
    t0 = time.perf_counter()
    dev = device if device is not None else _device_of(models[0])
    memory = _memory_plan(models, spec, info_m, dev, max_memory, one_shot, backend, group)

    def collect(names):
        return collect_stats(models, spec, loader, max_batches=max_batches, device=device, backend=backend,
                             progress=progress, transient=True, groups=names, keep_bytes=keep_bytes(dev), stop=rule,
                             process_group=group if group is not None else False, owners=memory.owners or None)

    stats = collect(memory.chunks[0] if memory.passes > 1 else None)
    if memory.passes > 1:
        stats.defer(memory.chunks[1:], collect)
    return stats, memory, time.perf_counter() - t0


def _device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _memory_report(memory: Optional[MemoryPlan], dev: torch.device, stats=None) -> dict:
    """The memory plan (None without statistics), the micro-batches of the pass, and the peaks measured so far
    in this process (RSS: the process's peak since it started, ``ru_maxrss``; on CUDA
    ``torch.cuda.max_memory_allocated``)."""
    out = memory.as_dict() if memory is not None else {"passes": 0}
    if stats is not None:
        out["micro_batches"] = stats.micro_batches
        out["kept_per_sample_mib"] = (stats.kept_per_sample or 0) / 2**20
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if dev.type == "cuda":
        out["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def _trace(model: nn.Module, example_inputs: Any, first: Optional[torch.Tensor], needs_groups: bool = True,
           strict: bool = True) -> PermSpec:
    """The spec of ``model``, traced on ``example_inputs`` (default: two samples of the loader's first batch
    ``first``, and its float64 check on one; both cost forward passes on whatever they get), after checking that
    the model runs on one sample of ``first`` (an error then names the batch, not the tracer).
    Without ``needs_groups`` (identity maps: ``avg``) nothing is traced: a spec without groups averages every
    tensor. A failed trace raises :class:`mudsc.SpecTraceError` saying what to do instead: for a construct the
    tracer cannot follow, ``merge(..., strict=False)``; for a model torch.fx cannot trace, a spec passed as
    ``spec=``. ``strict=False`` leaves the channels of unsupported constructs unpermuted, with warnings."""
    inputs = example_inputs if example_inputs is not None else (first[:2] if first is not None else None)
    if inputs is None and needs_groups:
        raise ValueError("pass spec=..., example_inputs=... or a loader: tracing needs example inputs")
    if first is not None:
        _check_runs(model, first)
    if not needs_groups:
        return PermSpec([])
    try:
        check_inputs = first[:1] if example_inputs is None and first is not None else None
        return trace(model, inputs, strict=strict, check_inputs=check_inputs)
    except SpecTraceError as exc:
        graphed = not str(exc).startswith(_NO_GRAPH)  # torch.fx built the graph; a construct in it is unsupported
        raise SpecTraceError(
            f"{exc}. " + (_NON_STRICT if graphed and strict else "") +
            f"(merge traces models[0] with mudsc.trace(model, inputs, strict={strict}): a spec traced yourself, "
            "e.g. with tracer=, or written by hand with mudsc.spec.Group/Member/Tap or mudsc.PermSpec.from_dict "
            "and verified with mudsc.check_spec, goes in as merge(..., spec=spec); method='avg' needs none)") from exc


_NO_GRAPH = "torch.fx could not trace"  # how the tracer's error starts when torch.fx built no graph at all
_NON_STRICT = ("merge(..., strict=False) merges anyway, with the channels that construct touches left "
               "unpermuted (warnings name the nodes; report['coverage'] gives the share of parameters permuted) ")


def _check_runs(model: nn.Module, first: torch.Tensor) -> None:
    """ValueError naming the batch unless ``model`` runs (eval, no grad) on one sample of ``first``."""
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                model(first[:1].to(next(model.parameters()).device))
            finally:
                model.train(was)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"model 0 cannot run on the loader's first batch of shape {tuple(first.shape)}: "
                         f"{exc}") from exc


def _peek_loader(loader, needed: bool, method: str) -> tuple:
    """``(first model input or None, the loader to use, whether it is a one-shot iterator)``. A one-shot
    iterator (a generator) is replaced by one that yields the peeked batch again; it cannot feed a second pass."""
    if loader is None:
        if needed:
            raise ValueError(f"method {method!r} uses activation statistics: pass a loader")
        return None, None, False
    first, items = peek(loader)
    if iter(loader) is loader:
        return first, items, True
    return first, loader, False


def _on_device_of(model: nn.Module, inputs: Any) -> Any:
    """``inputs`` (a tensor, a tuple of them, or None) on the device of ``model``'s first parameter."""
    param = next(model.parameters(), None)
    if inputs is None or param is None:
        return inputs
    if isinstance(inputs, torch.Tensor):
        return inputs.to(param.device)
    return tuple(t.to(param.device) if isinstance(t, torch.Tensor) else t for t in inputs)


def _reset_bn(model: nn.Module, loader: Iterable, consumed: bool, max_batches, device, tol: Optional[float],
              group=None, calibration=(None, None)) -> tuple:
    """Recompute the merged model's BatchNorm statistics (if it has any) with ``loader``, stopping early at
    ``tol`` (:func:`mudsc.norm.recompute_bn`); ``(seconds, batches read or None)``. A ``consumed`` one-shot loader
    cannot be read again: warn instead. No loader: nothing to do. ``calibration = (models, rebuild)`` with a
    ``rebuild`` (N models -> the result built as ``model`` was): the calibrated reset (:mod:`mudsc.calibrate`)."""
    if loader is None or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0.0, None
    if consumed:
        warnings.warn("the loader is a one-shot iterator consumed by the statistics pass, so the merged model's "
                      "BatchNorm statistics were not recomputed; pass a re-iterable loader (a DataLoader or list)")
        return 0.0, None
    t0 = time.perf_counter()
    group = group if group is not None else False
    models, rebuild = calibration
    if rebuild is not None:
        batches = calibrated_reset(model, models, rebuild, loader, max_batches, device, tol, group)
    else:
        batches = recompute_bn(model, loader, max_batches=max_batches, device=device, tol=tol, process_group=group)
    return time.perf_counter() - t0, batches


def _samples_report(adaptive: bool, loader_batches: Optional[int], stats, rule: Optional[StableMatching],
                    bn_batches: Optional[int]) -> dict:
    """``report["samples"]``: how much of the loader each pass read (:mod:`mudsc.sampling`)."""
    return {
        "adaptive": adaptive,
        "loader_batches": loader_batches,  # None: a loader without len()
        "stats_batches": stats.num_batches if stats is not None else 0,
        "group_batches": dict(stats.group_batches) if stats is not None else {},
        "stopped_early": dict(rule.stopped_at) if rule is not None else {},
        "solves": rule.checks if rule is not None else 0,
        "rule_seconds": stats.timing.get("stopping_rule", 0.0) if stats is not None else 0.0,
        "bn_batches": bn_batches,
    }


def _report(method: str, models, spec: PermSpec, plan: MergePlan, stats, timing: Dict[str, float], t_start: float,
            memory: tuple, coverage: dict, samples: tuple, repair: Optional[dict], partial: Optional[dict]) -> dict:
    """:attr:`MergeResult.report` (see there), with ``timing["total"]`` since ``t_start``; ``memory`` is
    ``(memory plan or None, device or None, process group or None)``, ``samples`` the arguments of
    :func:`_samples_report` after ``stats``."""
    timing["total"] = time.perf_counter() - t_start
    plan_memory, device, group = memory
    adaptive, loader_batches, rule, bn_batches = samples
    memory_report = _memory_report(plan_memory, device if device is not None else _device_of(models[0]), stats)
    return {
        "method": method,
        "num_models": len(models),
        "groups": {g.name: {"size": g.size, "num_outputs": int(plan.maps[g.name].num_outputs),
                            "merge_value": float(plan.maps[g.name].merge_value),
                            "positions": stats.positions(g.name) if stats is not None else None}
                   for g in spec.groups},
        "merge_value": plan.info["merge_value"],
        "history": plan.info["history"],
        "sweeps": plan.info["sweeps"],
        "fallback_groups": plan.info["fallback_groups"],
        "num_batches": stats.num_batches if stats is not None else 0,
        "timing": timing,
        "samples": _samples_report(adaptive, loader_batches, stats, rule, bn_batches),
        "memory": memory_report,
        "coverage": coverage,
        "distributed": _distributed_report(group, memory_report),
        "repair": repair,
        "partial": partial,
    }
