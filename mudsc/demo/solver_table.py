"""``mudsc demo --solvers``: the matching engine every merge method ends in, native vs reference.

Solves the assignment and zip problems a two-model merge produces (unit correlations of ViT-sized layers, the
144 head blocks of a ViT-B attention layer, a zip of a residual stream and of attention heads), with the native
solvers and with the pure-Python references (the original code's loops), checks they agree, and prints the
times side by side.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from .. import (__version__, batch_linear_sum_assignment, build_info, group_zip_match, linear_sum_assignment,
                zip_match)
from .problems import correlation_problem, merge_similarity

__all__ = ["run_solver_table"]


def _median_time(fn, repeats: int) -> tuple[float, object]:
    """``(median seconds of repeats calls, last result)``."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def _same_objective(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * abs(a)


def _lap_rows(quick: bool, threads: int) -> bool:
    """The LAP table (single problems at ViT layer sizes, then 144 head blocks); True when every optimum agrees."""
    sizes = [(384, "ViT-S residual (d=384)"), (768, "ViT-B residual (d=768)")]
    if not quick:
        sizes += [(1536, "ViT-S MLP (4d=1536)"), (3072, "ViT-B MLP (4d=3072)")]
    print()
    print("| layer | units | reference (scipy) ms | native ms | speed-up | same optimum |")
    print("|---|---:|---:|---:|---:|:---:|")
    ok = True
    for n, label in sizes:
        sim = correlation_problem(n, "hard", seed=n)
        t_ref, (r_rows, r_cols) = _median_time(
            lambda: linear_sum_assignment(sim, maximize=True, backend="reference"), 3)
        t_nat, (n_rows, n_cols) = _median_time(
            lambda: linear_sum_assignment(sim, maximize=True, backend="native"), 5)
        ref_obj = float(sim[r_rows, r_cols].astype(np.float64).sum())
        nat_obj = float(sim[n_rows, n_cols].astype(np.float64).sum())
        same = _same_objective(ref_obj, nat_obj)
        ok &= same
        print(f"| {label} | {n} | {t_ref * 1e3:.1f} | {t_nat * 1e3:.2f} | {t_ref / t_nat:.1f}x | "
              f"{'yes' if same else 'NO'} |")

    heads = np.stack([correlation_problem(64, "hard", seed=1000 + h) for h in range(144)])
    t_ref, ref_cols = _median_time(lambda: batch_linear_sum_assignment(heads, maximize=True, backend="reference"), 3)
    t_one, cols_one = _median_time(
        lambda: batch_linear_sum_assignment(heads, maximize=True, num_threads=1, backend="native"), 5)
    t_all, _ = _median_time(lambda: batch_linear_sum_assignment(heads, maximize=True, backend="native"), 5)
    idx = np.arange(64)
    ref_obj = sum(float(heads[b, idx, ref_cols[b]].sum()) for b in range(144))
    nat_obj = sum(float(heads[b, idx, cols_one[b]].sum()) for b in range(144))
    same = _same_objective(ref_obj, nat_obj)
    ok &= same
    print(f"| ViT-B heads: 144 blocks of 64x64, 1 thread | 64 | {t_ref * 1e3:.1f} | {t_one * 1e3:.2f} | "
          f"{t_ref / t_one:.1f}x | {'yes' if same else 'NO'} |")
    print(f"| same, {threads} threads | 64 | {t_ref * 1e3:.1f} | {t_all * 1e3:.2f} | {t_ref / t_all:.1f}x | |")
    return ok


def _zip_rows(quick: bool) -> bool:
    """The zip table (a residual stream, attention heads); True when every plan is identical."""
    print()
    print("| matching (2 models) | units | reference (original loop) s | native ms | speed-up | identical |")
    print("|---|---:|---:|---:|---:|:---:|")
    cases = [("zip, ViT-S residual", 384, None), ("group zip, ViT-S heads (6 x 64)", 384, 6)]
    if not quick:
        cases.insert(1, ("zip, ViT-B residual", 768, None))
    ok = True
    for label, units, heads in cases:
        sim = merge_similarity(units, 2, seed=units)
        if heads is None:
            run = lambda backend: zip_match(sim, 2, backend=backend)  # noqa: E731
        else:
            run = lambda backend: group_zip_match(sim, 2, heads, backend=backend)  # noqa: E731
        t_ref, ref = _median_time(lambda: run("reference"), 1)
        t_nat, nat = _median_time(lambda: run("native"), 3)
        same = bool(np.array_equal(ref.labels, nat.labels))
        ok &= same
        print(f"| {label} | {2 * units} | {t_ref:.2f} | {t_nat * 1e3:.2f} | {t_ref / t_nat:.0f}x | "
              f"{'yes' if same else 'NO'} |")
    return ok


def run_solver_table(quick: bool = False) -> int:
    """Print the native-vs-reference tables for the LAP and zip sizes met in merging; 1 when a result differs."""
    info = build_info()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"mudsc {__version__} demo: unit matching for a two-model merge")
    print(f"CPU: {platform.processor() or platform.machine()}, {threads} threads available; native core: "
          f"{'loaded (' + str(info['core_simd']) + ')' if info['core'] else 'NOT loaded: ' + str(info['core_error'])}")
    ok = _lap_rows(quick, threads)
    ok &= _zip_rows(quick)
    print()
    print("Times are medians of repeated runs on this machine, measured side by side in this run.")
    print("Full benchmarks (LAP vs scipy and the PyPI LAP packages; zip and group solvers): make bench")
    return 0 if ok else 1
