"""Fake (meta) kernels of the ``mudsc`` torch ops, for FakeTensor, ``torch.compile`` and ``torch.export``.

Imported by :mod:`mudsc._native` only after ``mudsc._C`` loaded (the ops must exist to take a fake); the
C++ library names this module with ``m.set_python_module("mudsc._ops")`` (csrc/ops/ops.cpp), so torch
knows where the fakes of its C++-defined ops live. Each fake returns tensors with exactly the sizes,
strides, dtypes and devices the CPU and CUDA kernels return (csrc/ops/cpu/*_cpu.cpp, csrc/ops/cuda/*_cuda.cu,
csrc/ops/stats.cpp) and checks what the kernels check about shapes and dtypes; values are never read.

``mudsc::build_info() -> str`` takes no tensor and returns a string, so no fake tensor ever reaches it:
it needs no fake kernel.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.library import register_fake

__all__: list[str] = []

_STATS_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _channel_axis(dim: int, ndim: int, what: str) -> int:
    """``dim`` as a non-negative axis of a tensor with ``ndim`` axes (the kernels' range check)."""
    c = dim + ndim if dim < 0 else dim
    torch._check(0 <= c < ndim, lambda: f"{what}: dim {dim} is out of range for a {ndim}-d tensor")
    return c


def _stats_num_samples(xs: Sequence[torch.Tensor], channel_dims: Sequence[int], shift: torch.Tensor) -> int:
    """L, the samples every input enumerates along its non-channel axes (csrc/ops/stats_layout.hpp).

    Checks what ``stats_pieces`` checks: matching counts, devices, floating inputs, equal L for every input,
    and C_0 + C_1 + ... == F = shift.shape[0].
    """
    torch._check(len(xs) > 0, lambda: "stats_prepare: expected at least one input tensor")
    torch._check(
        len(xs) == len(channel_dims),
        lambda: f"stats_prepare: got {len(xs)} inputs but {len(channel_dims)} channel dims",
    )
    torch._check(shift.dim() == 1, lambda: f"stats_prepare: shift must be [features], got {tuple(shift.shape)}")
    torch._check(
        shift.dtype in _FLOAT_DTYPES, lambda: f"stats_prepare: shift must be float32 or float64, got {shift.dtype}"
    )
    features = 0
    num_samples = None
    for k, (x, dim) in enumerate(zip(xs, channel_dims)):
        torch._check(
            x.device == shift.device, lambda: f"stats_prepare: input {k} is on {x.device}, shift on {shift.device}"
        )
        torch._check(
            x.dtype in _STATS_INPUT_DTYPES,
            lambda: f"stats_prepare: input {k} must be float16/bfloat16/float32/float64, got {x.dtype}",
        )
        torch._check(x.dim() >= 1, lambda: f"stats_prepare: input {k} must have a channel dimension")
        c = _channel_axis(dim, x.dim(), "stats_prepare")
        samples = 1
        for d in range(x.dim()):
            if d != c:
                samples = samples * x.shape[d]
        features = features + x.shape[c]
        if num_samples is None:
            num_samples = samples
        else:
            torch._check(
                samples == num_samples,
                lambda: f"stats_prepare: input {k} has {samples} samples along its non-channel axes, "
                f"input 0 has {num_samples}",
            )
    torch._check(
        features == shift.shape[0],
        lambda: f"stats_prepare: the inputs have {features} features in all, the accumulator has {shift.shape[0]}",
    )
    return num_samples


@register_fake("mudsc::affine_selftest")
def _affine_selftest_fake(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """Tensor of x's shape and dtype, laid out as the kernels' ``empty_like(x.contiguous())``."""
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"affine_selftest: x must be float32 or float64, got {x.dtype}")
    return torch.empty_like(x.contiguous())


@register_fake("mudsc::stats_prepare")
def _stats_prepare_fake(
    xs: Sequence[torch.Tensor], channel_dims: Sequence[int], shift: torch.Tensor, feature_major: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Y: shift's dtype, contiguous [F, L] if feature_major else [L, F]; sums: float64 [F]; count: int64 [])."""
    num_samples = _stats_num_samples(xs, channel_dims, shift)
    f = shift.shape[0]
    y = shift.new_empty((f, num_samples) if feature_major else (num_samples, f))
    sums = shift.new_empty((f,), dtype=torch.float64)
    count = shift.new_empty((), dtype=torch.int64)
    return y, sums, count


@register_fake("mudsc::stats_update_")
def _stats_update_fake(
    moment: torch.Tensor,
    sums: torch.Tensor,
    xs: Sequence[torch.Tensor],
    channel_dims: Sequence[int],
    shift: torch.Tensor,
    block_size: int,
    fold_samples: int,
    precision: int = 0,
) -> torch.Tensor:
    """The int64 [] count of NaN/Inf inputs, on shift's device; moment and sums are updated in place."""
    torch._check(len(xs) > 0, lambda: "stats_update_: expected at least one input tensor")
    torch._check(0 <= precision <= 2, lambda: f"stats_update_: precision must be 0, 1 or 2, got {precision}")
    f = shift.shape[0]
    torch._check(
        moment.dtype == torch.float64 and (_is_packed(moment, f) or _is_square(moment, f)),
        lambda: f"stats_update_: moment must be float64 [{f}, {f}] or packed [{f * (f + 1) // 2}], "
        f"got {moment.dtype} {tuple(moment.shape)}",
    )
    torch._check(
        sums.dtype == torch.float64 and sums.dim() == 1 and sums.shape[0] == f,
        lambda: f"stats_update_: sums must be float64 [{f}], got {sums.dtype} {tuple(sums.shape)}",
    )
    torch._check(
        moment.device == shift.device and sums.device == shift.device,
        lambda: "stats_update_: moment, sums and shift must share a device",
    )
    _stats_num_samples(xs, channel_dims, shift)
    return shift.new_empty((), dtype=torch.int64)


def _is_packed(moment: torch.Tensor, f: int) -> bool:
    """A packed upper triangle of an [f, f] moment (stats.cpp)."""
    return moment.dim() == 1 and moment.shape[0] == f * (f + 1) // 2


def _is_square(moment: torch.Tensor, f: int) -> bool:
    return moment.dim() == 2 and moment.shape[0] == f and moment.shape[1] == f


def _check_finalize(op: str, moment: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor, count: int) -> int:
    torch._check(count > 0, lambda: f"{op}: no samples were accumulated")
    f = shift.shape[0]
    torch._check(
        (_is_packed(moment, f) or _is_square(moment, f)) and sums.numel() == f,
        lambda: f"{op}: moment [{f}, {f}] or packed [{f * (f + 1) // 2}] and sums [{f}] expected, "
        f"got {tuple(moment.shape)} and {tuple(sums.shape)}",
    )
    return f


@register_fake("mudsc::stats_correlation")
def _stats_correlation_fake(
    moment: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor, count: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(corr: float32 [F, F], variance: float64 [F], zero_variance: bool [F]), contiguous."""
    f = _check_finalize("stats_correlation", moment, sums, shift, count)
    corr = moment.new_empty((f, f), dtype=torch.float32)
    variance = moment.new_empty((f,), dtype=torch.float64)
    zero_variance = moment.new_empty((f,), dtype=torch.bool)
    return corr, variance, zero_variance


@register_fake("mudsc::stats_finalize")
def _stats_finalize_fake(
    moment: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor, count: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean: float64 [F], cov: float64 [F, F], corr: float64 [F, F], zero_variance: bool [F]), contiguous."""
    f = _check_finalize("stats_finalize", moment, sums, shift, count)
    mean = moment.new_empty((f,), dtype=torch.float64)
    cov = moment.new_empty((f, f), dtype=torch.float64)
    corr = moment.new_empty((f, f), dtype=torch.float64)
    zero_variance = moment.new_empty((f,), dtype=torch.bool)
    return mean, cov, corr, zero_variance


@register_fake("mudsc::axis_segment_sum")
def _axis_segment_sum_fake(
    t: torch.Tensor, axis: int, labels: torch.Tensor, size: int, scale: Optional[torch.Tensor]
) -> torch.Tensor:
    """Contiguous tensor of t's dtype and shape with ``axis`` resized to ``size``."""
    torch._check(t.dim() >= 1, lambda: "axis_segment_sum: expected a tensor with at least one dimension")
    ax = _channel_axis(axis, t.dim(), "axis_segment_sum")
    torch._check(t.dtype in _FLOAT_DTYPES, lambda: f"axis_segment_sum: expected float32 or float64, got {t.dtype}")
    m = t.shape[ax]
    torch._check(
        labels.dim() == 1 and labels.numel() == m and labels.dtype == torch.int64,
        lambda: f"axis_segment_sum: labels must be int64 [{m}], got {labels.dtype} {tuple(labels.shape)}",
    )
    torch._check(size >= 0, lambda: "axis_segment_sum: size must be non-negative")
    if scale is not None:
        torch._check(
            scale.dim() == 1 and scale.numel() == size,
            lambda: f"axis_segment_sum: scale must be [{size}], got {tuple(scale.shape)}",
        )
    shape = list(t.shape)
    shape[ax] = size
    return t.new_empty(shape)
