"""What every benchmark script shares: the device's name, wall-clock timers with medians, the JSON result file.

- :func:`device_name`: the CUDA device's name, or the CPU model from ``/proc/cpuinfo`` (``platform`` otherwise);
  :func:`usable_cpus`: the CPUs this process may run on.
- :func:`time_calls` / :func:`median_time`: ``time.perf_counter`` around repeated calls (optionally with the
  garbage collector paused, and a device synchronisation around each call); :func:`interleaved_medians`: several
  callables timed in alternation, so that drift of a noisy machine hits all of them alike.
- :func:`write_json`: the results file, written atomically (:func:`mudsc._io.write_json`), its folder created;
  :func:`atomic_path` (:func:`mudsc._io.atomic_path`) for other files (caches).

The scripts import it as ``common`` (they run as ``python benchmarks/bench_<name>.py``, which puts this folder
first on ``sys.path``), after setting any thread variables: importing it puts the repository root on
``sys.path`` (so ``import mudsc`` finds the source checkout) and imports torch.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # run as ``python benchmarks/bench_<name>.py`` from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mudsc._io import atomic_path  # noqa: E402,F401  (re-exported: caches written atomically)
from mudsc._io import write_json as _atomic_write_json  # noqa: E402


def cpu_name() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()`` / the machine type)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any = "cpu") -> str:
    """Name of ``device`` (a ``torch.device`` or string): the CUDA device's name, else :func:`cpu_name`."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return cpu_name()


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def time_calls(fn: Callable[[], Any], repeats: int, *, pause_gc: bool = False,
               sync: Optional[Callable[[], None]] = None) -> Tuple[List[float], Any]:
    """``(seconds of each of repeats calls of fn(), the last result)``.

    ``pause_gc`` collects garbage first and keeps the collector off while timing; ``sync`` (e.g. a CUDA
    synchronisation) runs before the clock starts and before it stops.
    """
    times, result = [], None
    was_enabled = gc.isenabled()
    if pause_gc:
        gc.collect()
        gc.disable()
    try:
        for _ in range(repeats):
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            result = fn()
            if sync is not None:
                sync()
            times.append(time.perf_counter() - t0)
    finally:
        if pause_gc and was_enabled:
            gc.enable()
    return times, result


def median_time(fn: Callable[[], Any], repeats: int, **kwargs: Any) -> Tuple[float, Any]:
    """``(median seconds of repeats calls of fn(), the last result)``; keywords as :func:`time_calls`."""
    times, result = time_calls(fn, repeats, **kwargs)
    return statistics.median(times), result


def interleaved_medians(fns: Dict[str, Callable[[], Any]], repeats: int,
                        sync: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Median seconds of each callable: one warm-up call each, then ``repeats`` rounds calling each in turn."""
    for fn in fns.values():
        fn()
    if sync is not None:
        sync()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += time_calls(fn, 1, sync=sync)[0]
    return {k: statistics.median(v) for k, v in times.items()}


def write_json(path: Path, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` (folders created, atomic); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(path, obj, indent=indent)
    return path
