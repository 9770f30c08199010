"""Command line: ``python -m mudsc info`` (build configuration) and ``python -m mudsc demo``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mudsc", description="training-free model merging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build configuration and which native parts loaded")
    demo = sub.add_parser("demo", help="run the embedded default job")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import __version__, build_info

        print(json.dumps({"version": __version__, **build_info()}, indent=2))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(quick=args.quick)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
