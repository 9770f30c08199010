"""What the tracer records while it runs a graph: channel spaces, the dims of parameters, and tap candidates.

Data model. :class:`TraceState` holds the :class:`~mudsc.spec.spaces.Spaces` store and, per parameter or buffer
(``state_dict`` key), one dim per tensor axis (``param_dims[name][axis]``, ``None`` until an op meets it; see
``factors.py`` for dims), the role the first op gave that axis (``param_roles[(name, axis)]``: "output" for
produced units, "input" for consumed ones) and the order in which tensors were first met (``param_order``: group
and member order follow it). Tap candidates are :class:`ModuleTap` entries (a leaf module's first tensor input
and its output, with their tensor infos) and :class:`SpecialTap` entries (taps a handler builds itself, such as
the q/k/v projections inside ``nn.MultiheadAttention``). :class:`SpecTraceError` is the public error of a trace.
``views`` names the tensors whose dims describe a dense form (``views.py``: a grouped convolution's weight).

Tied tensors. A parameter or buffer reachable under several names (``self.dec.weight = self.emb.weight``, or one
module registered twice) is one tensor: every name of it is read as its *canonical* name, the first one the
model's deduplicating ``named_parameters()`` / ``named_buffers()`` give (the name ``apply_maps`` and
``permute_model`` look up). Each op that uses the tensor, under whichever name, binds the same per-axis dims, so
its axes carry the constraints of all its uses (a tied embedding/decoder: the rows are the vocabulary of both,
the columns one hidden space) and it becomes one member per axis. That member has one role, the one its first
use gave the axis.

A handler sees one fx node as a :class:`Call`: the node, its real arguments and result, and the same arguments
with every fx node replaced by its tensor info (``iargs``/``ikwargs``).
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .data import Tap
from .factors import Dim, TensorInfo, Unsupported, dim_size, looks_like_factor, none_dim, space_dim, union_dims
from .spaces import Spaces
from .views import View, dense_shape


class SpecTraceError(ValueError):
    """The tracer met a construct it cannot prove permutation-invariant (message names the fx node)."""


class ModuleTap(NamedTuple):
    """A leaf module's tensor input or output, a candidate tap: ``source`` names the fx node of the tensor."""

    module: str
    kind: str
    info: Any
    source: str


class SpecialTap(NamedTuple):
    """A ready-made tap for the channels of ``space``."""

    space: int
    tap: Tap


class Call(NamedTuple):
    """One fx node as a handler sees it (``module`` is the submodule for ``call_module`` nodes, else None)."""

    node: fx.Node
    args: tuple
    kwargs: dict
    iargs: tuple
    ikwargs: dict
    result: Any
    module: Optional[nn.Module] = None

    def arg(self, position: int, key: str):
        """The real argument given by keyword ``key`` or at ``position`` (None when absent)."""
        return _arg(self.args, self.kwargs, position, key)

    def info(self, position: int, key: str):
        """The tensor info of the argument given by keyword ``key`` or at ``position`` (None when absent)."""
        return _arg(self.iargs, self.ikwargs, position, key)

    def node_arg(self, position: int, key: str):
        """The fx argument (a node or a constant) given by keyword ``key`` or at ``position``."""
        return _arg(self.node.args, self.node.kwargs, position, key)

    @property
    def prefix(self) -> str:
        """``"<module name>."`` for a ``call_module`` node (empty for the root module)."""
        return (self.node.target + ".") if self.node.target else ""


def _arg(args, kwargs, position, key):
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else None


def is_tensor(x) -> bool:
    """Whether ``x`` is a tensor."""
    return isinstance(x, torch.Tensor)


class TraceState:
    """The constraints and parameter dims recorded so far (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, root: Optional[nn.Module] = None):
        self.gm = gm
        self.sp = Spaces()
        self.param_dims: Dict[str, List[Optional[Dim]]] = {}
        self.param_roles: Dict[Tuple[str, int], str] = {}
        self.param_order: List[str] = []
        self.module_taps: List[ModuleTap] = []
        self.special_taps: List[SpecialTap] = []
        self.node: Optional[fx.Node] = None  # the node being handled (names the spaces it creates)
        self.aliases = tensor_aliases(gm if root is None else root)
        self.tensors: Dict[str, torch.Tensor] = {}
        self.views: Dict[str, View] = {}  # tensors described in a dense layout (grouped convolutions)
        for name, t in _all_named_tensors(gm):
            self.tensors.setdefault(self.canonical(name), t)

    def canonical(self, name: str) -> str:
        """The canonical name of parameter/buffer ``name`` (itself unless it is a second name of a tied tensor)."""
        return self.aliases.get(name, name)

    # -- tensor infos ----------------------------------------------------------------------------------------
    def none_info(self, value):
        """The info of a value none of whose axes is permutable (nested like the value; None for non-tensors)."""
        if is_tensor(value):
            return tuple(none_dim(s) for s in value.shape)
        if isinstance(value, (tuple, list)):
            return tuple(self.none_info(v) for v in value)
        return None

    def fix_all(self, info) -> None:
        """Fix every space found in a (nested) info: those channels keep the identity."""
        if isinstance(info, dict):
            for v in info.values():
                self.fix_all(v)
        elif isinstance(info, (tuple, list)):
            for v in info:
                if looks_like_factor(v):
                    if v[0] is not None:
                        self.sp.fix(v[0])
                else:
                    self.fix_all(v)

    # -- parameters ------------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple:
        """The shape of parameter/buffer ``name`` as its dims describe it: the dense shape when it has a view."""
        name = self.canonical(name)
        view = self.views.get(name)
        shape = tuple(self.tensors[name].shape)
        return dense_shape(shape, view, name) if view is not None else shape

    def set_view(self, name: str, view: View) -> None:
        """Describe ``name`` by the dense form of ``view`` (``views.py``); before any op binds its axes."""
        name = self.canonical(name)
        if name in self.param_dims and self.views.get(name) != view:
            raise Unsupported(f"{name} is used both as a grouped/compact tensor and as a plain one")
        self.views[name] = view

    def register(self, name: str) -> List[Optional[Dim]]:
        """The per-axis dims of parameter/buffer ``name`` (registered on first use under its canonical name)."""
        name = self.canonical(name)
        if name not in self.param_dims:
            if name not in self.tensors:
                raise Unsupported(f"{name!r} is not a parameter or buffer of the model")
            self.param_dims[name] = [None] * len(self.shape(name))
            self.param_order.append(name)
        return self.param_dims[name]

    def fresh(self, name: str, axis: int, role: str = "output") -> Dim:
        """The dim of ``name``'s ``axis``, a new space (created at the current node) if no op met it yet."""
        name = self.canonical(name)
        dims = self.register(name)
        if dims[axis] is None:
            size = self.shape(name)[axis]
            dims[axis] = space_dim(self.sp.new(size, self.node.name), size)
        self.param_roles.setdefault((name, axis), role)
        return dims[axis]

    def bind(self, name: str, axis: int, dim: Dim, role: str) -> Dim:
        """Identify ``name``'s ``axis`` with ``dim`` (the first binding sets it); returns the axis' dim."""
        name = self.canonical(name)
        dims = self.register(name)
        self.param_roles.setdefault((name, axis), role)
        if dims[axis] is None:
            if dim_size(dim) != self.shape(name)[axis]:
                raise Unsupported(f"{name} axis {axis} has length {self.shape(name)[axis]}, "
                                  f"but the tensor it meets has {dim_size(dim)}")
            dims[axis] = dim
        else:
            union_dims(self.sp, dims[axis], dim)
        return dims[axis]

    def param_info(self, name: str) -> TensorInfo:
        """The info of parameter/buffer ``name`` read by a ``get_attr`` node (fresh spaces where unmet)."""
        name = self.canonical(name)
        if name in self.views:
            raise Unsupported(f"{name} is read directly as well as by its grouped convolution")
        return tuple(self.fresh(name, a) for a in range(len(self.shape(name))))

    def set_role(self, arg, axis: int, role: str) -> None:
        """Set the role of ``axis`` of the parameter that fx argument ``arg`` reads (if it reads one)."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr" and self.canonical(arg.target) in self.tensors:
            name = self.canonical(arg.target)
            ndim = len(self.shape(name))
            self.param_roles[(name, axis % ndim)] = role

    def has_tensor(self, name: str) -> bool:
        """Whether ``name`` (under any of its names) is a parameter or buffer of the model."""
        return self.canonical(name) in self.tensors


def _all_named_tensors(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """Every ``(name, tensor)`` of ``model``'s parameters, then buffers, each tensor under all its names."""
    return list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))


def tensor_aliases(model: nn.Module) -> Dict[str, str]:
    """``{second name: canonical name}`` for every tensor of ``model`` reachable under several names (tied
    parameters, a module registered twice); the canonical name is the one ``named_parameters()`` (or
    ``named_buffers()``) gives. Empty for a model without ties."""
    canonical = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        canonical.setdefault(id(t), name)
    return {name: canonical[id(t)] for name, t in _all_named_tensors(model)
            if id(t) in canonical and canonical[id(t)] != name}
