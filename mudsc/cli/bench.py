"""``mudsc bench``: run the benchmark scripts ``benchmarks/bench_<name>.py`` of a source checkout.

They are scripts, not a package: each runs in its own subprocess with the same interpreter, in the order
:data:`ORDER` (then any others, by name); the exit code is the worst of theirs, 2 when none is found.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["ORDER", "add_parser", "benchmarks_folder", "run"]

ORDER = ("merge", "lap", "zip")


def benchmarks_folder() -> Path:
    """``benchmarks/`` next to the package folder (present in a source checkout only)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on an ``argparse`` subparsers object."""
    p = sub.add_parser("bench", help="run the benchmarks (benchmarks/bench_*.py of a source checkout)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (what CI runs)")
    p.add_argument("names", nargs="*", help="which: merge, lap, zip, stats (default: all present)")
    return p


def run(args) -> int:
    """Run the benchmarks ``args.names`` (default all) with ``--quick`` when asked; the worst exit code."""
    folder = benchmarks_folder()
    present = {p.stem[len("bench_"):]: p for p in sorted(folder.glob("bench_*.py"))}
    if not present:
        print(f"no benchmarks found next to the package ({folder}); they ship with the source checkout only")
        return 2
    order = [n for n in ORDER if n in present] + sorted(set(present) - set(ORDER))
    unknown = [n for n in args.names if n not in present]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; present: {order}")
        return 2
    worst = 0
    for name in args.names or order:
        cmd = [sys.executable, str(present[name])] + (["--quick"] if args.quick else [])
        print(f"$ {' '.join(cmd)}", flush=True)
        worst = max(worst, subprocess.call(cmd))
    return worst
