"""The data types every pipeline stage shares: how N models' units map to merged units.

- :class:`MatchResult`: a solver's output for one group: ``labels int64[N·Om]`` (the merged unit of every input
  unit, units model-major: model i owns ``i·Om … (i+1)·Om − 1``), ``num_outputs`` K and the solver's
  ``merge_value``. Its dense forms are the unmerge ``U[N·Om, K]`` (``U[u, labels[u]] = 1``) and the merge
  ``M = U / (colsum(U) + eps)`` (ALGORITHM.md §8.1.9).
- :class:`AxisMap`: one model's map along one tensor axis: ``new[k] = scale[k]·Σ_{labels[u]=k} old[u]`` (a
  scaled segment sum, the original's multiplication by ``U_iᵀ`` or ``N·M_iᵀ`` at O(d·rest) instead of O(d²·rest)).
- :func:`merge_scale`: the factor ``N / (count + eps)`` that turns the segment sum of an output axis into the
  mean of a merged unit's members (the scaled merge ``N·M_i``). It is written here once; ``eps`` is 0 for the
  library's own merges and :data:`ORIGINAL_MERGE_EPS` (the original's ``1e-5``) where parity is asked for.

This module imports no other pipeline stage: the statistics, similarity, solvers, plans and spec transforms
import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from . import _native

__all__ = ["ORIGINAL_MERGE_EPS", "AxisMap", "MatchResult", "ZipResult", "merge_scale"]

ORIGINAL_MERGE_EPS = 1e-5
"""The ``eps`` of the original's merge matrix ``M = U / (colsum(U) + 1e-5)``."""


def merge_scale(counts: torch.Tensor, num_models: int, eps: float = 0.0) -> torch.Tensor:
    """``N / (counts + eps)``, elementwise (``counts[k]``: input units of all models mapped to merged unit k).

    Multiplying a merged unit's segment sum by it gives N times the mean of its members, the scaled merge
    ``N·M_i`` of ALGORITHM.md §8.1.9 (a unit merged from one unit of each of N models gets factor 1). The
    result has the dtype of ``counts`` (float64 in the library).
    """
    return num_models / (counts + eps)


@dataclass
class MatchResult:
    """How the units of N models map to merged units.

    Attributes:
        labels: ``int64[O]``, the merged (output) unit of every input unit; input units are model-major
            (model i owns ``i·Om … (i+1)·Om − 1``).
        num_outputs: K, the number of merged units.
        merge_value: the solver's progress metric: mean matched similarity (alignment), mean of the per-group
            mean matched similarity (group alignment), or mean of the merged similarities (zip).
    """

    labels: np.ndarray
    num_outputs: int
    merge_value: float

    def unmerge(self, dtype=np.float32) -> np.ndarray:
        """``U[O, K]`` with ``U[u, labels[u]] = 1`` (ALGORITHM.md's unmerge matrix)."""
        u = np.zeros((self.labels.shape[0], self.num_outputs), dtype=dtype)
        u[np.arange(self.labels.shape[0]), self.labels] = 1
        return u

    def merge(self, dtype=np.float32) -> np.ndarray:
        """``M = U / (colsum(U) + 1e-5)`` (ALGORITHM.md's merge matrix, before the caller's factor N)."""
        u = self.unmerge(dtype)
        return u / (u.sum(axis=0, keepdims=True) + dtype(ORIGINAL_MERGE_EPS))


ZipResult = MatchResult


@dataclass(frozen=True)
class AxisMap:
    """How one model's units along an axis map to K merged units.

    Attributes:
        labels: ``LongTensor[m]``, the merged unit of each of the model's m units.
        size: K.
        scale: ``Tensor[K]`` or None: multiply merged unit k by ``scale[k]`` (None = 1: a plain segment sum).
    """

    labels: torch.Tensor
    size: int
    scale: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        labels = torch.as_tensor(self.labels)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"AxisMap labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.size):
            raise ValueError(f"AxisMap labels must lie in [0, {self.size}), got [{int(labels.min())}, {int(labels.max())}]")
        object.__setattr__(self, "labels", labels.long())
        if self.scale is not None and torch.as_tensor(self.scale).shape != (self.size,):
            raise ValueError(f"AxisMap scale must be [{self.size}], got {tuple(torch.as_tensor(self.scale).shape)}")

    @classmethod
    def unmerge(cls, result: Any, model: int, num_models: int) -> "AxisMap":
        """Model ``model``'s unmerge ``U_iᵀ`` from a :class:`MatchResult` (``labels``, ``num_outputs``) of
        ``num_models`` models."""
        labels = torch.as_tensor(result.labels).long()
        om = labels.numel() // num_models
        return cls(labels[model * om : (model + 1) * om], int(result.num_outputs))

    @classmethod
    def merge(cls, result: Any, model: int, num_models: int) -> "AxisMap":
        """Model ``model``'s scaled merge ``N·M_iᵀ`` (``M = U / (colsum(U) + 1e-5)``, ALGORITHM.md §8.1.9)."""
        labels = torch.as_tensor(result.labels).long()
        k = int(result.num_outputs)
        om = labels.numel() // num_models
        counts = torch.bincount(labels, minlength=k).double()
        scale = merge_scale(counts, num_models, ORIGINAL_MERGE_EPS).float()
        return cls(labels[model * om : (model + 1) * om], k, scale)

    def apply(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """``t`` with ``axis`` (length m) replaced by the K merged units."""
        if t.shape[axis] != self.labels.numel():
            raise ValueError(
                f"AxisMap for {self.labels.numel()} units applied to axis {axis} of a tensor of shape {tuple(t.shape)}"
            )
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and _native.HAS_C:
            # one pass along any axis, rows added in the same order as index_add_ (same result, no copy)
            return torch.ops.mudsc.axis_segment_sum(t, axis, self.labels, self.size, self.scale)
        # The segment sum runs along dim 0 of a contiguous copy: ATen's index_add_ along an inner axis of a
        # conv weight is slower than the copy plus a dim-0 index_add_ (whole rows). The result is a view.
        x = t if axis == 0 else t.movedim(axis, 0).contiguous()
        out = torch.zeros((self.size,) + tuple(x.shape[1:]), dtype=t.dtype, device=t.device)
        out.index_add_(0, self.labels.to(t.device), x)
        out = out if axis == 0 else out.movedim(0, axis)
        if self.scale is not None:
            view = [1] * t.dim()
            view[axis] = self.size
            out *= self.scale.to(t.device, t.dtype).view(view)
        return out
