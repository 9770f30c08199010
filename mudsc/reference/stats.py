"""The original's activation statistics (ALGORITHM.md §2), written its way: the twin of :mod:`mudsc.stats`.

This is the "pure-Python" pipeline benchmarks compare against and the parity oracle of :mod:`mudsc.stats`:

- :class:`CorrelationAccumulator`: per batch, move channels to dim 1, flatten each model's features to
  ``(C, L)``, concatenate the models along rows, ``nan_to_num``, then the batch moments ``mean`` (over L),
  ``outer = X Xᵀ / L`` and ``std`` (computed and accumulated, never used, as the original); accumulate them
  weighted by the batch's number of columns L. Finalize in float32: ``Cov = E[xxᵀ] − μμᵀ`` (cancels for
  large-mean channels), ``Corr = Cov / max(σσᵀ, eps)``.

  The original weights by the batch size B (rows of dim 0). With one tap per group, as in the original, every
  batch has the same L/B, and the two weightings give the same moments; a traced spec may tap a group at several
  places of different shapes (a residual stream entering a conv ``[B, C, H, W]`` and the classifier ``[B, C]``),
  where B-weighting would over-weight the small tensors. Weighting by L keeps the reference estimating the same
  moments as :class:`mudsc.CorrelationAccumulator`, so both backends can be compared end to end.
  ``num_samples`` still counts batch rows, as the original's ``numel``.

Deviations (each replaces a crash): the original calls ``breakpoint()`` on a NaN covariance and
``pdb.set_trace()`` on a negative variance; here a NaN raises ValueError and a negative variance is clamped to
0 (so σ = 0 and the unit's correlations are 0, its diagonal 0 as in the original).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = ["CorrelationAccumulator"]


class CorrelationAccumulator:
    """The original ``CovarianceMetric``: batch-weighted float32 moments. Same interface as
    :class:`mudsc.CorrelationAccumulator` (which wraps it for ``backend="reference"``)."""

    def __init__(self, num_features: int, device: Optional[torch.device] = None) -> None:
        self.num_features = int(num_features)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mean_sum: Optional[torch.Tensor] = None
        self.outer_sum: Optional[torch.Tensor] = None
        self.std_sum: Optional[torch.Tensor] = None
        self.numel = 0
        self.weight = 0
        self.nonfinite = 0

    def update(self, xs: Sequence[torch.Tensor], dims: Sequence[int]) -> None:
        """One batch: ``xs[i]`` has its channels on ``dims[i]``; every other axis enumerates samples."""
        rows = []
        batch = None
        for t, d in zip(xs, dims):
            t = t.detach()
            if t.dim() == 1:
                t = t[:, None] if d == 0 else t[None, :]
                d = 0 if d == 0 else 1
            if d != 1:
                t = torch.movedim(t, d, 1)
            if batch is None:
                batch = t.shape[0]
            rows.append(t.transpose(0, 1).reshape(t.shape[1], -1).float())
        x = torch.cat(rows, dim=0)
        self.nonfinite += int((~torch.isfinite(x)).sum().item())
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if x.shape[1] == 0:
            return
        mean = x.mean(dim=1)
        outer = (x @ x.T) / x.shape[1]
        std = x.std(dim=1)
        if self.mean_sum is None:
            self.mean_sum = torch.zeros_like(mean)
            self.outer_sum = torch.zeros_like(outer)
            self.std_sum = torch.zeros_like(std)
        columns = x.shape[1]
        self.mean_sum += mean * columns
        self.outer_sum += outer * columns
        self.std_sum += std * columns
        self.numel += batch
        self.weight += columns

    def merge(self, other: "CorrelationAccumulator") -> None:
        if other.numel == 0:
            return
        if self.mean_sum is None:
            self.mean_sum = torch.zeros_like(other.mean_sum)
            self.outer_sum = torch.zeros_like(other.outer_sum)
            self.std_sum = torch.zeros_like(other.std_sum)
        self.mean_sum += other.mean_sum
        self.outer_sum += other.outer_sum
        self.std_sum += other.std_sum
        self.numel += other.numel
        self.weight += other.weight
        self.nonfinite += other.nonfinite

    def all_reduce(self, group: Any = None) -> None:
        import torch.distributed as dist

        f = self.num_features
        if self.mean_sum is None:
            self.mean_sum = torch.zeros(f, device=self.device)
            self.outer_sum = torch.zeros(f, f, device=self.device)
            self.std_sum = torch.zeros(f, device=self.device)
        counts = torch.tensor([self.numel, self.nonfinite, self.weight], dtype=torch.float64, device=self.device)
        for t in (self.mean_sum, self.outer_sum, self.std_sum, counts):
            dist.all_reduce(t, group=group)
        self.numel, self.nonfinite, self.weight = (int(c) for c in counts.tolist())

    @property
    def num_samples(self) -> int:
        return self.numel

    @property
    def nonfinite_count(self) -> int:
        return self.nonfinite

    def _check(self) -> None:
        if self.numel == 0:
            raise ValueError("no samples have been accumulated: call update() with a non-empty batch first")

    def mean(self) -> torch.Tensor:
        self._check()
        return self.mean_sum / self.weight

    def covariance(self) -> torch.Tensor:
        self._check()
        mean = self.mean_sum / self.weight
        cov = self.outer_sum / self.weight - torch.outer(mean, mean)
        if torch.isnan(cov).any():
            raise ValueError("the covariance has NaN entries")
        return cov

    def correlation(self, eps: float = 1e-7) -> torch.Tensor:
        cov = self.covariance()
        std = torch.sqrt(cov.diagonal().clamp_min(0))
        return cov / torch.clamp(torch.outer(std, std), min=eps)

    def cosine_similarity(self, eps: float = 1e-8) -> torch.Tensor:
        self._check()
        raw = self.outer_sum / self.weight
        norm = raw.diagonal().clamp_min(0).sqrt().clamp_min(eps)
        return raw / torch.outer(norm, norm)

    @property
    def zero_variance_units(self) -> torch.Tensor:
        return torch.nonzero(self.covariance().diagonal() <= 0).flatten()

    def state_dict(self) -> dict:
        return {
            "num_features": self.num_features,
            "numel": self.numel,
            "weight": self.weight,
            "nonfinite": self.nonfinite,
            # copies: update() adds into these tensors in place, a state must not change after it was taken
            "mean_sum": None if self.mean_sum is None else self.mean_sum.clone(),
            "outer_sum": None if self.outer_sum is None else self.outer_sum.clone(),
            "std_sum": None if self.std_sum is None else self.std_sum.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.numel, self.nonfinite = int(state["numel"]), int(state["nonfinite"])
        self.weight = int(state["weight"])
        for key in ("mean_sum", "outer_sum", "std_sum"):
            value = state[key]
            setattr(self, key, None if value is None else value.to(self.device).clone())
