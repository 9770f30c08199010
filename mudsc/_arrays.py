"""Input normalisation shared by the solvers: numpy arrays and torch tensors in, float32/float64 out.

Returned arrays keep their memory when it is already usable by the native core (float32/float64 with a unit
stride on one matrix axis); anything else is copied once. Errors name the argument, the problem and the shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_torch_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    torch = __import__("sys").modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view (or copy) of ``x``; torch tensors on any device are brought to the host."""
    if is_torch_tensor(x):
        torch = _torch()
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype.is_complex:
            raise ValueError(f"{name} must be real-valued, got a complex tensor of shape {tuple(t.shape)}")
        if t.dtype.is_floating_point:
            if t.dtype not in (torch.float32, torch.float64):
                t = t.to(torch.float32)  # float16, bfloat16, float8 variants
        else:
            try:  # integers of any width and signedness, and bool
                t = t.to(torch.float64)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"{name} must be numeric, got dtype {t.dtype} with shape {tuple(t.shape)}") from exc
        return t.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} could not be read as an array: {exc}") from None


def _torch():
    import torch

    return torch


_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_cost_array(x: Any, name: str = "cost", ndim: int = 2) -> np.ndarray:
    """``x`` as a float32/float64 numpy array of ``ndim`` dimensions, as the native core reads it.

    Integer and boolean inputs become float64 (as in scipy); float16 becomes float32. Raises ``ValueError``
    for another number of dimensions, complex, object or string dtypes.
    """
    if type(x) is np.ndarray and x.ndim == ndim and x.dtype in _NATIVE_DTYPES and x.flags.c_contiguous:
        return x  # the common case, without further checks
    a = to_numpy(x, name)
    if a.ndim != ndim:
        want = "[rows, cols]" if ndim == 2 else "[batch, rows, cols]"
        raise ValueError(f"{name} must be a {ndim}-D array {want}, got shape {a.shape}")
    kind = a.dtype.kind
    if kind == "c":
        raise ValueError(f"{name} must be real-valued, got complex dtype {a.dtype} with shape {a.shape}")
    if kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype} with shape {a.shape}")
    if a.dtype == np.float16:
        a = a.astype(np.float32)
    elif kind != "f" or a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if not _native_layout(a):
        a = np.ascontiguousarray(a)
    return a


def _native_layout(a: np.ndarray) -> bool:
    """Unit, non-negative strides on one of the two matrix axes and positive elsewhere."""
    if a.size == 0:
        return True
    item = a.itemsize
    s = a.strides
    if any(st < 0 for st in s):
        return False
    rows_ok = s[-1] == item
    cols_ok = s[-2] == item
    return rows_ok or cols_ok if a.ndim == 2 else rows_ok


def check_finite_for_reference(a: np.ndarray, maximize: bool, name: str = "cost") -> None:
    """The native core's value checks, for the reference path: NaN and the unbounded infinity are errors."""
    if np.isnan(a).any():
        raise ValueError(f"{name} matrix of shape {_shape(a)} contains NaN")
    bad = np.inf if maximize else -np.inf
    if (a == bad).any():
        sign = "+inf" if maximize else "-inf"
        forbidden = "-inf when maximizing" if maximize else "+inf when minimizing"
        raise ValueError(
            f"{name} matrix of shape {_shape(a)} contains {sign}, which makes the objective unbounded "
            f"(forbidden entries are {forbidden})"
        )


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(d) for d in a.shape) + ")"
