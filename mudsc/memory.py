"""The memory plan of a merge: how many bytes the statistics of each group take, what the device has, and how the
groups are split across passes over the loader so that the merge fits.

Per group of ``F = N·size`` units (model-major) the statistics hold, on the device of the pass:

- the float64 moment ``8·F²`` bytes (packed, on the CPU: ``4·F(F+1)``) while the pass runs and until the group
  is finalised;
- at finalisation, for one group at a time: the float32 correlation (``4·F²``), written straight from a packed
  moment, or on other devices after the float64 covariance and correlation (``16·F²`` more);
- afterwards the float32 correlation (``4·F²``) for as long as a matching needs it: the whole matching for a
  method with a coordinate descent (``mudsc-*``), only while the group is solved otherwise (zipit, act-align).

:func:`plan_passes` cuts the coordinates (groups solved together: tied heads) into consecutive chunks whose
peak fits ``budget`` bytes; each chunk is one pass over the loader. A chunk's peak is the moments of its groups,
plus the largest finalisation of its groups, plus the float32 correlations kept from earlier chunks. Splitting
changes no number: each group's statistics are accumulated from the same batches in the same order, so chunked
and unchunked merges give identical plans.

:func:`available_bytes` is what a new allocation can still get: on CUDA the free device memory
(``torch.cuda.mem_get_info``); on the CPU the smaller of ``MemAvailable`` (``/proc/meminfo``) and what an
address-space limit (``RLIMIT_AS``) leaves above the process's current size. The default budget is
:data:`SAFE_FRACTION` of it (activations of the forward passes, the solvers' working copies and the allocator's
slack live in the rest). The activations kept between the models' forward passes of one batch are capped apart
from the plan (:func:`keep_bytes`): a batch whose would exceed it runs in micro-batches.
"""

from __future__ import annotations

import math
import re
import resource
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .backends import choose

__all__ = ["MemoryPlan", "available_bytes", "format_bytes", "keep_bytes", "parse_bytes", "plan_passes", "shard_groups",
           "SAFE_FRACTION", "KEEP_MAX_BYTES", "KEEP_DEFAULT_BYTES"]

SAFE_FRACTION = 0.6

KEEP_MAX_BYTES = {"cpu": 512 * 2**20}
KEEP_DEFAULT_BYTES = 4 * 2**30


def keep_bytes(device: torch.device) -> int:
    """The cap on model activations kept between the models' forward passes of one batch (model 0's tapped
    tensors wait for model 1's): 512 MiB on the CPU, 4 GiB on an accelerator (whose GEMMs want larger
    micro-batches). A constant per device type, not a fraction of the budget, so that a ``max_memory`` never
    changes how batches are cut, and chunked and unchunked merges stay identical."""
    return KEEP_MAX_BYTES.get(torch.device(device).type, KEEP_DEFAULT_BYTES)

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(value: Union[int, float, str]) -> int:
    """Bytes from a number or a string such as ``"16GB"``, ``"12 GiB"``, ``"512M"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"max_memory must be bytes or a size such as '16GB', got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"max_memory must be a positive number of bytes, got {value!r}")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"max_memory must be bytes or a size such as '16GB' or '512MiB', got {value!r}")


def _proc_kib(path: str, key: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: torch.device) -> int:
    """Bytes a new allocation on ``device`` can still get (module docstring)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    avail = _proc_kib("/proc/meminfo", "MemAvailable")
    out = avail * 1024 if avail is not None else 2**62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        size = _proc_kib("/proc/self/status", "VmSize")
        out = min(out, max(soft - (size or 0) * 1024, 0))
    return int(out)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable size (GiB, MiB, KiB or bytes)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


def moment_bytes(features: int, packed: bool = False) -> int:
    """The float64 moment of ``features`` units (``packed``: its upper triangle only)."""
    return 4 * features * (features + 1) if packed else 8 * features * features


def finalize_bytes(features: int, packed: bool = False) -> int:
    """Transient bytes of finalising one group: the float32 correlation, and unless the moment is packed (the CPU
    path, which writes float32 directly) the float64 covariance and correlation before it."""
    return (4 if packed else 20) * features * features


def correlation_bytes(features: int) -> int:
    """The kept float32 correlation."""
    return 4 * features * features


@dataclass
class MemoryPlan:
    """How the statistics of a merge are split: ``chunks`` (group names per pass over the loader), the
    estimated peak of each pass in bytes, and the budget they were planned for.

    Attributes:
        budget: bytes the plan may use (``max_memory``, or :data:`SAFE_FRACTION` of :func:`available_bytes`).
        chunks: group names per pass (one chunk: the usual single pass).
        peaks: estimated peak bytes of the statistics during each pass.
        group_bytes: per group, its moment's bytes.
        explicit: whether ``budget`` came from the caller.
        owners: ``{group: rank}`` when the groups are sharded over the ranks of a process group
            (:func:`shard_groups`; empty: every rank accumulates every group).
        rank_peaks: with ``owners``, the estimated peak of each rank.
    """

    budget: int
    chunks: List[List[str]]
    peaks: List[int]
    group_bytes: Dict[str, int] = field(default_factory=dict)
    explicit: bool = False
    owners: Dict[str, int] = field(default_factory=dict)
    rank_peaks: List[int] = field(default_factory=list)

    @property
    def passes(self) -> int:
        return len(self.chunks)

    def as_dict(self) -> dict:
        gib = 2**30
        return {"budget_gib": self.budget / gib, "passes": self.passes,
                "groups_per_pass": [len(c) for c in self.chunks],
                "estimated_peak_gib": [p / gib for p in self.peaks],
                "moments_gib": sum(self.group_bytes.values()) / gib,
                "sharded": bool(self.owners),
                "groups_per_rank": ([sum(1 for r in self.owners.values() if r == k) for k in range(len(self.rank_peaks))]
                                    if self.owners else None),
                "estimated_rank_peak_gib": [p / gib for p in self.rank_peaks] if self.owners else None}


def plan_passes(coords: Sequence[Sequence[Tuple[str, int]]], keep_correlations: bool, budget: int,
                explicit: bool = False, packed: bool = False) -> MemoryPlan:
    """Cut ``coords`` (per coordinate, its tapped groups as ``(name, features)``; in the order the matching
    visits them) into consecutive chunks whose estimated peak fits ``budget`` (module docstring).

    ``keep_correlations``: the matching keeps every group's float32 correlation to the end (a coordinate
    descent). A single coordinate that does not fit on its own raises :class:`MemoryError` naming it, the bytes
    it needs and the budget. ``packed``: the moments are packed upper triangles (the CPU's statistics)."""
    chunks: List[List[str]] = []
    peaks: List[int] = []
    kept = 0  # float32 correlations of earlier chunks
    cur: List[str] = []
    cur_moments = cur_final = cur_corr = 0
    sizes = {name: f for coord in coords for name, f in coord}

    def peak(moments: int, final: int, corr: int) -> int:
        return kept + moments + final + (corr if keep_correlations else 0)

    for coord in coords:
        if not coord:
            continue
        m = sum(moment_bytes(f, packed) for _, f in coord)
        fin = max(finalize_bytes(f, packed) for _, f in coord)
        c = sum(correlation_bytes(f) for _, f in coord)
        if cur and peak(cur_moments + m, max(cur_final, fin), cur_corr + c) > budget:
            chunks.append(cur)
            peaks.append(peak(cur_moments, cur_final, cur_corr))
            if keep_correlations:
                kept += cur_corr
            cur, cur_moments, cur_final, cur_corr = [], 0, 0, 0
        need = peak(m, fin, c)
        if not cur and need > budget:
            names = ", ".join(n for n, _ in coord)
            raise MemoryError(
                f"the statistics of group(s) {names} need {format_bytes(need)} (float64 moments "
                f"{format_bytes(m)}, finalisation {format_bytes(fin)}"
                + (f", correlations kept for the descent {format_bytes(kept)}" if kept else "")
                + f") but the memory budget is {format_bytes(budget)}"
                + ("" if explicit else " (a safe fraction of what is free)")
                + "; raise max_memory, free memory, or merge on a device with more")
        cur.append(coord)
        cur_moments += m
        cur_final = max(cur_final, fin)
        cur_corr += c
    if cur:
        chunks.append(cur)
        peaks.append(peak(cur_moments, cur_final, cur_corr))
    names = [[name for coord in chunk for name, _ in coord] for chunk in chunks]
    return MemoryPlan(budget=int(budget), chunks=names or [[]], peaks=peaks or [0],
                      group_bytes={n: moment_bytes(f, packed) for n, f in sizes.items()}, explicit=explicit)


def shard_groups(coords: Sequence[Sequence[Tuple[str, int]]], keep_correlations: bool, budget: int, world: int,
                 packed: bool = False) -> Optional[Tuple[Dict[str, int], List[int]]]:
    """``({group: owner rank}, estimated peak per rank)`` when sharding ``coords`` over ``world`` ranks makes a
    single pass fit ``budget`` on every rank, else None.

    Each coordinate goes, in order, to the rank whose moments are smallest so far (ties: the lowest rank): a rank
    holds the float64 moments of its own groups during the pass, then receives every group's float32 correlation
    from its owner at finalisation, one at a time (``4·F²``, or the owner's finalisation), and keeps them all
    when ``keep_correlations`` (a descent), as one process does."""
    if world < 2:
        return None
    owners: Dict[str, int] = {}
    moments = [0] * world
    final = [0] * world
    corr = 0
    for coord in coords:
        if not coord:
            continue
        rank = min(range(world), key=lambda r: (moments[r], r))
        for name, f in coord:
            owners[name] = rank
            moments[rank] += moment_bytes(f, packed)
            for r in range(world):
                final[r] = max(final[r], finalize_bytes(f, packed) if r == rank else correlation_bytes(f))
            corr += correlation_bytes(f)
    peaks = [moments[r] + final[r] + (corr if keep_correlations else 0) for r in range(world)]
    if not owners or max(peaks) > budget:
        return None
    return owners, peaks


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA or CPU allocator failure (``torch.OutOfMemoryError``, or the CPU allocator's RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def packed_moments(device: Union[str, torch.device], backend: str = "auto") -> bool:
    """Whether the statistics on ``device`` keep packed float64 moments (the CPU with the native ops: half the
    bytes of ``[F, F]``, the same sums; :class:`mudsc.CorrelationAccumulator`)."""
    return torch.device(device).type == "cpu" and choose("statistics", backend, needs="ops") == "native"


def accumulator_note(spec, num_models: int, packed: bool = False) -> str:
    """The float64 moments of every tapped group of ``spec`` (a :class:`mudsc.PermSpec`; :func:`moment_bytes`),
    totalled, with the largest."""
    sizes = {g.name: moment_bytes(num_models * g.size, packed) for g in spec.groups if g.taps}
    if not sizes:
        return "no group is tapped"
    largest = max(sizes, key=sizes.get)
    return (f"the accumulators of {len(sizes)} groups hold {sum(sizes.values()) / 2**30:.2f} GiB of float64 moments "
            f"(largest: group {largest!r}, {sizes[largest] / 2**30:.2f} GiB), besides the models and their "
            "activations; use fewer or smaller batches, or a device with more memory")
