"""Benchmark of mudsc's linear assignment (LAP) solvers against scipy and other LAP packages.

What is measured
----------------
Wall-clock time of one solve, called from Python exactly as a user would call it:

- ``mudsc``: :func:`mudsc.linear_sum_assignment` (``backend="native"``), ``maximize`` passed through, float32
  solved as float32.
- ``scipy``: :func:`scipy.optimize.linear_sum_assignment`, the reference (and the objective oracle).
- peers (``lap``, ``lapjv``, ``lapcpp``, ``laprust``, ``fastlap`` and the solvers of ``lapx``): they minimise
  only, so a maximisation problem is negated inside the timed call, together with any float64 conversion the
  peer needs; the timed call is therefore everything a user of that package would have to run.

Case families (``--cases``):

- ``uniform``: uniform [0, 1) float64 costs, minimised, n = 256 ... 4096.
- ``easy``: correlation of the rows of A with those of B = A[perm] + 0.1 noise over S = n samples, maximised;
  the row-wise argmax is already the optimal assignment. float32 and float64, n = 256 ... 8192.
- ``hard``: A = L G / sqrt(k) + 0.6 E (k = 8 latent factors), B = 0.15 A[perm] + 0.9 noise, correlation of the
  rows of A with the rows of B over S = n samples, maximised. 30-50 % of the rows have a row-wise argmax that is
  not their optimal column (reported as ``argmax✗``). float32 and float64, n = 256 ... 8192.
- ``hard-sym``: as ``hard``, but B's noise shares the latent factors (B = 0.15 A[perm] + 0.9 (L2 G / sqrt(k)
  + 0.6 E2)), which also breaks the column-wise argmax that JV's column reduction relies on. n <= 4096; solvers
  whose single solve takes more than 20 s are skipped.
- ``batch``: 144 hard 64 x 64 problems (the ViT-B head-matching shape), float32, maximised: mudsc's batched
  solver on 1 and on all threads, Python loops over scipy / mudsc / each peer, and the peers' own batch APIs.
- ``warm``: hard float32 n = 1024, 2048, 4096: a perturbed matrix P = C + 0.05 std(C) N(0, 1) solved cold and
  warm-started from the dual potentials of the solve of C (:func:`mudsc.solve_assignment`).

How
---
1. Correctness first: every solver runs once on the case (this call is also the warm-up); its assignment must be
   a valid (partial) permutation and its objective, summed in float64 from the input matrix, must equal
   scipy's within rel 1e-9 (float64) / 1e-5 (float32). Otherwise it is reported ``WRONG`` and not timed.
2. Timing: ``time.perf_counter`` around each call, repeated; the median is reported. The repeat count adapts
   to the speed of the solve (at least 3, up to 200, about ``--budget`` seconds per solver and case); a solve
   slower than ``SLOW_SINGLE_S`` is timed once (the correctness call, marked ``†``). ``--repeats`` forces a
   count.
3. Single-threaded: the BLAS/OpenMP thread variables are set to 1 before numpy is imported, batched solvers get
   one thread; only the batch family additionally runs the batched solvers on all usable CPUs.

Correlation matrices are generated with float64 GEMMs from fixed seeds and cached under ``benchmarks/.cache/``.
Results (every number, plus metadata) go to ``benchmarks/results/lap.json``; markdown tables and an acceptance
block (the performance floors of the LAP issue) are printed.

Run from the repository root: ``python benchmarks/bench_lap.py [--quick] [--max-n N] [--cases hard,warm]``.
"""

from __future__ import annotations

import os

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
for _var in THREAD_ENV_VARS:  # before numpy (and its BLAS) is imported
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402

from common import RESULTS, ROOT, atomic_path, device_name, time_calls, usable_cpus, write_json  # noqa: E402

import mudsc  # noqa: E402
from mudsc.demo.problems import (  # noqa: E402
    EASY_NOISE, HARD_NOISE, HARD_OWN, HARD_SIGNAL, LATENT_K, correlation_problem,
)

CACHE_DIR = ROOT / "benchmarks" / ".cache"
DEFAULT_OUT = RESULTS / "lap.json"
DEFAULT_OUT_QUICK = RESULTS / "lap_quick.json"

FAMILIES = ("uniform", "easy", "hard", "hard-sym", "batch", "warm")
SIZES_FULL = {
    "uniform": (256, 512, 1024, 2048, 4096),
    "easy": (256, 512, 1024, 2048, 4096, 8192),
    "hard": (256, 512, 1024, 2048, 4096, 8192),
    "hard-sym": (256, 512, 1024, 2048, 4096),
    "warm": (1024, 2048, 4096),
}
SIZES_QUICK = {
    "uniform": (256, 512),
    "easy": (256, 512),
    "hard": (256, 512),
    "hard-sym": (256, 512),
    "warm": (1024,),
}
DTYPES = (np.float32, np.float64)
REL_TOL = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-5}

BIG_N = 4096  # above this, only mudsc, scipy and the TOP_PEERS_BIG fastest peers (at the previous n) run
TOP_PEERS_BIG = 3
SLOW_SINGLE_S = 10.0  # a correctness call slower than this is not repeated: its time is the measurement
SYM_SKIP_S = 20.0  # hard-sym: peers slower than this are skipped (and not tried at larger n)
MIN_REPEATS, MAX_REPEATS = 3, 200
BUDGET_S, BUDGET_S_QUICK = 1.0, 0.1

BATCH_SHAPE = (144, 64)  # B problems of n x n
WARM_PERTURBATION = 0.05
SEEDS = {"uniform": 11, "easy": 12, "hard": 13, "hard-sym": 14, "batch": 15, "warm": 16}

# Acceptance floors (the LAP issue).
FLOOR_HARD_VS_SCIPY = 4.0  # hard float32 n=4096 maximize: scipy / mudsc
FLOOR_UNIFORM_VS_SCIPY = 3.0  # uniform float64 n=2048: scipy / mudsc
FLOOR_BATCH_VS_SCIPY = 5.0  # 144 x 64^2 batch, one thread: scipy loop / mudsc batch
FLOOR_WARM = 3.0  # warm re-solve n=4096: cold / warm


# --------------------------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Solver:
    """One timed solver.

    ``single(C, maximize) -> (rows, cols)`` solves one matrix; ``batch(Cs, maximize, threads) -> list of
    (rows, cols)`` solves a ``[B, n, n]`` stack through the package's own batch API (``None``: it has none).
    ``missing`` says why the solver cannot run at all (not installed, import error).
    """

    name: str
    kind: str  # "mudsc", "scipy" or "peer"
    package: str
    version: Optional[str]
    single: Optional[Callable] = None
    batch: Optional[Callable] = None
    missing: Optional[str] = None
    note: Optional[str] = None


def _dist_version(dist: str) -> Optional[str]:
    """Installed version of distribution ``dist`` (``None`` when it is not installed)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _for_min(c: np.ndarray, maximize: bool, dtype: Any = None) -> np.ndarray:
    """The minimisation form of ``c`` (negated when maximising), cast to ``dtype`` in the same pass if given."""
    if maximize:
        return np.negative(c, dtype=dtype) if dtype is not None else np.negative(c)
    if dtype is not None and c.dtype != np.dtype(dtype):
        return c.astype(dtype)
    return c


def _pairs_from_lists(rows_list: list, cols_list: list) -> list:
    """Zip a peer batch API's ``(rows_list, cols_list)`` into a list of ``(rows, cols)``."""
    return list(zip(rows_list, cols_list))


def _mudsc_solver() -> Solver:
    """mudsc's native single solve (the drop-in ``linear_sum_assignment``) and its batched solver."""

    def single(c, maximize):
        return mudsc.linear_sum_assignment(c, maximize=maximize, backend="native")

    def batch(cs, maximize, threads):
        cols = mudsc.batch_linear_sum_assignment(cs, maximize, num_threads=threads, backend="native")
        rows = np.arange(cs.shape[1])
        return [(rows, cols[b]) for b in range(cs.shape[0])]

    return Solver("mudsc", "mudsc", "mudsc", mudsc.__version__, single, batch)


def _scipy_solver() -> Solver:
    """scipy.optimize.linear_sum_assignment, the reference."""

    def single(c, maximize):
        return scipy.optimize.linear_sum_assignment(c, maximize=maximize)

    return Solver("scipy", "scipy", "scipy", scipy.__version__, single, None)


def _peer_lap() -> list:
    """gatagat's ``lap``: ``lap.lapjv`` (float64 only; x[i] = column of row i)."""
    version = _dist_version("lap")
    if version is None:
        return [Solver("lap", "peer", "lap", None, missing="missing (not installed)")]
    try:
        lap = importlib.import_module("lap")
        fn = lap.lapjv
    except Exception as exc:  # noqa: BLE001
        return [Solver("lap", "peer", "lap", version, missing=f"missing (import: {exc})")]

    def single(c, maximize):
        x, _ = fn(_for_min(c, maximize, np.float64), return_cost=False)
        return np.arange(c.shape[0]), x

    note = None
    if getattr(lap, "__version__", version) != version:
        note = f"module lap reports {lap.__version__}"
    return [Solver("lap", "peer", "lap", version, single, None, note=note)]


def _peer_lapjv() -> list:
    """src-d's ``lapjv``: ``lapjv.lapjv(cost, force_doubles=...)`` (float32 kernel unless force_doubles)."""
    version = _dist_version("lapjv")
    if version is None:
        return [Solver("lapjv", "peer", "lapjv", None, missing="missing (not installed)")]
    try:
        fn = importlib.import_module("lapjv").lapjv
    except Exception as exc:  # noqa: BLE001
        return [Solver("lapjv", "peer", "lapjv", version, missing=f"missing (import: {exc})")]

    def single(c, maximize):
        x, _, _ = fn(_for_min(c, maximize), force_doubles=c.dtype == np.float64)
        return np.arange(c.shape[0]), x

    return [Solver("lapjv", "peer", "lapjv", version, single, None, note="force_doubles=True for float64")]


def _peer_ratharog(name: str) -> list:
    """``lapcpp`` / ``laprust``: ``lapjv(cost, return_cost=False)`` and ``lapjv_batch(costs, ..., n_threads)``."""
    version = _dist_version(name)
    if version is None:
        return [Solver(name, "peer", name, None, missing="missing (not installed)")]
    try:
        mod = importlib.import_module(name)
        fn, fn_batch = mod.lapjv, getattr(mod, "lapjv_batch", None)
    except Exception as exc:  # noqa: BLE001
        return [Solver(name, "peer", name, version, missing=f"missing (import: {exc})")]

    def single(c, maximize):
        return fn(_for_min(c, maximize), return_cost=False)

    def batch(cs, maximize, threads):
        return _pairs_from_lists(*fn_batch(_for_min(cs, maximize), return_cost=False, n_threads=threads))

    return [Solver(name, "peer", name, version, single, batch if fn_batch else None)]


def _peer_fastlap() -> list:
    """``fastlap``: ``lapjvx(cost, return_cost=False)`` and ``lapjvx_batch(costs, ..., n_threads)``.

    fastlap has a ``maximize`` flag, but it is slower than negating the matrix (checked on the hard case), so the
    negated form is timed, as for the other peers.
    """
    version = _dist_version("fastlap")
    if version is None:
        return [Solver("fastlap", "peer", "fastlap", None, missing="missing (not installed)")]
    try:
        mod = importlib.import_module("fastlap")
        fn, fn_batch = mod.lapjvx, getattr(mod, "lapjvx_batch", None)
    except Exception as exc:  # noqa: BLE001
        return [Solver("fastlap", "peer", "fastlap", version, missing=f"missing (import: {exc})")]

    def single(c, maximize):
        return fn(_for_min(c, maximize), return_cost=False)

    def batch(cs, maximize, threads):
        return _pairs_from_lists(*fn_batch(_for_min(cs, maximize), return_cost=False, n_threads=threads))

    return [Solver("fastlap", "peer", "fastlap", version, single, batch if fn_batch else None)]


def _peer_lapx() -> list:
    """``lapx``: its solvers lapjvx, lapjvs, lapjvr, lapjvh (and their ``*_batch`` forms).

    lapx installs the Python package ``lap``, as gatagat's ``lap`` does. When both are installed, the one
    installed last owns ``lap/__init__.py``; lapx's solvers are then imported from its extension and wrapper
    modules (``lap._lapjvx``, ``lap._lapjvs_wp``, ``lap._lapjv_rh``, ``lap._lapjvx_batch_wp``, ...).
    """
    version = _dist_version("lapx")
    if version is None:
        return [Solver("lapx", "peer", "lapx", None, missing="missing (not installed)")]
    try:
        lap = importlib.import_module("lap")
    except Exception as exc:  # noqa: BLE001
        return [Solver("lapx", "peer", "lapx", version, missing=f"missing (import lap: {exc})")]
    shadowed = not hasattr(lap, "lapjvx")
    note = (
        "lapx's lap/__init__.py is overwritten by the `lap` distribution; lapx solvers imported from "
        "lap._lapjvx / lap._lapjvs_wp / lap._lapjv_rh / lap._*_batch_wp"
        if shadowed
        else None
    )
    where = {  # public name -> (module of the shadowed layout, attribute)
        "lapjvx": ("lap._lapjvx", "lapjvx"),
        "lapjvx_batch": ("lap._lapjvx_batch_wp", "lapjvx_batch"),
        "lapjvs": ("lap._lapjvs_wp", "lapjvs"),
        "lapjvs_batch": ("lap._lapjvs_batch_wp", "lapjvs_batch"),
        "lapjvr": ("lap._lapjv_rh", "lapjvr"),
        "lapjvr_batch": ("lap._lapjv_rh", "lapjvr_batch"),
        "lapjvh": ("lap._lapjv_rh", "lapjvh"),
        "lapjvh_batch": ("lap._lapjv_rh", "lapjvh_batch"),
    }

    def get(public: str):
        try:
            if not shadowed:
                return getattr(lap, public), None
            module, attr = where[public]
            return getattr(importlib.import_module(module), attr), None
        except Exception as exc:  # noqa: BLE001
            return None, f"{type(exc).__name__}: {exc}"

    solvers = []
    for short in ("jvx", "jvs", "jvr", "jvh"):
        name = f"lapx.{short}"
        fn, err = get("lap" + short)
        fn_batch, _ = get("lap" + short + "_batch")
        if fn is None:
            solvers.append(Solver(name, "peer", "lapx", version, missing=f"missing ({err})", note=note))
            continue
        if short == "jvs":  # float32 kernel by default; float64 problems get the float64 kernel

            def single(c, maximize, fn=fn):
                return fn(_for_min(c, maximize), return_cost=False, prefer_float32=c.dtype == np.float32)

            def batch(cs, maximize, threads, fn_batch=fn_batch):
                res = fn_batch(
                    _for_min(cs, maximize), return_cost=False, n_threads=threads, prefer_float32=cs.dtype == np.float32
                )
                return _pairs_from_lists(*res)

        else:

            def single(c, maximize, fn=fn):
                return fn(_for_min(c, maximize), return_cost=False)

            def batch(cs, maximize, threads, fn_batch=fn_batch):
                return _pairs_from_lists(*fn_batch(_for_min(cs, maximize), return_cost=False, n_threads=threads))

        solvers.append(Solver(name, "peer", "lapx", version, single, batch if fn_batch else None, note=note))
    return solvers


def load_solvers() -> list:
    """mudsc, scipy and every peer (peers that cannot be imported are kept, marked ``missing``)."""
    solvers = [_mudsc_solver(), _scipy_solver()]
    solvers += _peer_lap() + _peer_lapjv() + _peer_ratharog("lapcpp") + _peer_ratharog("laprust")
    solvers += _peer_fastlap() + _peer_lapx()
    return solvers


# --------------------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------------------


def _rng(family: str, n: int, index: int = 0) -> np.random.Generator:
    """Reproducible generator for matrix ``index`` of size ``n`` in ``family``."""
    return np.random.default_rng([SEEDS[family], n, index])


def make_correlation(flavour: str, n: int, index: int = 0, samples: Optional[int] = None) -> np.ndarray:
    """One ``n x n`` float64 correlation matrix of ``flavour`` (:func:`mudsc.demo.problems.correlation_problem`)."""
    return correlation_problem(n, flavour, seed=[SEEDS[flavour], n, index], dtype=np.float64, samples=samples)


def cached_correlation(flavour: str, n: int, use_cache: bool = True) -> np.ndarray:
    """:func:`make_correlation` through the ``.npy`` cache in ``benchmarks/.cache/`` (keyed by every parameter)."""
    params = f"{flavour}_n{n}_S{n}_k{LATENT_K}_seed{SEEDS[flavour]}"
    if flavour != "easy":
        params += f"_a{HARD_SIGNAL}_b{HARD_NOISE}_e{HARD_OWN}"
    else:
        params += f"_noise{EASY_NOISE}"
    path = CACHE_DIR / f"corr_{params}_v1.npy"
    if use_cache and path.exists():
        try:
            c = np.load(path)
            if c.shape == (n, n) and c.dtype == np.float64:
                return c
        except (OSError, ValueError):
            pass
    t0 = time.perf_counter()
    c = make_correlation(flavour, n)
    log(f"  generated {flavour} n={n} in {time.perf_counter() - t0:.1f} s")
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no ".npy" to it
            np.save(f, c)
    return c


# --------------------------------------------------------------------------------------------------------------
# Checking and timing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    """Run settings derived from the command line."""

    quick: bool
    budget_s: float
    repeats: Optional[int]
    max_n: Optional[int]
    use_cache: bool
    threads_all: int


@dataclass
class Record:
    """What one solver did on one case (``status``: ok, WRONG, error, missing, skipped, not run)."""

    status: str
    note: Optional[str] = None
    objective: Optional[float] = None
    rel_err: Optional[float] = None
    check_s: Optional[float] = None
    times_s: list = field(default_factory=list)
    median_s: Optional[float] = None
    single_run: bool = False

    def cell(self) -> str:
        """Markdown table cell: the median in ms, or the status."""
        if self.status == "ok" and self.median_s is not None:
            return fmt_ms(self.median_s) + ("†" if self.single_run else "")
        if self.status in ("error", "missing", "skipped", "not run"):
            return self.note or self.status
        return self.status


def log(msg: str) -> None:
    """Progress message on stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with 3-4 significant digits."""
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:.1f}"


def short_error(exc: BaseException, limit: int = 60) -> str:
    """``error: Type: message`` cut to ``limit`` characters, for a table cell."""
    text = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")
    return "error: " + (text if len(text) <= limit else text[: limit - 3] + "...")


def assignment_objective(c: np.ndarray, rows: Any, cols: Any) -> float:
    """float64 objective of the assignment ``rows -> cols`` in ``c``; raises if it is not a valid one."""
    rows = np.asarray(rows).astype(np.int64, copy=False).ravel()
    cols = np.asarray(cols).astype(np.int64, copy=False).ravel()
    n, m = c.shape
    k = min(n, m)
    if rows.shape != (k,) or cols.shape != (k,):
        raise ValueError(f"expected {k} assigned pairs, got rows {rows.shape} cols {cols.shape}")
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= n or cols.max() >= m:
        raise ValueError("index out of range (unassigned row/column?)")
    if np.unique(rows).size != k or np.unique(cols).size != k:
        raise ValueError("not a permutation (repeated row or column)")
    return float(c[rows, cols].astype(np.float64).sum())


def objective_ok(obj: float, ref: float, dtype: np.dtype) -> tuple:
    """(matches, relative error) of objective ``obj`` against scipy's ``ref`` at the tolerance of ``dtype``."""
    rel = abs(obj - ref) / max(abs(ref), 1e-300)
    return rel <= REL_TOL[np.dtype(dtype)], rel


def repeat_count(first_s: float, cfg: Config) -> int:
    """How many timed repeats after a correctness call that took ``first_s`` (0: reuse that call)."""
    if cfg.repeats is not None:
        return cfg.repeats
    if first_s > SLOW_SINGLE_S:
        return 0
    return int(min(MAX_REPEATS, max(MIN_REPEATS, cfg.budget_s / max(first_s, 1e-7))))


def check_and_time(
    solvers: list,
    run: Callable[[Solver], Callable[[], Any]],
    verify: Callable[[Any], tuple],
    cfg: Config,
    skip: Optional[dict] = None,
    slow_skip_s: Optional[float] = None,
    label: str = "",
) -> dict:
    """Check every solver, then time the correct ones.

    Args:
        solvers: the solvers to run, in table order.
        run: ``run(solver)`` returns the zero-argument call to check and time (``None``: solver cannot do it).
        verify: ``verify(result)`` returns ``(objective, rel_err)`` and raises ``AssertionError`` with the reason
            when the result is wrong (``ValueError`` for an invalid assignment).
        cfg: run settings.
        skip: solver name -> reason, for solvers not to run in this case.
        slow_skip_s: solvers (other than mudsc and scipy) whose correctness call exceeds this are reported
            ``skipped`` and not timed.
        label: case label for the progress log.

    Returns:
        solver name -> :class:`Record`.
    """
    skip = skip or {}
    records, calls = {}, {}
    for s in solvers:  # 1. correctness
        if s.missing:
            records[s.name] = Record("missing", note=s.missing)
            continue
        if s.name in skip:
            records[s.name] = Record("skipped" if "skip" in skip[s.name] else "not run", note=skip[s.name])
            continue
        call = run(s)
        if call is None:
            records[s.name] = Record("not run", note="n/a")
            continue
        try:
            t0 = time.perf_counter()
            result = call()
            first = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            records[s.name] = Record("error", note=short_error(exc))
            log(f"  [{label}] {s.name}: {records[s.name].note}")
            continue
        try:
            obj, rel = verify(result)
        except (AssertionError, ValueError, IndexError, TypeError) as exc:
            records[s.name] = Record("WRONG", note=str(exc)[:200], check_s=first)
            log(f"  [{label}] {s.name}: WRONG ({exc})")
            continue
        rec = Record("ok", objective=obj, rel_err=rel, check_s=first)
        if slow_skip_s is not None and s.kind == "peer" and first > slow_skip_s:
            rec.status, rec.note = "skipped", f"skip (>{slow_skip_s:.0f} s: {first:.1f} s)"
        records[s.name] = rec
        calls[s.name] = call
    for s in solvers:  # 2. timing
        rec = records[s.name]
        if rec.status != "ok":
            continue
        reps = repeat_count(rec.check_s, cfg)
        if reps == 0:
            rec.times_s, rec.single_run = [rec.check_s], True
        else:
            try:
                rec.times_s = time_calls(calls[s.name], reps, pause_gc=True)[0]
            except Exception as exc:  # noqa: BLE001
                rec.status, rec.note = "error", short_error(exc)
                continue
        rec.median_s = statistics.median(rec.times_s)
        log(f"  [{label}] {s.name}: {fmt_ms(rec.median_s)} ms (x{len(rec.times_s)})")
    return records


def single_case(
    c: np.ndarray,
    maximize: bool,
    solvers: list,
    cfg: Config,
    skip: Optional[dict] = None,
    slow_skip_s: Optional[float] = None,
    label: str = "",
) -> tuple:
    """Check and time every solver's single solve of ``c``; returns ``(records, scipy's column of each row)``."""
    ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(c, maximize=maximize)
    ref = assignment_objective(c, ref_rows, ref_cols)
    col_of_row = np.full(c.shape[0], -1, dtype=np.int64)
    col_of_row[ref_rows] = ref_cols
    fingerprint = (float(c.sum(dtype=np.float64)), c[:: max(1, c.shape[0] // 17)].copy())

    def verify(result):
        if float(c.sum(dtype=np.float64)) != fingerprint[0] or not np.array_equal(
            c[:: max(1, c.shape[0] // 17)], fingerprint[1]
        ):
            raise AssertionError("solver modified its input matrix")
        rows, cols = result
        obj = assignment_objective(c, rows, cols)
        ok, rel = objective_ok(obj, ref, c.dtype)
        if not ok:
            raise AssertionError(f"objective {obj!r} != scipy {ref!r} (rel {rel:.2e})")
        return obj, rel

    def run(s):
        return None if s.single is None else (lambda: s.single(c, maximize))

    records = check_and_time(solvers, run, verify, cfg, skip, slow_skip_s, label)
    return records, ref, col_of_row


# --------------------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------------------


def sizes_for(family: str, cfg: Config) -> list:
    """The sizes of ``family`` for this run (``--quick`` set, then capped by ``--max-n``)."""
    sizes = (SIZES_QUICK if cfg.quick else SIZES_FULL)[family]
    return [n for n in sizes if cfg.max_n is None or n <= cfg.max_n]


def case_entry(family: str, case: str, n: int, dtype: Any, maximize: bool, records: dict, **extra) -> dict:
    """One JSON/table row: the case description, extras and every solver's record."""
    return {
        "family": family,
        "case": case,
        "n": n,
        "dtype": np.dtype(dtype).name,
        "maximize": maximize,
        **extra,
        "solvers": records,
    }


def big_n_skips(solvers: list, n: int, previous: Optional[dict]) -> dict:
    """For n > BIG_N: every peer except the TOP_PEERS_BIG fastest correct ones of the previous size is skipped."""
    if n <= BIG_N:
        return {}
    ranked = []
    if previous:
        ranked = sorted(
            (r.median_s, name)
            for name, r in previous.items()
            if name not in ("mudsc", "scipy") and r.status == "ok" and r.median_s is not None
        )
    keep = {name for _, name in ranked[:TOP_PEERS_BIG]}
    if not ranked:  # nothing to rank on (e.g. --max-n): run them all
        return {}
    return {s.name: f"not run (n>{BIG_N})" for s in solvers if s.kind == "peer" and s.name not in keep}


def slow_skips(solvers: list, n: int, history: dict, limit_s: float) -> dict:
    """Peers that already exceeded ``limit_s`` at a smaller n, or whose O(n^2.5) extrapolation would."""
    skips = {}
    for s in solvers:
        if s.kind != "peer" or s.name not in history:
            continue
        prev_n, prev_s = history[s.name]
        predicted = prev_s * (n / prev_n) ** 2.5
        if prev_s > limit_s or predicted > 2 * limit_s:
            skips[s.name] = f"skip (>{limit_s:.0f} s at n={prev_n})" if prev_s > limit_s else (
                f"skip (~{predicted:.0f} s predicted)"
            )
    return skips


def run_uniform(solvers: list, cfg: Config) -> list:
    """Uniform [0, 1) float64 costs, minimised."""
    entries = []
    for n in sizes_for("uniform", cfg):
        c = _rng("uniform", n).random((n, n))
        label = f"uniform f64 n={n}"
        log(label)
        records, ref, _ = single_case(c, False, solvers, cfg, label=label)
        entries.append(case_entry("uniform", "uniform", n, np.float64, False, records, ref_objective=ref))
    return entries


def run_correlation(flavour: str, solvers: list, cfg: Config) -> list:
    """Correlation-like maximisation problems of ``flavour`` (easy, hard, hard-sym), float32 and float64."""
    entries = []
    for dtype in DTYPES:
        previous: Optional[dict] = None
        history: dict = {}  # solver -> (n, check seconds), for the hard-sym slow skip
        for n in sizes_for(flavour, cfg):
            c = cached_correlation(flavour, n, cfg.use_cache).astype(dtype, copy=False)
            label = f"{flavour} {np.dtype(dtype).name} n={n}"
            log(label)
            skip = big_n_skips(solvers, n, previous)
            slow_limit = SYM_SKIP_S if flavour == "hard-sym" else None
            if slow_limit is not None:
                skip.update(slow_skips(solvers, n, history, slow_limit))
            records, ref, col_of_row = single_case(c, True, solvers, cfg, skip, slow_limit, label)
            row_wrong = float(np.mean(c.argmax(axis=1) != col_of_row))
            row_of_col = np.empty_like(col_of_row)
            row_of_col[col_of_row] = np.arange(n)
            col_wrong = float(np.mean(c.argmax(axis=0) != row_of_col))
            entries.append(
                case_entry(
                    flavour,
                    flavour,
                    n,
                    dtype,
                    True,
                    records,
                    ref_objective=ref,
                    row_argmax_wrong=row_wrong,
                    col_argmax_wrong=col_wrong,
                )
            )
            for name, r in records.items():
                if r.check_s is not None:
                    history[name] = (n, r.check_s)
            previous = records
            del c
    return entries


def run_batch(solvers: list, cfg: Config) -> list:
    """144 x 64^2 hard float32 maximisation problems: batched solvers vs Python loops."""
    b, n = BATCH_SHAPE
    costs = np.stack([make_correlation("hard", n, index=i) for i in range(b)]).astype(np.float32)
    ref_pairs = [scipy.optimize.linear_sum_assignment(costs[i], maximize=True) for i in range(b)]
    refs = np.array([assignment_objective(costs[i], *ref_pairs[i]) for i in range(b)])
    row_wrong = float(np.mean([np.mean(costs[i].argmax(axis=1) != ref_pairs[i][1]) for i in range(b)]))

    def verify(pairs):
        pairs = list(pairs)
        if len(pairs) != b:
            raise AssertionError(f"{len(pairs)} results for {b} problems")
        objs = np.array([assignment_objective(costs[i], *pairs[i]) for i in range(b)])
        rel = np.abs(objs - refs) / np.maximum(np.abs(refs), 1e-300)
        bad = np.flatnonzero(rel > REL_TOL[np.dtype(np.float32)])
        if bad.size:
            raise AssertionError(f"{bad.size}/{b} objectives differ from scipy (worst rel {rel.max():.2e})")
        return float(objs.sum()), float(rel.max())

    # Rows of the batch table: (method name, solver, mode, threads).
    methods = []
    mud = next(s for s in solvers if s.name == "mudsc")
    methods.append((f"mudsc batch ({1} thread)", mud, "batch", 1))
    methods.append((f"mudsc batch ({cfg.threads_all} threads)", mud, "batch", cfg.threads_all))
    methods.append(("mudsc loop", mud, "loop", 1))
    methods.append(("scipy loop", next(s for s in solvers if s.name == "scipy"), "loop", 1))
    for s in solvers:
        if s.kind != "peer":
            continue
        methods.append((f"{s.name} loop", s, "loop", 1))
        if s.batch is not None or s.missing:
            methods.append((f"{s.name} batch (1 thread)", s, "batch", 1))
            if not s.missing:
                methods.append((f"{s.name} batch ({cfg.threads_all} threads)", s, "batch", cfg.threads_all))

    pseudo = [
        Solver(name, s.kind, s.package, s.version, missing=s.missing, note=f"{mode}:{threads}")
        for name, s, mode, threads in methods
    ]
    by_name = {name: (s, mode, threads) for name, s, mode, threads in methods}

    def run(p):
        s, mode, threads = by_name[p.name]
        if mode == "loop":
            return lambda: [s.single(costs[i], True) for i in range(b)]
        return lambda: s.batch(costs, True, threads)

    log(f"batch {b}x{n}^2 float32")
    records = check_and_time(pseudo, run, verify, cfg, label="batch")
    threads_of = {name: threads for name, _, _, threads in methods}
    return [
        case_entry(
            "batch",
            f"batch {b}x{n}^2",
            n,
            np.float32,
            True,
            records,
            batch=b,
            ref_objective=float(refs.sum()),
            row_argmax_wrong=row_wrong,
            threads_of=threads_of,
        )
    ]


def run_warm(solvers: list, cfg: Config) -> list:
    """Warm re-solve: cold native solve of a 5 %-perturbed hard float32 matrix vs warm start from C's potentials."""
    entries = []
    for n in sizes_for("warm", cfg):
        c = cached_correlation("hard", n, cfg.use_cache).astype(np.float32)
        noise = _rng("warm", n).standard_normal((n, n))
        p = (c + WARM_PERTURBATION * float(np.std(c, dtype=np.float64)) * noise).astype(np.float32)
        del noise
        label = f"warm f32 n={n}"
        log(label)
        first = mudsc.solve_assignment(c, True, backend="native")
        ref_rows, ref_cols = scipy.optimize.linear_sum_assignment(p, maximize=True)
        ref = assignment_objective(p, ref_rows, ref_cols)

        def verify(result):
            obj = assignment_objective(p, result.row_ind, result.col_ind)
            ok, rel = objective_ok(obj, ref, np.float32)
            if not ok:
                raise AssertionError(f"objective {obj!r} != scipy {ref!r} (rel {rel:.2e})")
            ok2, _ = objective_ok(result.objective, ref, np.float32)
            if not ok2:
                raise AssertionError(f"reported objective {result.objective!r} != scipy {ref!r}")
            return obj, rel

        calls = {
            "cold": lambda: mudsc.solve_assignment(p, True, backend="native"),
            "warm": lambda: mudsc.solve_assignment(p, True, init_potentials=first.potentials, backend="native"),
        }
        pseudo = [Solver(name, "mudsc", "mudsc", mudsc.__version__) for name in calls]
        records = check_and_time(pseudo, lambda s: calls[s.name], verify, cfg, label=label)
        stats = {}
        for name, call in calls.items():  # phase timings of one more solve of each kind
            try:
                call()
                stats[name] = dict(mudsc._core.lap_last_stats())
            except Exception as exc:  # noqa: BLE001
                stats[name] = {"error": str(exc)}
        objectives_equal = (
            records["cold"].objective is not None
            and records["warm"].objective is not None
            and objective_ok(records["warm"].objective, records["cold"].objective, np.float32)[0]
        )
        entries.append(
            case_entry(
                "warm",
                "warm hard",
                n,
                np.float32,
                True,
                records,
                ref_objective=ref,
                perturbation=WARM_PERTURBATION,
                objectives_equal=bool(objectives_equal),
                phase_stats=stats,
            )
        )
    return entries


# --------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------


def median_of(entry: dict, name: str) -> Optional[float]:
    """Median seconds of solver ``name`` in ``entry`` when it ran correctly, else ``None``."""
    rec = entry["solvers"].get(name)
    return rec.median_s if rec is not None and rec.status == "ok" else None


def best_peer(entry: dict, solvers: list) -> tuple:
    """(name, median seconds) of the fastest correct peer in ``entry`` (``(None, None)`` when none)."""
    peers = {s.name for s in solvers if s.kind == "peer"}
    best = min(
        ((median_of(entry, name), name) for name in entry["solvers"] if name in peers and median_of(entry, name)),
        default=(None, None),
    )
    return best[1], best[0]


def ratio(num: Optional[float], den: Optional[float]) -> str:
    """``num / den`` formatted as ``12.3x`` (``-`` when either is missing)."""
    if not num or not den:
        return "-"
    return f"{num / den:.2f}x"


def markdown_table(header: list, rows: list) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def single_table(entries: list, solvers: list) -> str:
    """Table of a single-solve family: one row per case, one column per solver, then the ratios."""
    names = [s.name for s in solvers]
    corr = any("row_argmax_wrong" in e for e in entries)
    header = ["case", "n", "dtype"] + (["argmax✗ row/col"] if corr else []) + names
    header += ["scipy/mudsc", "best peer", "best-peer/mudsc"]
    rows = []
    for e in entries:
        row = [e["case"] + (" (max)" if e["maximize"] else " (min)"), e["n"], e["dtype"]]
        if corr:
            row.append(f"{100 * e['row_argmax_wrong']:.0f}% / {100 * e['col_argmax_wrong']:.0f}%")
        row += [e["solvers"][name].cell() for name in names]
        mud = median_of(e, "mudsc")
        bp, bt = best_peer(e, solvers)
        row += [ratio(median_of(e, "scipy"), mud), bp or "-", ratio(bt, mud)]
        rows.append(row)
    return markdown_table(header, rows)


def batch_table(entry: dict) -> str:
    """Table of the batch case: one row per method."""
    base1 = median_of(entry, "mudsc batch (1 thread)")
    scipy_loop = median_of(entry, "scipy loop")
    rows = []
    for name, rec in entry["solvers"].items():
        t = median_of(entry, name)
        rows.append(
            [
                name,
                entry["threads_of"][name],
                rec.cell(),
                f"{1e6 * t / entry['batch']:.1f}" if t else "-",
                ratio(scipy_loop, t),
                ratio(t, base1),
            ]
        )
    header = ["method", "threads", "time (ms)", "µs/problem", "scipy-loop/this", "this/mudsc-batch-1t"]
    return markdown_table(header, rows)


def warm_table(entries: list) -> str:
    """Table of the warm re-solve cases."""
    rows = []
    for e in entries:
        cold, warm = median_of(e, "cold"), median_of(e, "warm")
        st = e["phase_stats"].get("warm", {})
        rows.append(
            [
                e["case"],
                e["n"],
                e["dtype"],
                e["solvers"]["cold"].cell(),
                e["solvers"]["warm"].cell(),
                ratio(cold, warm),
                "yes" if e["objectives_equal"] else "NO",
                st.get("free_after_init", "-"),
            ]
        )
    header = ["case", "n", "dtype", "cold (ms)", "warm (ms)", "cold/warm", "objectives equal", "warm: free rows"]
    return markdown_table(header, rows)


def find_entry(entries: list, family: str, n: int, dtype: Any) -> Optional[dict]:
    """The entry of ``family`` at size ``n`` and ``dtype`` (``None`` when that case did not run)."""
    for e in entries:
        if e["family"] == family and e["n"] == n and e["dtype"] == np.dtype(dtype).name:
            return e
    return None


def acceptance(entries: list, solvers: list, threads_all: int) -> list:
    """Evaluate the issue's performance floors; a list of ``{name, status, detail}`` (PASS, FAIL, n/a)."""
    out = []

    def add(name, passed, detail):
        out.append({"name": name, "status": "n/a" if passed is None else ("PASS" if passed else "FAIL"),
                    "detail": detail})

    e = find_entry(entries, "hard", 4096, np.float32)
    name = f"hard float32 n=4096 max: >= {FLOOR_HARD_VS_SCIPY:g}x scipy and no slower than the fastest peer"
    if e is None:
        add(name, None, "not run")
    else:
        mud, sci = median_of(e, "mudsc"), median_of(e, "scipy")
        bp, bt = best_peer(e, solvers)
        if mud is None or sci is None:
            add(name, False, f"mudsc {e['solvers']['mudsc'].cell()}, scipy {e['solvers']['scipy'].cell()}")
        else:
            passed = sci / mud >= FLOOR_HARD_VS_SCIPY and (bt is None or mud <= bt)
            detail = f"mudsc {fmt_ms(mud)} ms, scipy {fmt_ms(sci)} ms ({sci / mud:.2f}x)"
            detail += f", fastest peer {bp} {fmt_ms(bt)} ms ({bt / mud:.2f}x)" if bt else ", no correct peer"
            add(name, passed, detail)

    e = find_entry(entries, "uniform", 2048, np.float64)
    name = f"uniform float64 n=2048: >= {FLOOR_UNIFORM_VS_SCIPY:g}x scipy"
    if e is None:
        add(name, None, "not run")
    else:
        mud, sci = median_of(e, "mudsc"), median_of(e, "scipy")
        if mud is None or sci is None:
            add(name, False, f"mudsc {e['solvers']['mudsc'].cell()}, scipy {e['solvers']['scipy'].cell()}")
        else:
            add(name, sci / mud >= FLOOR_UNIFORM_VS_SCIPY,
                f"mudsc {fmt_ms(mud)} ms, scipy {fmt_ms(sci)} ms ({sci / mud:.2f}x)")

    e = next((x for x in entries if x["family"] == "batch"), None)
    name = (f"batch 144x64^2: 1 thread >= {FLOOR_BATCH_VS_SCIPY:g}x scipy loop; "
            f"{threads_all} threads faster than 1")
    if e is None:
        add(name, None, "not run")
    else:
        t1 = median_of(e, "mudsc batch (1 thread)")
        tn = median_of(e, f"mudsc batch ({threads_all} threads)")
        sci = median_of(e, "scipy loop")
        if t1 is None or tn is None or sci is None:
            add(name, False, "mudsc batch or scipy loop did not run correctly")
        else:
            passed = sci / t1 >= FLOOR_BATCH_VS_SCIPY and (tn < t1 or threads_all == 1)
            add(name, passed, f"scipy loop {fmt_ms(sci)} ms, mudsc 1 thread {fmt_ms(t1)} ms ({sci / t1:.2f}x), "
                f"{threads_all} threads {fmt_ms(tn)} ms ({t1 / tn:.2f}x vs 1 thread)")

    e = find_entry([x for x in entries if x["family"] == "warm"], "warm", 4096, np.float32)
    name = f"warm re-solve n=4096: cold/warm >= {FLOOR_WARM:g}x (objectives equal)"
    if e is None:
        add(name, None, "not run")
    else:
        cold, warm = median_of(e, "cold"), median_of(e, "warm")
        if cold is None or warm is None:
            add(name, False, f"cold {e['solvers']['cold'].cell()}, warm {e['solvers']['warm'].cell()}")
        else:
            add(name, cold / warm >= FLOOR_WARM and e["objectives_equal"],
                f"cold {fmt_ms(cold)} ms, warm {fmt_ms(warm)} ms ({cold / warm:.2f}x), "
                f"objectives equal: {e['objectives_equal']}")
    return out


def _loadavg() -> Optional[list]:
    """1/5/15-minute load averages (other processes on the machine disturb the timings), ``None`` if unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def build_provenance() -> dict:
    """Which mudsc build ran: module path, native core file (mtime, sha256 prefix), git HEAD and dirty sources."""
    info: dict = {"mudsc_file": getattr(mudsc, "__file__", None)}
    core = getattr(mudsc, "_core", None) or sys.modules.get("mudsc._core")
    core_file = getattr(core, "__file__", None)
    if core_file:
        st = os.stat(core_file)
        with open(core_file, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        info["core_file"] = core_file
        info["core_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime))
        info["core_sha256_16"] = digest

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    info["git_head"] = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "csrc", "mudsc", "setup.py")
    info["git_dirty_sources"] = dirty.splitlines() if dirty else []
    return info


def metadata(solvers: list, cfg: Config, args: argparse.Namespace) -> dict:
    """Device, thread and version information for the header and the JSON file."""
    peers = {}
    for s in solvers:
        if s.kind == "peer":
            peers.setdefault(s.package, s.version or "missing")
    notes = {s.name: s.note for s in solvers if s.note}
    return {
        "cpu": device_name(),
        "usable_cpus": usable_cpus(),
        "timed_threads": 1,
        "batch_all_threads": cfg.threads_all,
        "thread_env": {v: os.environ.get(v) for v in THREAD_ENV_VARS},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "mudsc": mudsc.__version__,
        "mudsc_simd": getattr(getattr(mudsc, "_core", None), "simd", None),
        "build": build_provenance(),
        "peers": peers,
        "solver_notes": notes,
        "missing": {s.name: s.missing for s in solvers if s.missing},
        "args": vars(args),
        "budget_s": cfg.budget_s,
        "rel_tol": {k.name: v for k, v in REL_TOL.items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": _loadavg(),
    }


def header_line(meta: dict) -> str:
    """Description of the machine, the versions and the mudsc build."""
    peers = ", ".join(f"{k} {v}" for k, v in meta["peers"].items())
    b = meta["build"]
    dirty = " + uncommitted csrc/mudsc changes" if b.get("git_dirty_sources") else ""
    build = (
        f"mudsc build: git {b.get('git_head')}{dirty}, _core built {b.get('core_mtime')} "
        f"(sha256 {b.get('core_sha256_16')}) from {b.get('core_file')}"
    )
    return build + "\n\n" + (
        f"device: {meta['cpu']} ({meta['usable_cpus']} usable CPUs; timed single-threaded, batch also with "
        f"{meta['batch_all_threads']} threads) | numpy {meta['numpy']} | scipy {meta['scipy']} | "
        f"torch {meta['torch']} | mudsc {meta['mudsc']} (simd {meta['mudsc_simd']}) | peers: {peers} | "
        f"load average at start {meta['loadavg_start']}"
    )


def to_json(obj: Any) -> Any:
    """JSON-serialisable copy of results (records to dicts, numpy scalars to Python)."""
    if isinstance(obj, Record):
        return to_json(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes only (CI smoke test, < 60 s)")
    p.add_argument("--max-n", type=int, default=None, help="largest n to run in every family")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per solver (default: adaptive, >= 3)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds of timing per solver and case (default {BUDGET_S}, quick {BUDGET_S_QUICK})")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results (default {DEFAULT_OUT.relative_to(ROOT)}, quick: "
                   f"{DEFAULT_OUT_QUICK.relative_to(ROOT)})")
    p.add_argument("--cases", default=",".join(FAMILIES), help=f"comma list of: {','.join(FAMILIES)}")
    p.add_argument("--no-cache", action="store_true", help="regenerate correlation matrices, write no cache")
    args = p.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c and c not in FAMILIES]
    if unknown:
        p.error(f"unknown case families {unknown}; choose from {FAMILIES}")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: Optional[list] = None) -> int:
    """Run the selected families, print the tables and the acceptance block, write the JSON file."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    cfg = Config(
        quick=args.quick,
        budget_s=args.budget if args.budget is not None else (BUDGET_S_QUICK if args.quick else BUDGET_S),
        repeats=args.repeats,
        max_n=args.max_n,
        use_cache=not args.no_cache,
        threads_all=usable_cpus(),
    )
    solvers = load_solvers()
    meta = metadata(solvers, cfg, args)
    print("# LAP benchmark\n")
    print(header_line(meta) + "\n")
    for s in solvers:
        if s.missing or s.note:
            print(f"- {s.name}: {s.missing or s.note}")
    print(
        "\nTimes in ms (median of repeats; † = one run, too slow to repeat). Peers are timed including the "
        "negation/float64 copy they need for maximisation. WRONG = objective differs from scipy's.\n"
    )
    families = [f for f in FAMILIES if f in args.cases.split(",")]
    entries: list = []
    runners = {
        "uniform": run_uniform,
        "easy": lambda s, c: run_correlation("easy", s, c),
        "hard": lambda s, c: run_correlation("hard", s, c),
        "hard-sym": lambda s, c: run_correlation("hard-sym", s, c),
        "batch": run_batch,
        "warm": run_warm,
    }
    titles = {
        "uniform": "Uniform random costs, float64, minimise",
        "easy": "Correlation, easy (row-wise argmax optimal), maximise",
        "hard": "Correlation, hard (k=8 latent factors, S=n), maximise",
        "hard-sym": "Correlation, hard-sym (noise shares the latent factors), maximise",
        "batch": f"Batch {BATCH_SHAPE[0]} x {BATCH_SHAPE[1]}^2 hard, float32, maximise",
        "warm": f"Warm re-solve (hard float32, {100 * WARM_PERTURBATION:g}% perturbation, mudsc native)",
    }
    for fam in families:
        t0 = time.perf_counter()
        fam_entries = runners[fam](solvers, cfg)
        entries += fam_entries
        print(f"## {titles[fam]}  ({time.perf_counter() - t0:.0f} s)\n")
        if not fam_entries:
            print("(no sizes selected)\n")
        elif fam == "batch":
            e = fam_entries[0]
            print(f"row-wise argmax wrong: {100 * e['row_argmax_wrong']:.0f}% of rows on average\n")
            print(batch_table(e) + "\n")
        elif fam == "warm":
            print(warm_table(fam_entries) + "\n")
        else:
            print(single_table(fam_entries, solvers) + "\n")
        sys.stdout.flush()

    accept = acceptance(entries, solvers, cfg.threads_all)
    print("## Acceptance\n")
    for a in accept:
        print(f"- {a['status']:4s} {a['name']}: {a['detail']}")
    counted = [a for a in accept if a["status"] != "n/a"]
    n_pass = sum(a["status"] == "PASS" for a in counted)
    print(f"\n{n_pass}/{len(counted)} floors met ({len(accept) - len(counted)} not run)")
    total = time.perf_counter() - t_start
    print(f"\ntotal runtime {total:.0f} s; load average at the end {_loadavg()}")

    out = args.out or (DEFAULT_OUT_QUICK if args.quick else DEFAULT_OUT)
    meta["runtime_s"] = total
    meta["loadavg_end"] = _loadavg()
    write_json(out, to_json({"metadata": meta, "cases": entries, "acceptance": accept}), indent=1)
    print(f"results written to {out}")
    # Timings never fail a run (these machines are noisy); a wrong or failing mudsc answer does.
    bad = [
        f"{e.get('family')} n={e.get('n')} {name}: {rec.status} {rec.note or ''}"
        for e in entries
        for name, rec in e.get("solvers", {}).items()
        if name.startswith("mudsc") or name in ("cold", "warm")
        if isinstance(rec, Record) and rec.status in ("WRONG", "error")
    ]
    for line in bad:
        print("mudsc failed: " + line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
