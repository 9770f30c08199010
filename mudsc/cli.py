"""Command line: ``python -m mudsc info`` (build configuration), ``merge`` (merge checkpoints), ``demo`` (the
embedded default job) and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mudsc", description="training-free model merging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build configuration and which native parts loaded")
    demo = sub.add_parser("demo", help="run the embedded default job")
    demo.add_argument("--quick", action="store_true", help="tiny smoke run: one small model, few images (seconds)")
    demo.add_argument("--solvers", action="store_true", help="print the native-vs-reference matching-solver table")
    demo.add_argument("--cache-dir", default=None, help="endpoint checkpoints (default $MUDSC_CACHE/demo)")
    demo.add_argument("--out", default=None, help="bar chart PNG path (default <cache>/demo.png)")
    demo.add_argument("--recompute", action="store_true",
                      help="rerun every merge even where its plan is cached (trained endpoints stay cached)")
    demo.add_argument("--resnet-width", type=int, default=4,
                      help="ResNet-20 width multiplier (default 4, on 16x16 inputs)")
    bench = sub.add_parser("bench", help="run the benchmarks (benchmarks/bench_*.py of a source checkout)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes (what CI runs)")
    bench.add_argument("names", nargs="*", help="which: merge, lap, zip (default: all present)")
    from .cli_merge import add_merge_parser, run_merge

    add_merge_parser(sub)  # `mudsc merge` lives in mudsc/cli_merge.py
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import __version__, build_info

        print(json.dumps({"version": __version__, **build_info()}, indent=2))
        return 0
    if args.command == "merge":
        return run_merge(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(quick=args.quick, solvers=args.solvers, cache_dir=args.cache_dir, out=args.out,
                        resnet_width=args.resnet_width, recompute=args.recompute)
    if args.command == "bench":
        return _run_benchmarks(args.names, args.quick)
    return 2  # pragma: no cover


def _run_benchmarks(names, quick: bool) -> int:
    """Run ``benchmarks/bench_<name>.py`` (not a package: one subprocess each, same interpreter); worst exit code."""
    import subprocess
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    present = {p.stem[len("bench_"):]: p for p in sorted(folder.glob("bench_*.py"))}
    if not present:
        print(f"no benchmarks found next to the package ({folder}); they ship with the source checkout only")
        return 2
    order = [n for n in ("merge", "lap", "zip") if n in present] + sorted(set(present) - {"merge", "lap", "zip"})
    unknown = [n for n in names if n not in present]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; present: {order}")
        return 2
    worst = 0
    for name in names or order:
        cmd = [sys.executable, str(present[name])] + (["--quick"] if quick else [])
        print(f"$ {' '.join(cmd)}", flush=True)
        worst = max(worst, subprocess.call(cmd))
    return worst


if __name__ == "__main__":
    sys.exit(main())
