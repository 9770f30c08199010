"""One forward pass that names the module where it fails: :func:`run_named`.

The merge pipeline runs a model once where a failure must be reported by location rather than as a raw torch
error: the merged model at the end of every merge, and a model with the merged widths before the statistics
pass (:mod:`mudsc.methods.widths`). Forward pre-hooks and hooks on every submodule keep the stack of modules
being run; when the forward raises, the innermost module on the stack is the one named (for an error in a
model's own ``forward`` body outside any submodule, the model itself).
"""

from __future__ import annotations

from typing import Any, List

import torch
import torch.nn as nn

__all__ = ["ModelRunError", "run_named"]


class ModelRunError(ValueError):
    """A model failed on a forward pass; ``module`` is the qualified name of the innermost module running."""

    def __init__(self, message: str, module: str):
        super().__init__(message)
        self.module = module


def _as_args(inputs: Any) -> tuple:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def run_named(model: nn.Module, inputs: Any, what: str = "the model") -> Any:
    """``model(*inputs)`` under ``no_grad`` in eval mode (flags restored); on an exception a
    :class:`ModelRunError` saying which module failed and why, with ``what`` naming the model."""
    stack: List[str] = []
    failed: List[str] = []
    handles = []
    for name, module in model.named_modules():
        def enter(mod, args, name=name):
            stack.append(name)

        def leave(mod, args, output):
            stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            try:
                return model(*_as_args(inputs))
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
                failed.append(stack[-1] if stack else "")
                where = f"module {failed[0]!r} ({type(model.get_submodule(failed[0])).__name__})" if failed[0] \
                    else f"the forward of {type(model).__name__} itself"
                raise ModelRunError(f"{what} fails in {where}: {type(exc).__name__}: {exc}", failed[0]) from exc
    finally:
        for h in handles:
            h.remove()
        for m, training in flags.items():
            m.training = training
