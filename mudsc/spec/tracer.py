"""``trace(model, example_inputs)``: discover a model's permutation spec with torch.fx.

Method. The model is symbolically traced (``torch.fx``) in eval mode, so that ``if self.training:`` branches
(stochastic depth, dropout written by hand) are recorded as at inference, and the graph is run once on
``example_inputs`` by an interpreter that, next to every real value, carries a description of each tensor axis (a
*dim* of factors, see ``factors.py``): which channel index space it holds, possibly split into blocks (heads) or
fused slices. Handlers per op state the constraints (a ``Linear`` identifies its weight's column space with the
input's last axis and creates a new space for its rows; ``add`` identifies the axes of its operands; a reshape
splits or joins factors using the concrete shapes; ``unbind`` of a fused ``qkv`` partitions its row space;
``q @ kᵀ`` identifies the head-dim spaces of q and k and ties their head digits...). Model inputs and outputs fix
whatever they touch. At the end every non-fixed leaf space becomes a :class:`~mudsc.spec.data.Group`;
parameters/buffers whose axes hold that space become its members. A tensor reached under several names (tied
weights) is one tensor under the model's first name for it, so its axes carry the constraints of every use
(``state.py``).

Layout. This module is the interpreter loop: per fx node it builds a :class:`~mudsc.spec.state.Call` (real
arguments and result, and the same arguments as tensor infos) and hands it to
:func:`~mudsc.spec.handlers.handle_node`, which dispatches through the op registries of ``handlers/`` and records
constraints in a :class:`~mudsc.spec.state.TraceState` (over the union-find of ``spaces.py``). ``resolve.py``
turns the finished state into a :class:`~mudsc.spec.data.PermSpec`, choosing taps with ``taps.py``.

Unsupported constructs (an op without a handler, a reshape that mixes channels, grouped convolutions with
``1 < groups < channels`` that would need within-group structure) raise :class:`SpecTraceError` naming the fx
node with ``strict=True``; with ``strict=False`` the channels they touch are fixed (their groups are dropped) and
a warning names the node. A model torch.fx cannot trace at all (data-dependent control flow such as
``if x.sum() > 0:``) raises :class:`SpecTraceError` naming the line of the model's code where tracing stopped and
the ways around it (a hand-written spec among them). Every traced spec is then verified by
:func:`mudsc.spec.check.check_spec` unless ``check=False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import traceback
import warnings
from typing import Any, Dict, Iterator, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_arg

from .check import check_spec
from .data import PermSpec
from .factors import Unsupported, UnsupportedPart
from .handlers import handle_node
from .resolve import build_spec
from .spaces import SpaceError
from .state import Call, SpecTraceError, TraceState, is_tensor
from .traceable import SpecTracer

__all__ = ["SpecTraceError", "trace"]


class _SpecInterpreter(fx.Interpreter):
    """Runs the traced graph and, next to every value, its tensor info (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, strict: bool, root: Optional[nn.Module] = None):
        super().__init__(gm)
        self.strict = strict
        self.state = TraceState(gm, root)
        self.info: Dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        """Run node ``n`` and record its result's tensor info (or the unsupported construct)."""
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = getattr(self, n.op)(n.target, args, kwargs)
        self.state.node = n
        iargs = map_arg(n.args, lambda a: self.info[a])
        ikwargs = map_arg(n.kwargs, lambda a: self.info[a])
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        call = Call(n, args, kwargs, iargs, ikwargs, result, module)
        try:
            self.info[n] = handle_node(self.state, call)
        except UnsupportedPart as e:
            self.info[n] = self._unsupported(call, str(e), e.touched, e.result)
        except (Unsupported, SpaceError) as e:
            self.info[n] = self._unsupported(call, str(e))
        return result

    def _describe(self, c: Call) -> str:
        """The node, its target and its tensor input shapes, for messages."""
        n = c.node
        shapes = [tuple(a.shape) for a in list(c.args) + list(c.kwargs.values()) if is_tensor(a)]
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        if n.op == "call_module":
            target = f"{n.target} ({type(c.module).__name__})"
        return f"fx node {n.name!r} ({n.op} {target}) with tensor input shapes {shapes}"

    def _unsupported(self, c: Call, reason: str, touched=None, result=None):
        """Strict: raise naming the node. Else warn, fix the channels the node reads (only ``touched`` when the
        handler names them, see :class:`~mudsc.spec.factors.UnsupportedPart`), and return a blank info (or
        ``result``)."""
        message = f"cannot derive a permutation spec through {self._describe(c)}: {reason}"
        if self.strict:
            raise SpecTraceError(message + " (pass strict=False to leave the channels it touches unpermuted)")
        warnings.warn(message + "; the channels it touches are left unpermuted (their groups are dropped)",
                      stacklevel=3)
        for info in ((c.iargs, c.ikwargs) if touched is None else (touched,)):
            self.state.fix_all(info)
        return self.state.none_info(c.result) if result is None else result


def _user_frame(exc: BaseException) -> Optional[str]:
    """``"file:line in function: source"`` of the innermost traceback frame outside torch (the model's code that
    torch.fx stopped at), or None."""
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(torch_dir) and f.filename != __file__]
    if not frames:
        return None
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}: {(f.line or '').strip()!r}"


def _to_graph(model: nn.Module, tracer: Optional[fx.Tracer]) -> fx.GraphModule:
    """``model`` traced symbolically with ``tracer`` (default: a :class:`~mudsc.spec.traceable.SpecTracer`); torch.fx
    failures become :class:`SpecTraceError` naming the model code torch.fx stopped at and the ways around it."""
    tracer = SpecTracer() if tracer is None else tracer
    try:
        return fx.GraphModule(model, tracer.trace(model), type(model).__name__)
    except Exception as e:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError...)
        where = _user_frame(e)
        raise SpecTraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}"
            + (f" (at {where})" if where else "")
            + ". torch.fx runs the code on symbolic values, so it cannot follow what needs real ones (Python control "
            "flow on a tensor: if/while on it, bool()/int() of it, data-dependent shapes); make that code "
            "traceable, make the submodule holding it a leaf of a custom tracer= (a subclass of "
            "mudsc.spec.SpecTracer; with strict=False its channels are then left unpermuted), or write the model's "
            "mudsc.PermSpec by hand and pass it as spec= to mudsc.merge / mudsc.match") from e


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` and all its submodules in eval mode inside the block; every module's own ``training`` flag is
    restored on exit, also when the block raises (a model may mix train and eval submodules)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _interpret(model: nn.Module, gm: fx.GraphModule, example_inputs: tuple, strict: bool) -> TraceState:
    """Run ``gm`` once on the inputs in eval mode without grad (the caller restores the train flags)."""
    gm.eval()
    interp = _SpecInterpreter(gm, strict, model)
    with torch.no_grad():
        interp.run(*example_inputs)
    return interp.state


def trace(
    model: nn.Module,
    example_inputs,
    strict: bool = True,
    check: bool = True,
    rtol: float = 1e-5,
    tracer: Optional[fx.Tracer] = None,
    share_heads: bool = True,
    check_inputs=None,
) -> PermSpec:
    """Discover the permutation spec of ``model`` (see the module docstring for the method).

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace symbolically.
        example_inputs: a tensor or a tuple of positional inputs (e.g. ``torch.randn(1, 3, 32, 32)``); the model is
            traced in eval mode and one forward pass runs on them under ``no_grad`` (every submodule's train/eval
            flag is restored afterwards, also on error).
        strict: raise :class:`SpecTraceError` on unsupported constructs (naming the fx node) instead of dropping
            the groups they touch with a warning.
        check: run :func:`mudsc.check_spec` on the result (random permutations of every group, float64).
        rtol: tolerance of that check.
        tracer: an ``fx.Tracer`` instance to trace with (e.g. one with custom leaf modules); default a
            :class:`~mudsc.spec.traceable.SpecTracer`, which also traces into ``nn.TransformerEncoder`` & co. (subclass
            it to keep that).
        share_heads: True (default): q/k and v/o groups of one attention layer carry the same ``block_tie``, so
            one head permutation serves both. False reproduces the original MuDSC (ALGORITHM.md §1.7, §8.1.12):
            the ties are removed and the heads of q/k and v/o are matched independently; such a spec is not
            function-preserving (``check_spec`` rejects it), so the check runs on the tied spec before untying.
        check_inputs: inputs of that check (default: ``example_inputs``); its two float64 forward passes cost what
            they get, so :func:`mudsc.merge` checks on one sample.

    Returns:
        :class:`PermSpec`: groups in order of first appearance, each with members, block structure and taps.
    """
    if is_tensor(example_inputs):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    # fx records the branch a module's ``if self.training:`` takes at trace time (timm's DropPath would record its
    # random mask), so the graph is built in eval mode too, not only run in it
    with _eval_mode(model):
        state = _interpret(model, _to_graph(model, tracer), example_inputs, strict)
    spec = build_spec(state, strict)
    if check:
        check_spec(model, spec, example_inputs if check_inputs is None else check_inputs, rtol=rtol)
    if not share_heads:
        spec = PermSpec([dataclasses.replace(g, block_tie=None) for g in spec.groups], spec.views)
    return spec
