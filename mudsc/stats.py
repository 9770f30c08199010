"""Streaming activation statistics: the correlation of the units of N models over a data stream.

:class:`CorrelationAccumulator` keeps, for F features (the units of all N models, model-major),

- ``n``: the number of samples seen (every non-channel position of every tensor is a sample: batch, pixels,
  tokens; ALGORITHM.md §2 counts batches instead, which gives the same moments when every batch has the same
  number of positions per sample),
- a fixed per-feature shift ``s`` (the mean of the first batch's first ``fold_samples`` samples, in the
  compute dtype),
- ``sums = Σ (x − s)`` and ``moment = Σ (x − s)(x − s)ᵀ``, both float64.

Why a shift: the original computes ``E[xxᵀ] − μμᵀ`` in float32, which cancels catastrophically for channels
whose mean is large against their spread (post-ReLU, ViT outlier dimensions; mean 1e4 and std 1 leaves no
correct digit). About a shift close to the mean the two terms are small, and ``x − s`` is exact in float32
when x and s are within a factor of two (Sterbenz). The per-batch product ``YᵀY`` runs in float32 through BLAS
(or cuBLAS) over at most ``fold_samples`` samples and is then added to the float64 moment, so float32 rounding
never accumulates across folds. With ``dtype=torch.float64`` the product runs in float64 too.

On CUDA the float32 products run through cuBLAS with an explicit ``precision`` (torch's global TF32 flags do not
apply): ``"ieee"`` (SGEMM, no tensor cores), ``"tf32"`` (one tensor-core product, ~1e-3 relative error per
product: fine for matching, not for the documented 1e-6), or ``"tf32x3"`` (each value split exactly into a TF32
part and a remainder, three tensor-core products: float32-class accuracy). On the CPU every precision is IEEE
float32 (BLAS sgemm).

Symmetry is exploited: features are cut into blocks and only blocks on or above the diagonal are multiplied
(10 of 16 block products for 4 blocks); the finalize step reads the upper triangle.

Memory: ``moment`` is a float64 ``F × F`` matrix (8·F² bytes: 512 MiB for a ViT-L MLP group of two models,
F = 8192), plus one float32 copy of the batch (``L × F``) while an update runs. With ``packed=True`` it is the
packed upper triangle instead (``F(F+1)/2`` values, half the bytes, the same sums: the activation statistics of
:func:`mudsc.collect_stats` on the CPU use it), and ``correlation(dtype=torch.float32)`` writes the float32
matrix straight from it.
"""

from __future__ import annotations

import copy as _copy
import numbers
from typing import Any, Optional, Sequence, Union

import torch

from . import _native
from .backends import choose
from .reference import stats as _reference_stats

__all__ = ["CorrelationAccumulator"]

TensorOrTensors = Union[torch.Tensor, Sequence[torch.Tensor]]

_FORMAT = "mudsc.CorrelationAccumulator/1"

_PRECISIONS = {"ieee": 0, "tf32": 1, "tf32x3": 2}


def _auto_precision(device_type: str, f: int) -> str:
    """precision="auto": IEEE float32, except TF32x3 on CUDA from F = 4096 on (same accuracy class; the threshold
    is where TF32x3 became faster than IEEE on an H100: docs/design.md)."""
    return "tf32x3" if device_type == "cuda" and f >= 4096 else "ieee"


_FLOAT_INPUTS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_pieces(x: TensorOrTensors, channel_dim: Union[int, Sequence[int]]) -> tuple[list[torch.Tensor], list[int]]:
    """The inputs as a list of tensors and one channel dim each; TypeError/ValueError naming the problem."""
    xs = [x] if isinstance(x, torch.Tensor) else list(x)
    if not xs:
        raise ValueError("update() needs at least one tensor")
    for k, t in enumerate(xs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"update() input {k} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_INPUTS:
            raise TypeError(
                f"update() input {k} has dtype {t.dtype}; activations must be float16, bfloat16, float32 or float64"
            )
        if t.dim() < 1:
            raise ValueError(f"update() input {k} is a 0-d tensor; it needs a channel dimension")
    if isinstance(channel_dim, numbers.Integral):
        dims = [int(channel_dim)] * len(xs)
    else:
        dims = [int(d) for d in channel_dim]
        if len(dims) != len(xs):
            raise ValueError(f"got {len(xs)} tensors but {len(dims)} channel dims")
    for k, (t, d) in enumerate(zip(xs, dims)):
        if not -t.dim() <= d < t.dim():
            raise ValueError(f"channel_dim={d} is out of range for input {k} of shape {tuple(t.shape)}")
        dims[k] = d % t.dim()
    return xs, dims


def _default_block_size(f: int, device_type: str = "cpu") -> int:
    """Features per block of the symmetric product: F/4 rounded up to 64, at most 768 (F up to 128: one block);
    on CUDA clamped to [256, 1024], where smaller blocks cost more in launches than they save (the measurements
    behind both rules: docs/design.md)."""
    if f <= 128:
        return f
    quarter = ((f + 3) // 4 + 63) // 64 * 64
    if device_type == "cuda":
        return min(f, max(256, min(1024, quarter)))
    return min(768, quarter)


def _prod(shape, skip: int) -> int:
    p = 1
    for k, s in enumerate(shape):
        if k != skip:
            p *= s
    return p


def _leading_samples(xs: list[torch.Tensor], dims: list[int], samples: int) -> list[torch.Tensor]:
    """Views of the first whole outer indices (first non-channel axis) of every input covering at least
    ``samples`` samples, or the inputs themselves when they hold fewer or split their samples differently.
    The shift only has to lie near the mean, so it is taken from these (cheap) samples."""
    outer, per = set(), set()
    for t, d in zip(xs, dims):
        if t.dim() < 2:
            return xs
        a = 1 if d % t.dim() == 0 else 0
        outer.add(t.shape[a])
        per.add(_prod(t.shape, d) // max(t.shape[a], 1))
    if len(outer) != 1 or len(per) != 1 or 0 in per:
        return xs
    k = -(-samples // per.pop())
    if k >= outer.pop():
        return xs
    return [t.narrow(1 if d % t.dim() == 0 else 0, 0, k) for t, d in zip(xs, dims)]


def _prepare_torch(xs: list[torch.Tensor], dims: list[int], shift: torch.Tensor):
    """The contract of ``mudsc::stats_prepare`` in plain torch ops (sample-major ``Y[L, F]``): the fallback for
    devices without a native kernel, and the readable definition of what the kernel computes."""
    cols = []
    nonfinite = torch.zeros((), dtype=torch.long, device=shift.device)
    for t, d in zip(xs, dims):
        y = t.movedim(d, -1).reshape(-1, t.shape[d]).to(shift.dtype)
        bad = ~torch.isfinite(y)
        nonfinite = nonfinite + bad.sum()
        cols.append(y.masked_fill(bad, 0))
    y = torch.cat(cols, dim=1) - shift
    return y, y.sum(dim=0, dtype=torch.float64), nonfinite


class CorrelationAccumulator:
    """Streaming mean, covariance and Pearson correlation of F features (ALGORITHM.md §2, numerically sound).

    Args:
        num_features: F, the total number of features (``N·C`` for N models of C channels, model-major).
        device: where the statistics live (default: CPU). Inputs must be on this device.
        dtype: ``torch.float32`` (default: float32 products, float64 accumulation) or ``torch.float64``.
        backend: ``"auto"`` | ``"native"`` (the ``mudsc::stats_*`` torch ops) | ``"reference"`` (the original
            formulation from :mod:`mudsc.reference.stats`: per-batch float32 moments, ``E[xxᵀ] − μμᵀ``; kept for
            parity and benchmarks, it loses precision on large-mean channels).
        block_size: features per block of the symmetric product (default: F/4 rounded up to a multiple of 64,
            at most 768; one block for F up to 128).
        fold_samples: samples per float32 product before it is added to the float64 moment (default 8192).
        precision: how float32 products are formed on CUDA: ``"auto"`` (default: ``"tf32x3"`` from F = 4096 on,
            ``"ieee"`` below), ``"ieee"``, ``"tf32"`` or ``"tf32x3"`` (module docstring). The CPU always runs IEEE
            sgemm.
        packed: keep the moment as its packed upper triangle (half the bytes, identical results; native backend
            only). Meant for the CPU: elsewhere the fold runs one small add per feature row.

    Example::

        acc = CorrelationAccumulator(2 * 64)
        for images in loader:
            acc.update([feat_a(images), feat_b(images)], channel_dim=1)   # two [B, 64, H, W] tensors
        corr = acc.correlation()                                          # Tensor[128, 128]
    """

    def __init__(
        self,
        num_features: int,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        block_size: Optional[int] = None,
        fold_samples: Optional[int] = None,
        precision: str = "auto",
        packed: bool = False,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_features = int(num_features)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.backend = choose("CorrelationAccumulator", backend, needs="ops")
        self._reference: Optional[_reference_stats.CorrelationAccumulator] = None
        if self.backend == "reference":
            self._reference = _reference_stats.CorrelationAccumulator(num_features, device=self.device)
        f = self.num_features
        self.block_size = int(block_size) if block_size else _default_block_size(f, self.device.type)
        self.fold_samples = int(fold_samples) if fold_samples else 8192
        if precision != "auto" and precision not in _PRECISIONS:
            raise ValueError(f"precision must be 'auto', 'ieee', 'tf32' or 'tf32x3', got {precision!r}")
        self.precision = _auto_precision(self.device.type, f) if precision == "auto" else precision
        self._use_op = self.backend == "native" and self.device.type in ("cpu", "cuda")
        if packed and not self._use_op:
            raise ValueError(f"packed=True needs the native statistics ops on a CPU or CUDA device "
                             f"(backend {self.backend!r}, device {self.device})")
        self.packed = bool(packed)
        shape = (f * (f + 1) // 2,) if self.packed else (f, f)
        self._moment = torch.zeros(shape, dtype=torch.float64, device=self.device) if self._reference is None else None
        self._sums = torch.zeros(f, dtype=torch.float64, device=self.device) if self._reference is None else None
        self._shift: Optional[torch.Tensor] = None
        self._count = 0
        self._reference_positions = 0  # the reference's num_samples counts batch rows; positions counted here
        self._nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        self._final: Optional[tuple] = None

    # ------------------------------------------------------------------ accumulation

    def update(self, x: TensorOrTensors, channel_dim: Union[int, Sequence[int]] = -1) -> "CorrelationAccumulator":
        """Add a batch of samples.

        Args:
            x: ``Tensor[..., C, ...]`` or a sequence of such tensors (one per model, features concatenated in
                order). Every axis except ``channel_dim`` enumerates samples (row-major), and all tensors must
                enumerate the same number of samples in the same order. Read in place, in any layout
                (``[B, C, H, W]`` with ``channel_dim=1``, ``[B, T, C]`` with ``channel_dim=-1``); float16,
                bfloat16, float32 or float64. NaN and ±Inf are counted (:attr:`nonfinite_count`) and replaced by 0
                as in the original.
            channel_dim: the channel axis, one for all tensors or one per tensor.
        """
        xs, dims = _as_pieces(x, channel_dim)
        total = sum(t.shape[d] for t, d in zip(xs, dims))
        if total != self.num_features:
            shapes = ", ".join(f"{tuple(t.shape)} (channel dim {d})" for t, d in zip(xs, dims))
            raise ValueError(f"the accumulator has {self.num_features} features but the inputs have {total}: {shapes}")
        for k, t in enumerate(xs):
            if t.device != self.device and not (self.device.type == t.device.type and self.device.index is None):
                raise ValueError(f"update() input {k} is on {t.device} but the accumulator is on {self.device}")
        counts = [_prod(t.shape, d) for t, d in zip(xs, dims)]
        if len(set(counts)) > 1:
            shapes = ", ".join(f"{tuple(t.shape)}" for t in xs)
            raise ValueError(f"the inputs enumerate different numbers of samples ({counts}); shapes {shapes}")
        if self._reference is not None:
            self._reference.update(xs, dims)
            self._reference_positions += counts[0]
            return self
        n = counts[0]
        if n == 0:
            return self
        self._final = None
        if self._shift is None:
            zero = torch.zeros(self.num_features, dtype=self.dtype, device=self.device)
            head = _leading_samples(xs, dims, self.fold_samples)
            _, sums, _ = self._prepare(head, dims, zero)
            self._shift = (sums / _prod(head[0].shape, dims[0])).to(self.dtype)
        if self._use_op:
            nonfinite = torch.ops.mudsc.stats_update_(
                self._moment, self._sums, xs, dims, self._shift, self.block_size, self.fold_samples,
                _PRECISIONS[self.precision],
            )
        else:
            y, sums, nonfinite = _prepare_torch(xs, dims, self._shift)
            self._sums += sums
            for l0 in range(0, n, self.fold_samples):
                part = y[l0 : l0 + self.fold_samples]
                self._moment += part.T @ part
        self._nonfinite += nonfinite
        self._count += n
        return self

    def _prepare(self, xs, dims, shift):
        if self._use_op:
            return torch.ops.mudsc.stats_prepare(xs, dims, shift, False)
        return _prepare_torch(xs, dims, shift)

    def _rebased(self, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(moment [F, F], sums) about ``shift`` instead of this accumulator's shift (exact algebra in float64):
        with δ = s_old − s_new, Σ(x−s_new)(x−s_new)ᵀ = M + Σδᵀ + δΣᵀ + n δδᵀ and Σ(x−s_new) = Σ + n δ."""
        delta = self._shift.to(torch.float64) - shift.to(torch.float64)
        n = float(self._count)
        moment = self._full() + torch.outer(self._sums, delta) + torch.outer(delta, self._sums + n * delta)
        return moment, self._sums + n * delta

    def _full(self) -> torch.Tensor:
        """The moment as an ``[F, F]`` matrix whose upper triangle is defined (a new one when packed)."""
        if not self.packed:
            return self._moment
        f = self.num_features
        full = torch.zeros(f, f, dtype=torch.float64, device=self.device)
        for i, start in enumerate(_packed_rows(f)):
            full[i, i:] = self._moment[start : start + f - i]
        return full

    def _in_layout(self, moment: torch.Tensor) -> torch.Tensor:
        """An ``[F, F]`` moment (upper triangle read) in this accumulator's layout, on its device."""
        moment = moment.to(self.device, torch.float64)
        if not self.packed:
            return moment
        f = self.num_features
        out = torch.empty(f * (f + 1) // 2, dtype=torch.float64, device=self.device)
        for i, start in enumerate(_packed_rows(f)):
            out[start : start + f - i] = moment[i, i:]
        return out

    def _moment_of(self, other: "CorrelationAccumulator") -> torch.Tensor:
        """``other``'s moment (same shift) in this accumulator's layout."""
        if other.packed == self.packed:
            return other._moment.to(self.device)
        return self._in_layout(other._full())

    def merge(self, other: "CorrelationAccumulator") -> "CorrelationAccumulator":
        """Add the statistics of ``other`` (same features, device and backend) to this one; returns self."""
        if not isinstance(other, CorrelationAccumulator):
            raise TypeError(f"can only merge another CorrelationAccumulator, got {type(other).__name__}")
        if other.num_features != self.num_features:
            raise ValueError(f"cannot merge {other.num_features} features into {self.num_features}")
        if (self._reference is None) != (other._reference is None):
            raise ValueError(f"cannot merge a {other.backend!r} accumulator into a {self.backend!r} one")
        if self._reference is not None:
            self._reference.merge(other._reference)
            self._reference_positions += other._reference_positions
            return self
        if other._count == 0:
            return self
        self._final = None
        if self._count == 0:
            self._shift = other._shift.to(self.device, self.dtype).clone()
        if other._shift.device == self._shift.device and torch.equal(other._shift, self._shift):
            self._moment += self._moment_of(other)  # same shift: the sums add as they are
            self._sums += other._sums
        else:
            moment, sums = other._rebased(self._shift.to(other.device))
            self._moment += self._in_layout(moment)
            self._sums += sums.to(self.device)
        self._count += other._count
        self._nonfinite += other._nonfinite.to(self.device)
        return self

    def all_reduce(self, group: Any = None) -> "CorrelationAccumulator":
        """Sum the statistics of all ranks of ``group`` (``torch.distributed``, gloo or NCCL); every rank ends
        with the global statistics. The ranks first agree on one shift (the global mean), re-express their sums
        about it, then add with ``all_reduce(SUM)``: the result does not depend on which rank saw which batch
        beyond float64 rounding, and is identical on every rank."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("all_reduce() needs an initialized torch.distributed process group")
        if self._reference is not None:
            self._reference.all_reduce(group)
            positions = torch.tensor([self._reference_positions], dtype=torch.int64, device=self.device)
            dist.all_reduce(positions, group=group)
            self._reference_positions = int(positions.item())
            return self
        self._final = None
        f = self.num_features
        # Global mean in float64: Σ_r (n_r·s_r + sums_r) / Σ_r n_r.
        head = torch.zeros(f + 1, dtype=torch.float64, device=self.device)
        if self._count:
            head[:f] = self._sums + self._count * self._shift.to(torch.float64)
            head[f] = self._count
        dist.all_reduce(head, group=group)
        total = int(round(head[f].item()))
        if total == 0:
            return self
        common = (head[:f] / total).to(self.dtype)
        if self._count:
            moment, sums = self._rebased(common)
            moment = self._in_layout(moment)
        else:
            moment = torch.zeros_like(self._moment)
            sums = torch.zeros_like(self._sums)
        nonfinite = self._nonfinite.clone()
        dist.all_reduce(moment, group=group)
        dist.all_reduce(sums, group=group)
        dist.all_reduce(nonfinite, group=group)
        self._moment, self._sums, self._nonfinite = moment, sums, nonfinite
        self._shift, self._count = common, total
        return self

    def copy(self) -> "CorrelationAccumulator":
        """An independent accumulator with the same statistics (tensors cloned; later updates of either one do
        not reach the other)."""
        out = _copy.copy(self)
        if self._reference is not None:
            out._reference = _copy.deepcopy(self._reference)
            return out
        out._moment = self._moment.clone()
        out._sums = self._sums.clone()
        out._nonfinite = self._nonfinite.clone()
        return out

    def subtract(self, other: "CorrelationAccumulator") -> "CorrelationAccumulator":
        """Remove the samples that ``other`` accumulated (they must be among this one's: the inverse of
        :meth:`merge`, exact in float64 up to rounding); returns self. Native backend only."""
        if not isinstance(other, CorrelationAccumulator):
            raise TypeError(f"can only subtract another CorrelationAccumulator, got {type(other).__name__}")
        if other.num_features != self.num_features:
            raise ValueError(f"cannot subtract {other.num_features} features from {self.num_features}")
        if self._reference is not None or other._reference is not None:
            raise ValueError("subtract() needs native accumulators (the reference keeps per-batch float32 moments)")
        if other._count == 0:
            return self
        if other._count > self._count:
            raise ValueError(f"cannot subtract {other._count} samples from an accumulator of {self._count}")
        self._final = None
        if other._shift.device == self._shift.device and torch.equal(other._shift, self._shift):
            self._moment -= self._moment_of(other)
            self._sums -= other._sums
        else:
            moment, sums = other._rebased(self._shift.to(other.device))
            self._moment -= self._in_layout(moment)
            self._sums -= sums.to(self.device)
        self._count -= other._count
        self._nonfinite -= other._nonfinite.to(self.device)
        return self

    def reshift(self, shift: torch.Tensor) -> "CorrelationAccumulator":
        """Keep the sums about ``shift`` (``Tensor[F]``) from now on: the accumulated ones are re-expressed about
        it (exact algebra in float64). Accumulators with one shift add and subtract without rebasing, which is
        what a family of accumulators over parts of one sample set wants; an empty accumulator just adopts it.
        Returns self. Native backend only."""
        if self._reference is not None:
            raise ValueError("reshift() needs a native accumulator")
        shift = torch.as_tensor(shift)
        if shift.shape != (self.num_features,):
            raise ValueError(f"shift must be [{self.num_features}], got {tuple(shift.shape)}")
        shift = shift.to(self.device, self.dtype)
        if self._count:
            moment, self._sums = self._rebased(shift)
            self._moment = self._in_layout(moment)
            self._final = None
        self._shift = shift
        return self

    # ------------------------------------------------------------------ results

    @property
    def num_samples(self) -> int:
        """Samples accumulated (every non-channel position counts; the reference counts batch rows)."""
        return self._reference.num_samples if self._reference is not None else self._count

    @property
    def num_positions(self) -> int:
        """Sample positions fed so far: every non-channel position, on both backends (what :attr:`num_samples`
        counts natively; the reference's counts batch rows)."""
        return self._reference_positions if self._reference is not None else self._count

    @property
    def nonfinite_count(self) -> int:
        """How many NaN/±Inf input values were replaced by 0."""
        if self._reference is not None:
            return self._reference.nonfinite_count
        return int(self._nonfinite.item())

    def _finalize(self, eps: float) -> tuple:
        if self._count == 0:
            raise ValueError("no samples have been accumulated: call update() with a non-empty batch first")
        if self._final is None or self._final[0] != eps:
            if self._use_op:
                out = torch.ops.mudsc.stats_finalize(self._moment, self._sums, self._shift, self._count, eps)
            else:
                out = _finalize_torch(self._moment, self._sums, self._shift, self._count, eps)
            self._final = (eps, *out)
        return self._final[1:]

    def mean(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Tensor[F]``: the per-feature mean (``dtype`` defaults to the accumulator's)."""
        if self._reference is not None:
            return self._reference.mean().to(dtype or self.dtype)
        return self._finalize(1e-7)[0].to(dtype or self.dtype)

    def covariance(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Tensor[F, F]``: the population covariance (divided by n, as the original)."""
        if self._reference is not None:
            return self._reference.covariance().to(dtype or self.dtype)
        return self._finalize(1e-7)[1].to(dtype or self.dtype)

    def correlation(self, eps: float = 1e-7, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Tensor[F, F]``: ``cov / max(σσᵀ, eps)``; a zero-variance unit (see :attr:`zero_variance_units`) gets
        0 off the diagonal and 1 on it."""
        if self._reference is not None:
            return self._reference.correlation(eps).to(dtype or self.dtype)
        if dtype == torch.float32 and self._use_op and (self._final is None or self._final[0] != float(eps)):
            if self._count == 0:
                raise ValueError("no samples have been accumulated: call update() with a non-empty batch first")
            # Written once in float32, without the float64 matrices of _finalize (same values: one rounding).
            return torch.ops.mudsc.stats_correlation(self._moment, self._sums, self._shift, self._count, float(eps))[0]
        return self._finalize(float(eps))[2].to(dtype or self.dtype)

    def cosine_similarity(self, eps: float = 1e-8, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Tensor[F, F]``: ``⟨x_i, x_j⟩ / (max(‖x_i‖, eps)·max(‖x_j‖, eps))`` over the samples (uncentred)."""
        if self._reference is not None:
            return self._reference.cosine_similarity(eps).to(dtype or self.dtype)
        if self._count == 0:
            raise ValueError("no samples have been accumulated: call update() with a non-empty batch first")
        m = _symmetric(self._full())
        s = self._shift.to(torch.float64)
        raw = m + torch.outer(self._sums, s) + torch.outer(s, self._sums + self._count * s)
        norm = raw.diagonal().clamp_min(0).sqrt().clamp_min(eps)
        return (raw / torch.outer(norm, norm)).to(dtype or self.dtype)

    def variances(self) -> torch.Tensor:
        """``Tensor[F]`` float64: the population variance of every feature, the diagonal of :meth:`covariance`
        (zero-variance units exactly 0) without forming the ``F × F`` matrices: O(F)."""
        if self._reference is not None:
            return self._reference.covariance().diagonal().to(torch.float64)
        if self._count == 0:
            raise ValueError("no samples have been accumulated: call update() with a non-empty batch first")
        if self._final is not None:
            return self._final[2].diagonal().to(torch.float64)
        n = float(self._count)
        diagonal = self._moment[_packed_diagonal(self.num_features, self.device)] if self.packed else self._moment.diagonal()
        second = diagonal.to(torch.float64) / n
        d = self._sums.to(torch.float64) / n
        raw = second - d * d
        return raw.clamp_min(0).masked_fill(raw <= second * 1e-13, 0)

    def clear_cache(self) -> "CorrelationAccumulator":
        """Free the finalised matrices (mean, float64 covariance and correlation: ``2·8·F²`` bytes) that the
        result methods keep for repeated calls; the accumulated state stays, so they can be recomputed."""
        self._final = None
        return self

    @property
    def zero_variance_units(self) -> torch.Tensor:
        """``LongTensor[k]``: features with zero variance (constant over every sample seen)."""
        if self._reference is not None:
            return self._reference.zero_variance_units
        return torch.nonzero(self._finalize(1e-7)[3]).flatten()

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """Everything needed to resume: plain tensors and numbers (``torch.save``-able)."""
        if self._reference is not None:
            return {"format": _FORMAT, "backend": "reference", **self._reference.state_dict()}
        return {
            "format": _FORMAT,
            "backend": self.backend,
            "num_features": self.num_features,
            "dtype": str(self.dtype).replace("torch.", ""),
            "count": self._count,
            "shift": None if self._shift is None else self._shift.clone(),
            "moment": self._full().clone(),  # [F, F] whatever the layout
            "sums": self._sums.clone(),
            "nonfinite": int(self._nonfinite.item()),
        }

    def load_state_dict(self, state: dict) -> "CorrelationAccumulator":
        """Restore :meth:`state_dict` output (onto this accumulator's device); ValueError on a mismatch."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"not a CorrelationAccumulator state (expected format {_FORMAT!r})")
        if (state.get("backend") == "reference") != (self._reference is not None):
            raise ValueError(f"state was saved by a {state.get('backend')!r} accumulator, this one is {self.backend!r}")
        if state["num_features"] != self.num_features:
            raise ValueError(f"state has {state['num_features']} features, this accumulator {self.num_features}")
        if self._reference is not None:
            self._reference.load_state_dict(state)
            return self
        self._final = None
        self._count = int(state["count"])
        self._moment = self._in_layout(state["moment"]).clone()
        self._sums = state["sums"].to(self.device, torch.float64).clone()
        self._shift = None
        if state["shift"] is not None:
            # The saved moments are about the saved shift; a float64 shift loaded into a float32 accumulator is
            # rounded, so re-express them about the rounded shift (exact algebra, see _rebased).
            self._shift = state["shift"].to(self.device, torch.float64)
            shift = self._shift.to(self.dtype)
            if self._count:
                moment, self._sums = self._rebased(shift)
                self._moment = self._in_layout(moment)
            self._shift = shift
        self._nonfinite = torch.tensor(int(state["nonfinite"]), dtype=torch.long, device=self.device)
        return self

    def __repr__(self) -> str:
        return (
            f"CorrelationAccumulator(num_features={self.num_features}, samples={self.num_samples}, "
            f"device={self.device}, dtype={self.dtype}, backend={self.backend!r})"
        )


def _packed_rows(f: int) -> list:
    """Where each row of the packed upper triangle of an ``f × f`` matrix starts (row i holds columns i..f−1)."""
    return [i * f - i * (i - 1) // 2 for i in range(f)]


def _packed_diagonal(f: int, device: torch.device) -> torch.Tensor:
    """Indices of the diagonal entries in the packed upper triangle of an ``f × f`` matrix."""
    i = torch.arange(f, dtype=torch.long, device=device)
    return i * f - i * (i - 1) // 2


def _symmetric(moment: torch.Tensor) -> torch.Tensor:
    """The full matrix from the upper triangle (the only part ``stats_update_`` writes)."""
    return torch.triu(moment) + torch.triu(moment, 1).T


def _finalize_torch(moment, sums, shift, count, eps):
    """``mudsc::stats_finalize`` in plain torch ops (fallback for devices without the native library)."""
    n = float(count)
    second = _symmetric(moment) / n
    d = sums / n
    mean = shift.to(torch.float64) + d
    cov = second - torch.outer(d, d)
    raw_var = cov.diagonal().clone()
    zero = raw_var <= second.diagonal() * 1e-13
    var = raw_var.clamp_min(0).masked_fill(zero, 0)
    cov.diagonal().copy_(var)
    sigma = var.sqrt()
    corr = cov / torch.outer(sigma, sigma).clamp_min(eps)
    dead = zero[:, None] | zero[None, :]
    corr.masked_fill_(dead, 0)
    corr.diagonal().masked_fill_(zero, 1)
    return mean, cov, corr, zero
