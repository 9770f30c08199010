"""``mudsc demo``: run the embedded default job (:func:`mudsc.demo.run_demo`) or the solver table."""

from __future__ import annotations

import argparse

from ..demo import run_demo

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand on an ``argparse`` subparsers object."""
    p = sub.add_parser("demo", help="run the embedded default job")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: one small model, few images")
    p.add_argument("--solvers", action="store_true", help="print the native-vs-reference matching-solver table")
    p.add_argument("--cache-dir", default=None, help="endpoint checkpoints (default $MUDSC_CACHE/demo)")
    p.add_argument("--out", default=None, help="bar chart PNG path (default <cache>/demo.png)")
    p.add_argument("--recompute", action="store_true",
                   help="rerun every merge even where its plan is cached (trained endpoints stay cached)")
    p.add_argument("--resnet-width", type=int, default=4,
                   help="ResNet-20 width multiplier (default 4, on 16x16 inputs)")
    p.add_argument("--allow-differing-plans", action="store_true",
                   help="report a native plan that differs from its reference twin without failing (by default "
                        "the exit status is 1 then)")
    return p


def run(args) -> int:
    """Run ``mudsc demo`` with parsed ``args``; its exit code (1 when a native plan differs from its reference)."""
    return run_demo(quick=args.quick, solvers=args.solvers, cache_dir=args.cache_dir, out=args.out,
                    resnet_width=args.resnet_width, recompute=args.recompute,
                    require_identical_plans=not args.allow_differing_plans)
