"""How the demo reports: a markdown table per architecture, a bar chart (PNG) and the numbers (JSON).

A result row (``rows[name]``) holds ``joint``, ``task_A``, ``task_B``, ``task_avg`` (fractions) and, for a
merge, ``timing`` (seconds per stage), ``sweeps`` and ``cached_plan``; the mudsc-zip row also holds
``reference_timing``, ``same_plan_as_reference`` and ``groups_differing_from_reference``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .._io import write_json

__all__ = ["print_arch_table", "save_chart", "save_numbers"]

STAGES = ("forward", "stats", "similarity", "solve", "apply", "reset_bn")


def _fmt_pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def print_arch_table(name: str, rows: Dict[str, Dict], log: Callable[[str], None]) -> None:
    """Markdown table: accuracies, per-stage merge time; then native vs reference for the rows that have both."""
    log(f"| {name} | joint | task A | task B | task avg | " + " | ".join(STAGES) + " | total s |")
    log("|---|---:|---:|---:|---:|" + "---:|" * (len(STAGES) + 1))
    for key, row in rows.items():
        t = row.get("timing", {})
        cells = [f"{t[s]:.2f}" if s in t else "" for s in STAGES]
        total = f"{t['total']:.2f}" if "total" in t else ""
        log(f"| {key} | {_fmt_pct(row['joint'])} | {_fmt_pct(row['task_A'])} | {_fmt_pct(row['task_B'])} | "
            f"{_fmt_pct(row['task_avg'])} | " + " | ".join(cells) + f" | {total} |")
    for key, row in rows.items():
        if "reference_timing" in row:
            _print_reference_comparison(key, row, log)


def _print_reference_comparison(key: str, row: Dict, log: Callable[[str], None]) -> None:
    nat, ref = row["timing"], row["reference_timing"]
    match_n = nat.get("similarity", 0) + nat.get("solve", 0)
    match_r = ref.get("similarity", 0) + ref.get("solve", 0)
    same = row["same_plan_as_reference"]
    log(f"  {key} matching (similarity + solve): native {match_n:.3f}s, reference {match_r:.3f}s "
        f"({match_r / max(match_n, 1e-9):.1f}x); total {nat.get('total', 0):.2f}s vs "
        f"{ref.get('total', 0):.2f}s; identical plans: {'yes' if same else 'NO'}")
    if row.get("groups_differing_from_reference"):
        log(f"    groups that differ: {', '.join(row['groups_differing_from_reference'])}")


def save_chart(results: List[dict], path: Path, methods: Sequence[str]) -> None:
    """One panel per architecture: joint and per-task-average accuracy of the endpoints, ensemble and methods."""
    import matplotlib  # optional dependency, only needed for the chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_order = ["model A", "model B", "ensemble", *methods]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, res in zip(axes[0], results):
        x = np.arange(len(rows_order))
        joint = [100 * res["rows"][r]["joint"] for r in rows_order]
        task = [100 * res["rows"][r]["task_avg"] for r in rows_order]
        ax.bar(x - 0.2, joint, 0.4, label="joint (10-way)")
        ax.bar(x + 0.2, task, 0.4, label="per-task avg (5-way)")
        ax.set_xticks(x, rows_order, rotation=60, ha="right", fontsize=8)
        ax.set_title(res["arch"], fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("mudsc demo: merging MNIST 0-4 and 5-9 models without training", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_numbers(path: Path, results: List[dict], threads: int, quick: bool) -> None:
    """The results as JSON: ``{"threads", "quick", "results": [{"arch", "rows", "ordering_holds", "ordering",
    "spread"}]}`` (``spread``: :func:`mudsc.demo.job.ordering_spread`'s, None in the quick run)."""
    write_json(path, {"threads": threads, "quick": quick, "results": results}, indent=1)
