"""The statistics pass (ALGORITHM.md §2): the activation correlation of every group's units across N models.

:class:`StatsCollector` registers a hook on every tap of every group of every model (forward pre-hooks for
``kind="input"``, forward hooks for ``"output"``) and feeds one :class:`mudsc.CorrelationAccumulator` per group
over its ``N·size`` units (model-major). Per batch the N models run one after another; models 0..N-2 keep their
tapped tensors of each tap call until model N-1 reaches the same call, whose hook then hands the N tensors to the
accumulator (features concatenated model-major, every other axis a sample).

A kept tensor must not change before it is used. One that nothing modifies in place is kept as is; one that an
in-place op changes later (``relu_``, ``inplace=True``) must be copied. Which holds is learnt per (model, group,
tap) on the first batch: the tensor is copied and its version counter tells at the end of the batch whether it
changed. From the second batch on, unchanged ones are kept without a copy, and their version is still checked.

:func:`collect_stats` runs the pass over a loader and returns :class:`ActivationStats` (the accumulators and the
finalised float32 correlations, computed once per group).
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._progress import progress_bar
from .distributed import (ActivationExchange, Collective, RankFailure, broadcast_group_stats, resolve_group,
                          sum_over_ranks)
from .distributed import check_device as check_group_device
from .inputs import check_max_batches, check_models, peek
from .memory import accumulator_note, is_out_of_memory, packed_moments
from .norm import first_input
from .spec import Group, PermSpec
from .stats import CorrelationAccumulator

__all__ = ["ActivationStats", "StatsCollector", "TapError", "collect_stats"]


class ActivationStats:
    """Per-group activation statistics of N models: one :class:`CorrelationAccumulator` per group over the
    ``N·size`` units (model-major). ``correlation(group)`` is computed once and cached as float32, so methods and
    balance sweeps reuse it; the accumulator's float64 matrices made on the way are freed.

    ``transient=True`` (what :func:`mudsc.merge` asks for: its statistics serve one matching) trades reuse for
    memory: a group's accumulator (its float64 ``F × F`` moment) is dropped as soon as its float32 correlation
    is made, and :meth:`release` drops that correlation once the matching is done with the group.

    Attributes:
        spec, num_models, accumulators (``{group name: CorrelationAccumulator}``; groups without taps are
        absent, and so are the groups a transient object has finalised), num_batches, timing
        (``{"forward": s, "stats": s}``), transient, micro_batches (the most pieces a batch ran in under
        ``keep_bytes``: 1 for whole batches), kept_per_sample (bytes of model 0's kept activations per sample,
        when measured), group_batches (``{group: batches its statistics saw}``: fewer than ``num_batches``
        where a stopping rule ended it early, :mod:`mudsc.sampling`).
    """

    def __init__(self, spec: PermSpec, num_models: int, accumulators: Dict[str, CorrelationAccumulator],
                 num_batches: int, timing: Dict[str, float], backend: str, transient: bool = False):
        self.spec = spec
        self.num_models = num_models
        self.accumulators = accumulators
        self.num_batches = num_batches
        self.timing = dict(timing)
        self.backend = backend
        self.transient = bool(transient)
        self._sizes = {g: (acc.num_positions, acc.num_features) for g, acc in accumulators.items()}
        self._cache: Dict[str, torch.Tensor] = {}
        self._dead: Dict[str, torch.Tensor] = {}
        self._released: set = set()
        self._deferred: Dict[str, List[str]] = {}  # group -> the chunk of groups its pass collects
        self._collect = None
        self.micro_batches = 1
        self.kept_per_sample: Optional[int] = None
        self.group_batches: Dict[str, int] = {g: num_batches for g in accumulators}
        self._sharded: Dict[str, int] = {}  # group -> owner rank, until fetched (group-sharded statistics)
        self._process_group = None

    def shard(self, process_group, owners: Dict[str, int], device: torch.device) -> None:
        """Group-sharded statistics: ``owners`` (``{group: rank}``) hold the accumulators of their groups; the first
        time any rank asks for a group, every rank does, and its owner finalises it and broadcasts the float32
        correlation, the degenerate units and the sample positions to all
        (:func:`mudsc.distributed.broadcast_group_stats`; the matching asks for groups in the same order on every
        rank)."""
        self._process_group = process_group
        self._sharded = {name: rank for name, rank in owners.items()}
        self._shard_device = device
        self.group_batches.update({name: self.num_batches for name in owners})

    def _fetch(self, group: str) -> None:
        owner = self._sharded.pop(group)
        bundle = None
        acc = self.accumulators.get(group)
        if acc is not None:  # this rank owns it
            corr = acc.correlation(dtype=torch.float32)
            dead = torch.nonzero(acc.variances() < 1e-7).flatten()  # degenerate_units' default eps
            bundle = (corr, dead, acc.num_positions)
        corr, dead, positions = broadcast_group_stats(self._process_group, owner, bundle, self._shard_device)
        self._cache[group], self._dead[group] = corr, dead
        self._sizes[group] = (positions, corr.shape[0])
        if acc is not None:
            acc.clear_cache()
            if self.transient:
                del self.accumulators[group]

    def defer(self, chunks: Sequence[Sequence[str]], collect) -> None:
        """Groups collected later, one more pass over the data per chunk: ``collect(names)`` returns an
        :class:`ActivationStats` of those groups, and runs the first time one of them is asked for (the memory
        plan of :func:`mudsc.merge`: each pass holds only its chunk's float64 moments). Its forward and hook
        seconds add to ``timing``, and its wall seconds to ``timing["deferred_wall"]``."""
        for chunk in chunks:
            for name in chunk:
                self._deferred[name] = list(chunk)
        self._collect = collect

    def _run_deferred(self, group: str) -> None:
        chunk = self._deferred[group]
        t0 = time.perf_counter()
        more = self._collect(chunk)
        for name in chunk:
            self._deferred.pop(name, None)
        self.accumulators.update(more.accumulators)
        self._sizes.update(more._sizes)
        for key in ("forward", "stats", "stopping_rule"):
            self.timing[key] = self.timing.get(key, 0.0) + more.timing.get(key, 0.0)
        self.timing["deferred_wall"] = self.timing.get("deferred_wall", 0.0) + time.perf_counter() - t0
        self.timing["passes"] = self.timing.get("passes", 1) + 1
        self.micro_batches = max(self.micro_batches, more.micro_batches)
        self.kept_per_sample = self.kept_per_sample or more.kept_per_sample
        self.group_batches.update(more.group_batches)
        self.num_batches = max(self.num_batches, more.num_batches)

    def has_taps(self, group: str) -> bool:
        """Whether ``group`` has activation statistics (False: its matching falls back to weights)."""
        return group in self._sizes or group in self._deferred or group in self._sharded

    def degenerate_units(self, group: str, eps: float = 1e-7) -> torch.Tensor:
        """``LongTensor[k]``: units of ``group`` (model-major) whose variance over the samples seen is below ``eps``
        (the clamp of :meth:`correlation`; constant units included; empty without taps). Their correlations are
        0 or shrunk towards it, with their twins too, so matching must not rely on them."""
        if group in self._sharded:
            self._fetch(group)
        if group not in self._dead:
            acc = self._accumulator(group)
            if acc is None:
                self._dead[group] = torch.zeros(0, dtype=torch.long)
            else:
                self._dead[group] = torch.nonzero(acc.variances().cpu() < eps).flatten()  # zero variance: 0
        return self._dead[group]

    def positions(self, group: str) -> Optional[int]:
        """Sample positions ``group``'s statistics were taken over (samples times positions per sample, e.g.
        tokens or pixels, summed over its taps; None without taps)."""
        if group in self._deferred:
            self._run_deferred(group)
        if group in self._sharded:
            self._fetch(group)
        return self._sizes[group][0] if group in self._sizes else None

    def underdetermined(self, group: str) -> bool:
        """``group`` has fewer samples than units (its correlation is rank-deficient)."""
        samples = self.positions(group)
        return samples is not None and samples < self._sizes[group][1]

    def correlation(self, group: str) -> Optional[torch.Tensor]:
        """``Tensor[N·size, N·size]`` float32 activation correlation of ``group`` (None without taps)."""
        if group in self._sharded:
            self._fetch(group)
        if group not in self._cache:
            acc = self._accumulator(group)
            if acc is None:
                return None
            self._cache[group] = acc.correlation(dtype=torch.float32).cpu()
            acc.clear_cache()
            if self.transient:
                self.degenerate_units(group)  # needs the moments, which go now
                del self.accumulators[group]
        return self._cache[group]

    def release(self, group: str) -> None:
        """Free everything kept for ``group`` (accumulator and correlation); asking for it again is an error."""
        self.accumulators.pop(group, None)
        self._cache.pop(group, None)
        if group in self._sizes:
            self._released.add(group)

    def _accumulator(self, group: str) -> Optional[CorrelationAccumulator]:
        """The group's accumulator (None without taps); ValueError once released."""
        if group in self._released:
            raise ValueError(f"the statistics of group {group!r} were released (ActivationStats.release)")
        if group in self._deferred:
            self._run_deferred(group)
        return self.accumulators.get(group)

    def __repr__(self) -> str:
        return (f"ActivationStats({self.num_models} models, {len(self.accumulators)} groups, "
                f"{self.num_batches} batches)")


def tapped_tensor(value, tap, group: Group, module: nn.Module, where: str) -> torch.Tensor:
    """The group's channels of a hook's ``value`` (input args or output) at ``tap``: the first tensor, through
    the tap's row slice of a linear layer (fused qkv) and its channel slice; ValueError on a wrong width."""
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


class TapError(RuntimeError):
    """A tap behaved differently across models or batches (fired more often, modified in place later)."""


def _version(t: torch.Tensor) -> Optional[int]:
    try:
        return int(t._version)
    except RuntimeError:  # inference tensors have no version counter
        return None


class StatsCollector:
    """Hooks on the taps of N models feeding one accumulator per group (module docstring).

    Use as a context manager around the batches (models in eval mode inside, hooks removed and train/eval flags
    restored on exit), calling :meth:`run_batch` per batch.

    ``groups``: collect only these groups (names; default: every group with taps).

    ``keep_bytes``: at most about this many bytes of model activations kept waiting for the other models (None:
    no limit). Model 0's tapped tensors of a whole batch wait for model 1's forward; when a batch's would exceed
    the limit (their bytes per sample are measured once, on one sample of the first batch, model 0 only), the
    batch runs as equal micro-batches along its first axis. The sums are the same samples in the same order,
    folded in more pieces (float rounding aside, the same statistics).

    Attributes:
        accumulators: ``{group name: CorrelationAccumulator}`` of the collected groups.
        hook_time: seconds spent in the hooks (tap slicing, copies, accumulation).
    """

    def __init__(self, models: Sequence[nn.Module], spec: PermSpec, device: torch.device, backend: str = "auto",
                 groups: Optional[Sequence[str]] = None, keep_bytes: Optional[int] = None, exchange=None):
        self.models = list(models)
        self.spec = spec
        self.n = len(self.models)
        wanted = None if groups is None else set(groups)
        self.groups = [g for g in spec.groups if g.taps and (wanted is None or g.name in wanted)]
        self.packed = packed_moments(device, backend)
        self.exchange = exchange  # group-sharded statistics: other ranks' groups go there (mudsc.distributed)
        try:
            self.accumulators = {g.name: CorrelationAccumulator(self.n * g.size, device=device, backend=backend,
                                                                packed=self.packed)
                                 for g in self.groups if exchange is None or exchange.owns(g.name)}
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise MemoryError(f"out of memory allocating the statistics on {device}: "
                                  f"{accumulator_note(spec, self.n, self.packed)}") from exc
            raise
        self.hook_time = 0.0
        self._pending: Dict[Tuple[str, int], List] = {}
        self._calls: Dict[Tuple[int, str, int], int] = {}
        self._must_copy: Dict[Tuple[int, str, int], bool] = {}
        self._learning = False  # the first batch: a kept tensor found changed means "copy it", not an error
        self._skipped: set = set()  # (group, tap, call) whose kept tensors changed: redone by a second run
        self._redo: Optional[set] = None  # while that run goes: the (group, tap, call) it updates
        self._redo_taps: set = set()  # and their (group, tap)
        self.keep_bytes = keep_bytes
        self.kept_per_sample: Optional[int] = None  # bytes of model 0's tapped tensors per sample (measured)
        self.micro_batches = 1  # the most any batch was split into
        self._measure: Optional[dict] = None  # storage address -> a tensor on it, while measuring
        self._handles: list = []
        self._flags: list = []
        self._first_shape: tuple = ()
        self.stopped_at: Dict[str, int] = {}  # groups whose statistics are final (hooks skip them): their batches
        self.stop_time = 0.0  # seconds of the stopping rule

    def __enter__(self) -> "StatsCollector":
        self._flags = [{m: m.training for m in model.modules()} for model in self.models]
        try:
            for i, model in enumerate(self.models):
                model.eval()
                self._attach(i, model)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for model, flags in zip(self.models, self._flags):
            for m, training in flags.items():
                m.training = training

    def _attach(self, i: int, model: nn.Module) -> None:
        """Register model ``i``'s hooks on every tap of every collected group."""
        for g in self.groups:
            for t_index, tap in enumerate(g.taps):
                try:
                    module = model.get_submodule(tap.module)
                except AttributeError as exc:
                    raise ValueError(f"group {g.name!r} taps module {tap.module!r}, which model {i} lacks") from exc
                where = f"model {i}, group {g.name!r}, tap {tap.kind} of {tap.module!r}"

                def consume(value, i=i, g=g, t_index=t_index, tap=tap, model=model, where=where):
                    t0 = time.perf_counter()
                    self._consume(i, g, t_index, tapped_tensor(value, tap, g, model, where), tap, where)
                    self.hook_time += time.perf_counter() - t0

                if tap.kind == "input":
                    hook = module.register_forward_pre_hook(lambda module, args, c=consume: c(args[0] if args else None))
                else:
                    hook = module.register_forward_hook(lambda module, args, output, c=consume: c(output))
                self._handles.append(hook)

    def _consume(self, i: int, g: Group, t_index: int, x: torch.Tensor, tap, where: str) -> None:
        """Keep model ``i``'s tapped tensor until model N-1's hook of the same call feeds all N of them."""
        key = (g.name, t_index)
        if g.name in self.stopped_at:
            return
        if self._measure is not None:
            if i == 0:  # held until the forward ends, as a kept tensor is (a freed one's address is reused)
                self._measure.setdefault(x.untyped_storage().data_ptr(), x)
            return
        if self._redo is not None and key not in self._redo_taps:
            return  # the second run of a first batch only redoes what the first could not use
        call = self._calls.get((i, g.name, t_index), 0)
        self._calls[(i, g.name, t_index)] = call + 1
        slots = self._pending.setdefault(key, [])
        if i > 0 and call >= len(slots):
            raise TapError(f"{where}: fired more often than in model 0")
        if i < self.n - 1:
            kept = self._keep(x, (i, g.name, t_index))
            if i == 0:
                slots.append([kept])
            else:
                slots[call].append(kept)
            return
        kept = [self._check_kept(entry, where) for entry in slots[call]]
        slots[call] = None
        if any(k is None for k in kept):
            self._skipped.add((g.name, t_index, call))
            return
        if self._redo is not None and (g.name, t_index, call) not in self._redo:
            return
        if self.exchange is not None and not self.exchange.owns(g.name):
            self.exchange.send(g.name, torch.cat([t.movedim(tap.channel_dim, -1).reshape(-1, g.size)
                                                  for t in kept + [x]], dim=1))
            return
        self.accumulators[g.name].update(kept + [x], channel_dim=tap.channel_dim)

    def exchange_round(self, status: Optional[int] = None) -> None:
        """Group-sharded statistics: one round of :class:`mudsc.distributed.ActivationExchange` (status: this
        rank has data; :meth:`finish_exchange` for the rounds after its last batch), accumulating what arrives."""
        if self.exchange is None:
            return
        t0 = time.perf_counter()
        for name, rows in self.exchange.round(self.exchange.ACTIVE if status is None else status):
            self.accumulators[name].update(rows, channel_dim=1)
        self.hook_time += time.perf_counter() - t0

    def finish_exchange(self) -> None:
        """Join the exchange's rounds until every rank has read its last batch."""
        if self.exchange is not None:
            t0 = time.perf_counter()
            self.exchange.drain(lambda name, rows: self.accumulators[name].update(rows, channel_dim=1))
            self.hook_time += time.perf_counter() - t0

    def _keep(self, x: torch.Tensor, key) -> tuple:
        """``(tensor to use, original, its version, key)`` for a tapped activation kept until model N-1 has
        run: a copy where this tap is known to be modified in place later (or has no version counter), else the
        tensor itself. On the first batch nothing is copied: a tensor found changed is learnt as "copy it" and its
        update redone by :meth:`run_batch` (a copy of every activation of the first batch costs a forward's
        worth of page faults, and in-place changes of tapped tensors are rare)."""
        version = _version(x)
        if version is None or self._must_copy.get(key):
            return (x.clone(), x, version, key)
        return (x, x, version, key)

    def _check_kept(self, entry: tuple, where: str) -> Optional[torch.Tensor]:
        """The kept tensor of ``entry``, or None when it was modified in place on the first batch (its update is
        redone); learns (first time) or checks whether its source is modified in place."""
        data, source, version, key = entry
        changed = version is None or _version(source) != version
        known = self._must_copy.get(key)
        if data is not source:  # a copy
            if known is None:
                self._must_copy[key] = True
            return data
        if not changed:
            if known is None:
                self._must_copy[key] = False
            return data
        if self._learning:
            self._must_copy[key] = True
            return None
        raise TapError(
            f"{where}: this activation was modified in place after it was observed, although it was not on "
            "the first batch (data-dependent in-place ops?); its statistics would be wrong, so the pass stops "
            "here")

    def run_batch(self, x: torch.Tensor, index: int = 0) -> float:
        """Run every model on batch ``index`` ``x`` under ``no_grad``; returns the seconds of the models' own
        forward passes (hook time excluded). A model that fails raises ValueError naming the batch, its shape (and
        the first batch's), the model and the error; running out of memory raises :class:`MemoryError` with the
        accumulators' size."""
        if index == 0:
            self._first_shape = tuple(x.shape)
        self._learning = index == 0
        seconds = 0.0
        pieces = 1
        if self.keep_bytes is not None and x.dim() > 0 and x.shape[0] > 1:
            if self.kept_per_sample is None:
                seconds += self._measure_kept(x, index)
            per_batch = self.kept_per_sample * x.shape[0]
            pieces = min(x.shape[0], -(-per_batch // max(int(self.keep_bytes), 1)))
        self.micro_batches = max(self.micro_batches, pieces)
        for part in (x.tensor_split(pieces) if pieces > 1 else (x,)):
            self._skipped.clear()
            seconds += self._run_models(part, index, tuple(x.shape))
            if self._skipped:  # tapped tensors changed in place on the first batch: now copied, updates redone
                self._redo = set(self._skipped)
                self._redo_taps = {r[:2] for r in self._redo}
                self._skipped.clear()
                try:
                    seconds += self._run_models(part, index, tuple(x.shape))
                finally:
                    self._redo = None
        self._learning = False
        return seconds

    def _measure_kept(self, x: torch.Tensor, index: int) -> float:
        """Set :attr:`kept_per_sample` from model 0's tapped tensors on one sample of ``x`` (nothing is
        accumulated); the forward's seconds."""
        self._measure = {}
        try:
            t0 = time.perf_counter()
            h0 = self.hook_time
            with torch.no_grad():
                self.models[0](x[:1])
            seconds = (time.perf_counter() - t0) - (self.hook_time - h0)
            self.kept_per_sample = int(sum(t.untyped_storage().nbytes() for t in self._measure.values()))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"model 0 cannot run on one sample of batch {index} of shape {tuple(x.shape)}: "
                             f"{exc}") from exc
        finally:
            self._measure = None
        return seconds

    def _run_models(self, x: torch.Tensor, index: int, shape: tuple) -> float:
        """One forward of every model on ``x`` (batch ``index`` of ``shape``, or a micro-batch of it; hooks on);
        the models' own seconds."""
        self._pending.clear()
        self._calls.clear()
        t0 = time.perf_counter()
        h0 = self.hook_time
        with torch.no_grad():
            for i, model in enumerate(self.models):
                try:
                    model(x)
                except TapError:
                    raise  # the collector's own finding, already located
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    if is_out_of_memory(exc):
                        raise MemoryError(f"out of memory in the statistics pass (model {i}, batch {index} of shape "
                                          f"{shape}): {self.memory_note()}") from exc
                    if index == 0 and i == 0:
                        raise ValueError(f"model 0 cannot run on the loader's first batch of shape "
                                         f"{shape}: {exc}") from exc
                    raise ValueError(f"model {i} cannot run on batch {index} of shape {shape} (the first "
                                     f"batch had shape {self._first_shape}): {exc}") from exc
        seconds = (time.perf_counter() - t0) - (self.hook_time - h0)
        self.exchange_round()
        return seconds

    def memory_note(self) -> str:
        """How much the accumulators hold, for an out-of-memory message."""
        return accumulator_note(self.spec, self.n, self.packed)

    def check_fired(self) -> None:
        """ValueError when a group's taps never fired (the spec does not match the models' forward)."""
        for name, acc in self.accumulators.items():
            if acc.num_samples == 0:
                raise ValueError(f"the taps of group {name!r} never fired during the data pass; the spec does not "
                                 "match the models' forward")


def _warn_underdetermined(accumulators: Dict[str, CorrelationAccumulator]) -> None:
    """Warn for groups with fewer samples than units: their correlation is rank-deficient, so many matchings fit
    it equally well."""
    few = [(name, acc.num_positions, acc.num_features) for name, acc in accumulators.items()
           if acc.num_positions < acc.num_features]
    if few:
        name, samples, units = few[0]
        more = f" (and {len(few) - 1} more groups)" if len(few) > 1 else ""
        warnings.warn(f"group {name!r} has {samples} samples for its {units} units{more}: its activation correlation "
                      "is rank-deficient and the matching is poorly determined; pass more merge data")


def loader_length(loader, max_batches: Optional[int] = None) -> Optional[int]:
    """The number of batches a pass over ``loader`` reads (at most ``max_batches``), when known."""
    try:
        length = len(loader) if hasattr(loader, "__len__") else None
    except TypeError:
        length = None
    if length is None:
        return max_batches
    return length if max_batches is None else min(length, max_batches)


def collect_stats(
    models: Sequence[nn.Module],
    spec: PermSpec,
    loader: Iterable,
    max_batches: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    backend: str = "auto",
    progress: bool = True,
    transient: bool = False,
    groups: Optional[Sequence[str]] = None,
    keep_bytes: Optional[int] = None,
    stop=None,
    process_group=None,
    owners: Optional[Dict[str, int]] = None,
) -> ActivationStats:
    """One pass over ``loader``: the activation correlation of every group's units across the N models.

    Per batch every model runs a full fp32 forward under ``no_grad`` in eval mode (flags are restored) with a
    :class:`StatsCollector`'s hooks on the spec's taps.

    Args:
        models: N >= 2 models of one architecture.
        spec: their :class:`mudsc.PermSpec`.
        loader: yields ``Tensor[B, ...]`` or ``(inputs, targets)`` tuples/lists (the first element is used).
        max_batches: at most this many batches (None: all).
        device: run the models there (copies are made when they live elsewhere; default: model 0's device).
        backend: of the accumulators (``"reference"``: the original's per-batch float32 moments).
        progress: a tqdm bar over the batches.
        transient: the statistics serve one matching, which may free them group by group (:class:`ActivationStats`:
            at most one float64 moment matrix besides the float32 correlations once the matching starts).
        groups: collect only these groups (names; default: every group with taps). The others are absent, as
            groups without taps are, unless :meth:`ActivationStats.defer` names a pass that collects them.
        keep_bytes: cap on the activations kept between the models' forward passes (:class:`StatsCollector`;
            None: whole batches).
        stop: a stopping rule (:class:`mudsc.sampling.StableMatching`): after every batch its ``update(batches,
            {name: accumulator of the groups still collecting}, total batches or None)`` names the groups whose
            statistics are final; later batches skip them, and the pass ends once every group is final (None:
            every batch, up to ``max_batches``).
        process_group: when ``torch.distributed`` runs (:func:`mudsc.distributed.resolve_group`: None means the
            default group when one is initialized, False one process), ``loader`` is this rank's shard, every
            group's statistics are summed over the ranks (identical on every rank) and ``num_batches`` is the
            ranks' total; ``stop`` must then be None. A failure on one rank raises on every rank.
        owners: under a process group, ``{group: rank}``: group-sharded statistics (the memory plan's
            :func:`mudsc.memory.shard_groups`). Each rank accumulates only its own groups, over every rank's data
            (the tapped activations travel to their owners, :class:`mudsc.distributed.ActivationExchange`); a
            group's statistics reach every rank when it is first asked for (:meth:`ActivationStats.shard`).

    Returns:
        :class:`ActivationStats`; ``timing["forward"]`` is the models' own forward time, ``timing["stats"]``
        the time spent in hooks and accumulation.
    """
    group = resolve_group(process_group)
    if group is not None and stop is not None:
        raise ValueError("a stopping rule (stop=) cannot run under a process group: its decisions would need the "
                         "global statistics at every checkpoint")
    if owners and group is None:
        raise ValueError("owners= (group-sharded statistics) needs a process group of several ranks")
    with Collective(group, "the statistics pass") as step:
        collector, num_batches, forward = _run_pass(models, spec, loader, max_batches, device, backend, progress,
                                                    groups, keep_bytes, stop, group, owners)
        step.share(groups=[g.name for g in collector.groups], owners=owners)
    if group is not None:
        for acc in (collector.accumulators.values() if not owners else ()):
            acc.all_reduce(group)
        num_batches = sum_over_ranks(num_batches, group)
    if num_batches == 0:
        raise ValueError("the loader yielded no batches")
    collector.check_fired()
    _warn_underdetermined(collector.accumulators)
    stats = ActivationStats(spec, len(models), collector.accumulators, num_batches,
                            {"forward": forward, "stats": collector.hook_time}, backend, transient=transient)
    stats.micro_batches, stats.kept_per_sample = collector.micro_batches, collector.kept_per_sample
    stats.group_batches = {g.name: collector.stopped_at.get(g.name, num_batches) for g in collector.groups}
    stats.timing["stopping_rule"] = collector.stop_time
    if owners:
        stats.shard(group, {g.name: owners[g.name] for g in collector.groups}, collector_device(collector))
        stats.timing["exchange_rounds"] = collector.exchange.rounds
        stats.timing["exchange_sent_bytes"] = collector.exchange.sent_bytes
    return stats


def collector_device(collector: StatsCollector) -> torch.device:
    """Where the collector's models run."""
    p = next(iter(collector.models[0].parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _run_pass(models, spec: PermSpec, loader, max_batches, device, backend, progress, groups, keep_bytes, stop,
              group, owners=None) -> tuple:
    """The pass of :func:`collect_stats` over this process's ``loader`` (arguments checked first):
    ``(collector, batches read, forward seconds)``. Under a process group a rank's shard may be empty."""
    models = check_models(models)
    check_max_batches(max_batches)
    if not isinstance(spec, PermSpec):
        raise TypeError(f"spec must be a mudsc.PermSpec, got {type(spec).__name__}")
    batches = _batches(loader, allow_empty=group is not None)
    first_param = next(iter(models[0].parameters()), None)
    dev = torch.device(device) if device is not None else (first_param.device if first_param is not None
                                                            else torch.device("cpu"))
    run_models = []
    for m in models:
        p = next(iter(m.parameters()), None)
        run_models.append(m if p is None or p.device == dev else copy.deepcopy(m).to(dev))
    unknown = sorted(set(groups or ()) - {g.name for g in spec.groups})
    if unknown:
        raise ValueError(f"groups {unknown} are not in the spec")
    check_group_device(group, dev)
    exchange = None
    if owners:
        missing = sorted({g.name for g in spec.groups if g.taps and (groups is None or g.name in groups)} - set(owners))
        if missing:
            raise ValueError(f"owners= names no rank for groups {missing}")
        exchange = ActivationExchange(group, owners, {g.name: len(models) * g.size for g in spec.groups if g.taps},
                                      dev)
    collector = StatsCollector(run_models, spec, dev, backend, groups=groups, keep_bytes=keep_bytes, exchange=exchange)
    num_batches, forward, items = 0, 0.0, 0
    try:
        with collector:
            total = loader_length(loader, max_batches)
            for batch in progress_bar(batches, progress, total=total, desc="mudsc stats", leave=False):
                if max_batches is not None and num_batches >= max_batches:
                    break
                x = first_input(batch)
                forward += collector.run_batch(x.to(dev), index=num_batches)
                num_batches += 1
                items += int(x.shape[0]) if x.dim() else 1
                if stop is not None and _stop_groups(collector, stop, num_batches, total, items):
                    break
        collector.finish_exchange()
    except Exception as exc:
        if exchange is not None and not isinstance(exc, RankFailure):
            exchange.abort()  # the other ranks wait in the exchange's rounds: tell them
        raise
    return collector, num_batches, forward


def _batches(loader, allow_empty: bool) -> Iterable:
    """An iterable over every item of ``loader`` (checked iterable); an empty one is an error unless
    ``allow_empty`` (a rank's shard under a process group)."""
    if allow_empty and loader is not None:
        try:
            iter(loader)
        except TypeError:
            pass  # peek names the problem
        else:
            return loader
    return peek(loader)[1]


def _stop_groups(collector: StatsCollector, stop, batches: int, total: Optional[int],
                 items: Optional[int] = None) -> bool:
    """Ask ``stop`` which groups still collecting are final after ``batches`` batches (``items`` loader items);
    whether all are."""
    active = {name: acc for name, acc in collector.accumulators.items() if name not in collector.stopped_at}
    t0 = time.perf_counter()
    for name in set(stop.update(batches, active, total, items)) & set(active):
        collector.stopped_at[name] = batches
    collector.stop_time += time.perf_counter() - t0
    return len(collector.stopped_at) == len(collector.accumulators)
