"""The ``mudsc`` command (``python -m mudsc``): parses the command line and runs one subcommand.

Subcommands: ``info`` (the build configuration as JSON), ``merge`` (:mod:`mudsc.cli.merge`), ``demo``
(:mod:`mudsc.cli.demo`) and ``bench`` (:mod:`mudsc.cli.bench`). The exit code is the subcommand's.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import __version__, build_info
from . import bench, demo, merge

__all__ = ["build_parser", "main"]

COMMANDS = {"merge": merge.run, "demo": demo.run, "bench": bench.run}


def build_parser() -> argparse.ArgumentParser:
    """The ``mudsc`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="mudsc", description="training-free model merging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build configuration and which native parts loaded")
    demo.add_parser(sub)
    bench.add_parser(sub)
    merge.add_parser(sub)
    return parser


def info() -> int:
    """``mudsc info``: the version and :func:`mudsc.build_info` as indented JSON."""
    print(json.dumps({"version": __version__, **build_info()}, indent=2))
    return 0


def main(argv=None) -> int:
    """Run ``mudsc`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return info()
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
