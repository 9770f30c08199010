"""Checks of what a user passes to the merge pipeline, made before any heavy work: the models (N >= 2, one
architecture, equal parameter names and shapes), the loader (iterable, not empty) and the numeric arguments.
Every error names the model, parameter or argument at fault."""

from __future__ import annotations

import itertools
import numbers
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn as nn

from .norm import first_input

__all__ = ["check_models", "check_max_batches", "peek", "named_tensors"]


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
    return models


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
