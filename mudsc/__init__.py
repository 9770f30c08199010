"""mudsc: training-free merging of networks trained from different initializations.

Public API:

- :func:`linear_sum_assignment` - drop-in for scipy's, native Jonker-Volgenant solver.
- :func:`batch_linear_sum_assignment` - many problems of one shape on a thread pool.
- :func:`solve_assignment` - one problem with dual potentials, for warm-started re-solves.
- :func:`zip_match`, :func:`group_zip_match`, :func:`permute_match`, :func:`group_permute_match` - unit matching of N models from a
  similarity matrix (ZipIt! zip, alignment, head/group alignment), returning a :class:`MatchResult`.
- :class:`CorrelationAccumulator` - streaming mean / covariance / correlation of the units of N models (native
  CPU/CUDA ops, float64-safe numerics, merge / all_reduce / checkpoint).
- :func:`weight_similarity`, :class:`AxisMap` - Pearson / cosine similarity of units from their weights, other
  groups' matchings applied by index.
- :func:`build_info` - what the native build contains and what loaded.
- :class:`PermSpec`, :func:`trace`, :func:`check_spec`, :func:`permute_model`, :func:`apply_maps` - model graphs:
  permutation specs discovered with torch.fx, verified by random permutations, and applied to models.
- :func:`merge` (-> :class:`MergeResult`), :func:`collect_stats`, :func:`match` (-> :class:`MergePlan`),
  :func:`reset_bn`, ``METHODS`` - the merge methods (avg, rebasin, act-align, zipit, wzip, mudsc-align,
  mudsc-zip) and their stages.
- :func:`partial_merge` (-> :class:`PartialMerge`) - partial zipping: merged up to a module, each model's own
  layers after it (also ``merge(..., stop_at=...)``).
- :mod:`mudsc.models` - small reference architectures (ResNet-20, VGG-11, ViT, MLP).
"""

from ._native import build_info
from ._version import __version__
from . import models
from .backends import BackendUnavailableError, available_backends
from .maps import AxisMap, MatchResult, ZipResult
from .lap import AssignmentResult, batch_linear_sum_assignment, linear_sum_assignment, solve_assignment
from .matching import group_permute_match, group_zip_match, permute_match, zip_match
from .stats import CorrelationAccumulator
from .piece_cache import PieceCache
from .similarity import weight_similarity
from .collect import ActivationStats, collect_stats
from .methods import METHODS, MergeResult, match, merge
from .norm import reset_bn
from .partial import PartialMerge, partial_merge
from .plan import MergePlan
from .spec import PermSpec, SpecCheckError, SpecTraceError, apply_maps, check_spec, permute_model, trace

__all__ = [
    "METHODS",
    "ActivationStats",
    "MergePlan",
    "MergeResult",
    "collect_stats",
    "match",
    "merge",
    "reset_bn",
    "PartialMerge",
    "partial_merge",
    "AxisMap",
    "CorrelationAccumulator",
    "PieceCache",
    "weight_similarity",
    "AssignmentResult",
    "BackendUnavailableError",
    "MatchResult",
    "ZipResult",
    "group_permute_match",
    "group_zip_match",
    "permute_match",
    "zip_match",
    "available_backends",
    "batch_linear_sum_assignment",
    "build_info",
    "linear_sum_assignment",
    "solve_assignment",
    "PermSpec",
    "SpecCheckError",
    "SpecTraceError",
    "apply_maps",
    "check_spec",
    "models",
    "permute_model",
    "trace",
    "__version__",
]
