"""The ``mudsc`` command line (``mudsc ...`` console script, ``python -m mudsc ...``): ``info``, ``merge``,
``demo``, ``bench``. :func:`main` parses ``argv`` and returns the exit code."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
