"""The original's weight-vector similarity (ALGORITHM.md §3), written its way: the twin of :mod:`mudsc.similarity`.

:func:`weight_similarity` builds each model's unit vectors with *dense* matrices for the other groups' maps (the
original's ``P_iᵀ W``: a one-hot ``[rows, K]`` matrix per index or :class:`mudsc.AxisMap`, scaled columns for a
scaled merge), concatenates them, and takes the Pearson correlation (``E[xxᵀ] − μμᵀ`` over ``σσᵀ``) or the
cosine of the rows in float32, as the original does. A NaN covariance raises ``ValueError`` (the original
stops in ``breakpoint()``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..maps import AxisMap

__all__ = ["weight_similarity"]


def _dense_map(axis_map, rows: int) -> torch.Tensor:
    """The original's dense matrix ``P_i[rows, K]`` of an index (gather) or AxisMap (scaled segment sum)."""
    if isinstance(axis_map, AxisMap):
        p = torch.zeros(rows, axis_map.size)
        p[torch.arange(rows), axis_map.labels.cpu()] = 1.0
        if axis_map.scale is not None:
            p = p * axis_map.scale.cpu().float()[None, :]
        return p
    index = torch.as_tensor(axis_map).cpu()
    p = torch.zeros(rows, index.numel())
    p[index, torch.arange(index.numel())] = 1.0
    return p


def _transform_dense(t: torch.Tensor, axis: int, p: torch.Tensor) -> torch.Tensor:
    """``perm_`` (ALGORITHM.md §6.1): move ``axis`` first, flatten, left-multiply by ``Pᵀ``, restore."""
    moved = torch.movedim(t, axis, 0)
    shape = moved.shape
    out = p.to(t.device, t.dtype).T @ moved.reshape(shape[0], -1)
    return torch.movedim(out.reshape(p.shape[1], *shape[1:]), 0, axis)


def weight_similarity(pieces, kind: str = "pearson", eps: Optional[float] = None) -> torch.Tensor:
    """The original's weight-vector similarity (the arguments of :func:`mudsc.similarity.weight_similarity`)."""
    vectors = []
    for model_pieces in pieces:
        cols = []
        for piece in model_pieces:
            t, axis = piece[0], piece[1]
            transforms = piece[2] if len(piece) > 2 and piece[2] is not None else {}
            t = t.detach().float()
            axis = axis % t.dim()
            for other_axis, axis_map in transforms.items():
                other_axis = other_axis % t.dim()
                t = _transform_dense(t, other_axis, _dense_map(axis_map, t.shape[other_axis]))
            cols.append(torch.movedim(t, axis, 0).reshape(t.shape[axis], -1))
        vectors.append(torch.cat(cols, dim=1))
    x = torch.nan_to_num(torch.cat(vectors, dim=0), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "cosine":
        x = x / torch.clamp(x.norm(dim=1, keepdim=True), min=1e-8 if eps is None else eps)
        return x @ x.T
    mean = x.mean(dim=1)
    std = x.std(dim=1, unbiased=False)
    cov = (x @ x.T) / x.shape[1] - torch.outer(mean, mean)
    if torch.isnan(cov).any():
        raise ValueError("the weight covariance has NaN entries")
    return cov / torch.clamp(torch.outer(std, std), min=1e-7 if eps is None else eps)
