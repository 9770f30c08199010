"""mudsc: training-free merging of networks trained from different initializations.

Public API (more arrives with the merge methods):

- :func:`linear_sum_assignment` - drop-in for scipy's, native Jonker-Volgenant solver.
- :func:`batch_linear_sum_assignment` - many problems of one shape on a thread pool.
- :func:`solve_assignment` - one problem with dual potentials, for warm-started re-solves.
- :func:`build_info` - what the native build contains and what loaded.
"""

from ._native import build_info
from .backends import BackendUnavailableError, available_backends
from .solvers import AssignmentResult, batch_linear_sum_assignment, linear_sum_assignment, solve_assignment

__version__ = "0.1.0"

__all__ = [
    "AssignmentResult",
    "BackendUnavailableError",
    "available_backends",
    "batch_linear_sum_assignment",
    "build_info",
    "linear_sum_assignment",
    "solve_assignment",
    "__version__",
]
