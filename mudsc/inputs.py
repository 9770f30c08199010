"""Checks of what a user passes to the merge pipeline, made before any heavy work: the models (N >= 2, one
architecture, equal parameter names and shapes), the loader (iterable, not empty) and the numeric arguments.
Every error names the model, parameter or argument at fault."""

from __future__ import annotations

import itertools
import numbers
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .norm import first_input

__all__ = ["check_device", "check_finite_weights", "check_models", "check_max_batches", "peek", "named_tensors"]


def check_models(models) -> List[nn.Module]:
    """``models`` as a list of N >= 2 modules of one type with identical parameter/buffer names and shapes."""
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError("models must be a list of at least two nn.Module instances")
    models = list(models)
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{i}] is a {type(m).__name__}, not an nn.Module")
    if len(models) < 2:
        raise ValueError(f"merging needs at least two models, got {len(models)}")
    ref_type = type(models[0])
    ref = _shapes(models[0])
    for i, m in enumerate(models[1:], 1):
        if type(m) is not ref_type:
            raise ValueError(f"model {i} is a {type(m).__name__} but model 0 is a {ref_type.__name__}; merged "
                             "models must share one architecture")
        shapes = _shapes(m)
        for name in ref:
            if name not in shapes:
                raise ValueError(f"model {i} lacks parameter/buffer {name!r} of model 0")
            if shapes[name] != ref[name]:
                raise ValueError(f"parameter {name!r} has shape {shapes[name]} in model {i} but {ref[name]} in "
                                 "model 0")
        extra = [k for k in shapes if k not in ref]
        if extra:
            raise ValueError(f"model {i} has parameter/buffer {extra[0]!r} that model 0 lacks")
    _check_dtypes_and_devices(models)
    return models


def _check_dtypes_and_devices(models: List[nn.Module]) -> None:
    """Every model's tensor ``name`` has model 0's dtype, and every model lives on model 0's one device."""
    ref = named_tensors(models[0])
    ref_devices = sorted({str(t.device) for t in ref.values()})
    for i, m in enumerate(models):
        tensors = named_tensors(m)
        devices = sorted({str(t.device) for t in tensors.values()})
        if len(devices) > 1:
            raise ValueError(f"model {i} spans several devices ({', '.join(devices)}); merging needs each model on "
                             "one device")
        if devices != ref_devices:
            raise ValueError(f"model {i} is on {devices[0]} but model 0 is on {ref_devices[0]}; move the models to "
                             "one device first")
        for name, t in tensors.items():
            if t.dtype != ref[name].dtype:
                raise ValueError(f"parameter/buffer {name!r} is {t.dtype} in model {i} but {ref[name].dtype} in "
                                 "model 0; convert the models to one dtype first (e.g. model.float())")


def _sum_for_scan(t: torch.Tensor) -> torch.Tensor:
    """``|Σ t|`` as a float64 scalar on t's device, summed in t's own dtype (one memory-bound read; float16 and
    bfloat16 in float32, whose range their sums need)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32).abs().double()
    return t.sum().abs().double()


def check_finite_weights(models: Sequence[nn.Module]) -> None:
    """ValueError naming the model and the tensor when a floating-point parameter or buffer holds NaN or ±Inf.

    One read per tensor: its sum is finite only when no entry is NaN or ±Inf (a sum that overflows is cleared by
    the exact per-entry check below), and the sums of a model are read back at once (one
    device synchronisation per model, not one per tensor). Only a tensor whose sum is not finite is scanned entry
    by entry, to count its bad values."""
    for i, m in enumerate(models):
        tensors = [(name, t.detach()) for name, t in named_tensors(m).items()
                   if (t.is_floating_point() or t.is_complex()) and t.numel() > 0]
        if not tensors:
            continue
        sums = [_sum_for_scan(t) for _, t in tensors]
        devices = {x.device for x in sums}
        sums = torch.stack(sums).cpu() if len(devices) == 1 else torch.stack([x.cpu() for x in sums])
        for k in torch.nonzero(~torch.isfinite(sums)).flatten().tolist():
            name, t = tensors[k]
            bad = int(torch.count_nonzero(~torch.isfinite(t)))
            if bad:
                raise ValueError(f"model {i}: parameter/buffer {name!r} of shape {tuple(t.shape)} has {bad} "
                                 "non-finite values (NaN or Inf); merging would spread them into the result")


def check_device(device) -> Optional[torch.device]:
    """``device`` as a ``torch.device`` that exists and works here (None stays None): a tensor is made there and
    copied back, as the statistics pass does (refuses ``meta`` and absent backends); ValueError naming it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device torch knows ({_one_line(exc)})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is usable here (torch.cuda.is_available() is False)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
    try:
        torch.zeros(1, device=dev).cpu()
    except Exception as exc:  # torch raises RuntimeError, AssertionError or NotImplementedError here
        raise ValueError(f"device {device!r} is not usable here ({_one_line(exc)})") from exc
    return dev


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _shapes(model: nn.Module) -> Dict[str, tuple]:
    out = {k: tuple(v.shape) for k, v in model.named_parameters()}
    out.update({k: tuple(v.shape) for k, v in model.named_buffers()})
    return out


def named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{name: tensor}`` of every parameter and buffer of ``model``."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def check_max_batches(max_batches) -> None:
    """None or a positive integer."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, numbers.Integral)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")


def peek(loader) -> Tuple[torch.Tensor, Iterable]:
    """First model input of ``loader`` and an iterable over all of its items (the first one included)."""
    if loader is None:
        raise ValueError("this needs a loader (activation statistics), got loader=None")
    try:
        it = iter(loader)
    except TypeError as exc:
        raise TypeError(f"loader must be iterable (a DataLoader, list of batches, ...), got "
                        f"{type(loader).__name__}") from exc
    sentinel = object()
    first = next(it, sentinel)
    if first is sentinel:
        raise ValueError("the loader yielded no batches")
    return first_input(first), itertools.chain([first], it)
