"""``trace(model, example_inputs)``: discover a model's permutation spec with torch.fx.

Method. The model is symbolically traced (``torch.fx``) and the graph is run once on ``example_inputs`` by an
interpreter that, next to every real value, carries a description of each tensor axis (a *dim*, see
``spaces.py``): which channel index space it holds, possibly split into blocks (heads) or fused slices. Handlers
per op state the constraints (a ``Linear`` identifies its weight's column space with the input's last axis and
creates a new space for its rows; ``add`` identifies the axes of its operands; a reshape splits or joins factors
using the concrete shapes; ``unbind`` of a fused ``qkv`` partitions its row space; ``q @ kᵀ`` identifies the
head-dim spaces of q and k and ties their head digits...). Model inputs and outputs fix whatever they touch.
At the end every non-fixed leaf space becomes a :class:`~mudsc.spec.data.Group`; parameters/buffers whose axes
hold that space become its members.

Unsupported constructs (an op without a handler, a reshape that mixes channels, grouped convolutions with
``1 < groups < channels`` that would need within-group structure) raise :class:`SpecTraceError` naming the fx
node with ``strict=True``; with ``strict=False`` the channels they touch are fixed (their groups are dropped) and
a warning names the node. Every traced spec is then verified by :func:`mudsc.spec.check.check_spec` unless
``check=False``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import map_arg

from .data import Group, Member, PermSpec, Tap
from .factors import (Dim, Factor, Piece, ResolveProblem, TensorInfo, Unsupported, broadcast, dim_size, looks_like_factor,
                      is_permutable, none_dim, normalize, pieces, refine, running_sums, space_dim, union_dims)
from .spaces import SpaceError, Spaces


class SpecTraceError(ValueError):
    """The tracer met a construct it cannot prove permutation-invariant (message names the fx node)."""



_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.floordiv, operator.mod,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu, torch.sigmoid, torch.tanh, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.clamp, torch.where, torch.erf, torch.pow, torch.square,
    torch.softmax, torch.log_softmax, torch.maximum, torch.minimum,
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
    F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.softmax, F.log_softmax, F.hardtanh, F.selu,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "clamp",
    "pow", "square", "softmax", "log_softmax", "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "clamp_",
    "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as", "detach", "requires_grad_",
    "masked_fill", "erf", "type", "cpu", "cuda",
}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod"}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softmax, nn.LogSoftmax, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Hardtanh, nn.SELU,
)
_POOLS = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.UpsamplingNearest2d,
        nn.UpsamplingBilinear2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}
_POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.avg_pool1d: 1,
    F.avg_pool2d: 2, F.avg_pool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_SIMILARITY_EXCLUDED_SUFFIXES = ("running_mean", "running_var")


def _is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


class _SpecInterpreter(fx.Interpreter):
    """Runs the traced graph and builds the channel-space constraints alongside (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, strict: bool):
        super().__init__(gm)
        self.strict = strict
        self.sp = Spaces()
        self.info: Dict[fx.Node, Any] = {}
        self.param_dims: Dict[str, List[Optional[Dim]]] = {}
        self.param_roles: Dict[Tuple[str, int], str] = {}
        self.param_order: List[str] = []
        # (module, "input"|"output", channel info, the fx node whose tensor the hook sees)
        self.module_taps: List[Tuple[str, str, TensorInfo, str]] = []
        self.special_taps: List[Tuple[int, Tap]] = []
        self.node: Optional[fx.Node] = None
        self.tensors = dict(gm.named_parameters())
        self.tensors.update(dict(gm.named_buffers()))

    # -- the run loop ----------------------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = getattr(self, n.op)(n.target, args, kwargs)
        self.node = n
        iargs = map_arg(n.args, lambda a: self.info[a])
        ikwargs = map_arg(n.kwargs, lambda a: self.info[a])
        try:
            self.info[n] = self._handle(n, args, kwargs, iargs, ikwargs, result)
        except (Unsupported, SpaceError) as e:
            self.info[n] = self._unsupported(n, str(e), args, kwargs, iargs, ikwargs, result)
        return result

    def _describe(self, n: fx.Node, args, kwargs) -> str:
        shapes = [tuple(a.shape) for a in list(args) + list(kwargs.values()) if _is_tensor(a)]
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        if n.op == "call_module":
            target = f"{n.target} ({type(self.module.get_submodule(n.target)).__name__})"
        return f"fx node {n.name!r} ({n.op} {target}) with tensor input shapes {shapes}"

    def _unsupported(self, n, reason, args, kwargs, iargs, ikwargs, result):
        message = f"cannot derive a permutation spec through {self._describe(n, args, kwargs)}: {reason}"
        if self.strict:
            raise SpecTraceError(message + " (pass strict=False to leave the channels it touches unpermuted)")
        warnings.warn(message + "; the channels it touches are left unpermuted (their groups are dropped)",
                      stacklevel=3)
        for info in (iargs, ikwargs):
            self._fix_all(info)
        return self._none_info(result)

    # -- info helpers ----------------------------------------------------------------------------------------
    def _none_info(self, value):
        if _is_tensor(value):
            return tuple(none_dim(s) for s in value.shape)
        if isinstance(value, (tuple, list)):
            return tuple(self._none_info(v) for v in value)
        return None

    def _fix_all(self, info) -> None:
        if isinstance(info, dict):
            for v in info.values():
                self._fix_all(v)
        elif isinstance(info, (tuple, list)):
            for v in info:
                if looks_like_factor(v):
                    if v[0] is not None:
                        self.sp.fix(v[0])
                else:
                    self._fix_all(v)

    # -- parameters ------------------------------------------------------------------------------------------
    def _register(self, name: str) -> List[Optional[Dim]]:
        if name not in self.param_dims:
            if name not in self.tensors:
                raise Unsupported(f"{name!r} is not a parameter or buffer of the model")
            self.param_dims[name] = [None] * self.tensors[name].dim()
            self.param_order.append(name)
        return self.param_dims[name]

    def _fresh(self, name: str, axis: int, role: str = "output") -> Dim:
        dims = self._register(name)
        if dims[axis] is None:
            size = self.tensors[name].shape[axis]
            dims[axis] = space_dim(self.sp.new(size, self.node.name), size)
        self.param_roles.setdefault((name, axis), role)
        return dims[axis]

    def _bind(self, name: str, axis: int, dim: Dim, role: str) -> Dim:
        dims = self._register(name)
        self.param_roles.setdefault((name, axis), role)
        if dims[axis] is None:
            if dim_size(dim) != self.tensors[name].shape[axis]:
                raise Unsupported(f"{name} axis {axis} has length {self.tensors[name].shape[axis]}, "
                                   f"but the tensor it meets has {dim_size(dim)}")
            dims[axis] = dim
        else:
            union_dims(self.sp, dims[axis], dim)
        return dims[axis]

    def _param_info(self, name: str) -> TensorInfo:
        return tuple(self._fresh(name, a) for a in range(self.tensors[name].dim()))

    def _set_role(self, arg, axis: int, role: str) -> None:
        if isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target in self.tensors:
            ndim = self.tensors[arg.target].dim()
            self.param_roles[(arg.target, axis % ndim)] = role

    # -- dispatch --------------------------------------------------------------------------------------------
    def _handle(self, n, args, kwargs, iargs, ikwargs, result):
        if n.op == "placeholder":
            return self._none_info(result)
        if n.op == "get_attr":
            if _is_tensor(result) and n.target in self.tensors:
                return self._param_info(n.target)
            return self._none_info(result)
        if n.op == "output":
            self._fix_all(iargs)
            return None
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            first = next(((node, i) for node, a, i in zip(n.args, args, iargs) if _is_tensor(a)), None)
            if first is not None:
                source = first[0].name if isinstance(first[0], fx.Node) else f"{n.name}.arg"
                self.module_taps.append((n.target, "input", first[1], source))
            out = self._handle_module(n, module, args, kwargs, iargs, ikwargs, result)
            if _is_tensor(result):
                self.module_taps.append((n.target, "output", out, n.name))
            return out
        tensor_args = [a for a in list(args) + list(kwargs.values()) if _is_tensor(a)
                       or (isinstance(a, (list, tuple)) and any(_is_tensor(x) for x in a))]
        target = n.target
        if not tensor_args and not _is_tensor(result) and not (
                isinstance(result, (list, tuple)) and any(_is_tensor(x) for x in result)):
            return None  # shape arithmetic, asserts
        if n.op == "call_function":
            return self._handle_function(n, target, args, kwargs, iargs, ikwargs, result)
        if n.op == "call_method":
            return self._handle_method(n, target, args, kwargs, iargs, ikwargs, result)
        raise Unsupported(f"op kind {n.op!r} is not handled")

    # -- functions -------------------------------------------------------------------------------------------
    def _handle_function(self, n, fn, args, kwargs, iargs, ikwargs, result):
        if fn is operator.getitem:
            return self._getitem(args[0], iargs[0], args[1], result)
        if fn in (getattr, ) or fn is torch._assert:
            return None
        if fn in _ELEMENTWISE_FUNCTIONS:
            return self._elementwise(args, kwargs, iargs, ikwargs, result)
        if fn in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze):
            return self._reshape(iargs[0], result)
        if fn in (torch.transpose, torch.swapaxes):
            return self._transpose(iargs[0], args[0].dim(), args[1], args[2])
        if fn is torch.permute:
            return self._permute(iargs[0], args[1])
        if fn is torch.cat or fn is torch.concat:
            return self._cat(args[0], iargs[0], kwargs.get("dim", args[1] if len(args) > 1 else 0), result)
        if fn is torch.stack:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return self._stack(args[0], iargs[0], dim, result)
        if fn in (torch.matmul, operator.matmul, torch.bmm):
            return self._matmul(n, args[0], args[1], iargs[0], iargs[1], result)
        if fn is F.scaled_dot_product_attention:
            return self._sdpa(args, kwargs, iargs, ikwargs, result)
        if fn is F.linear:
            w, b = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
            iw, ib = _arg(iargs, ikwargs, 1, "weight"), _arg(iargs, ikwargs, 2, "bias")
            self._set_role(_arg(n.args, n.kwargs, 1, "weight"), 0, "output")
            self._set_role(_arg(n.args, n.kwargs, 1, "weight"), 1, "input")
            union_dims(self.sp, iw[1], iargs[0][-1])
            if b is not None:
                union_dims(self.sp, ib[0], iw[0])
            return iargs[0][:-1] + (iw[0],)
        if fn is F.layer_norm:
            return self._layer_norm_info(args[0], iargs[0], _arg(args, kwargs, 1, "normalized_shape"),
                                         [_arg(iargs, ikwargs, 2, "weight"), _arg(iargs, ikwargs, 3, "bias")])
        if fn is F.group_norm:
            groups = _arg(args, kwargs, 1, "num_groups")
            return self._group_norm_info(iargs[0], args[0], groups,
                                         [_arg(iargs, ikwargs, 2, "weight"), _arg(iargs, ikwargs, 3, "bias")])
        if fn is F.batch_norm:
            x = iargs[0]
            for k, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
                p = _arg(iargs, ikwargs, k, key)
                if p is not None:
                    union_dims(self.sp, p[0], x[1])
            return x
        if fn in _POOL_FUNCTIONS:
            return self._spatial(iargs[0], args[0], _POOL_FUNCTIONS[fn], result)
        if fn is F.interpolate:
            return self._spatial(iargs[0], args[0], args[0].dim() - 2, result)
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self._reduce(args[0], iargs[0], _arg(args, kwargs, 1, "dim"), kwargs.get("keepdim", False), result)
        if fn is F.conv2d or fn is F.conv1d:
            raise Unsupported("functional convolutions are not handled; use nn.Conv modules")
        raise Unsupported(f"no handler for function {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)}")

    # -- methods ---------------------------------------------------------------------------------------------
    def _handle_method(self, n, name, args, kwargs, iargs, ikwargs, result):
        x, ix = args[0], iargs[0]
        if not _is_tensor(x):
            raise Unsupported(f"method {name!r} called on a non-tensor")
        if name in ("size", "dim", "numel", "__len__"):
            return None
        if name in _ELEMENTWISE_METHODS:
            return self._elementwise(args, kwargs, iargs, ikwargs, result)
        if name in _RESHAPE_METHODS:
            return self._reshape(ix, result)
        if name in ("transpose", "swapaxes"):
            return self._transpose(ix, x.dim(), args[1], args[2])
        if name == "permute":
            order = args[1:] if not isinstance(args[1], (tuple, list)) else args[1]
            return self._permute(ix, order)
        if name in ("t",):
            return self._transpose(ix, x.dim(), 0, 1) if x.dim() == 2 else ix
        if name in ("expand", "expand_as", "broadcast_to"):
            return self._expand(ix, x, result)
        if name == "unbind":
            dim = _arg(args, kwargs, 1, "dim") or 0
            return self._split_results(ix, x, dim, [1] * x.shape[dim], keepdim=False)
        if name in ("chunk", "split", "tensor_split"):
            dim = _arg(args, kwargs, 2, "dim") or 0
            sizes = [r.shape[dim] for r in result]
            return self._split_results(ix, x, dim, sizes, keepdim=True)
        if name in _REDUCTIONS:
            return self._reduce(x, ix, _arg(args, kwargs, 1, "dim"), kwargs.get("keepdim", False), result)
        raise Unsupported(f"no handler for tensor method {name!r}")

    # -- modules ---------------------------------------------------------------------------------------------
    def _handle_module(self, n, m, args, kwargs, iargs, ikwargs, result):
        name = n.target
        p = (name + ".") if name else ""
        x, ix = args[0], iargs[0]
        if isinstance(m, nn.Linear):
            self._bind(p + "weight", 1, ix[-1], "input")
            out = self._fresh(p + "weight", 0, "output")
            if m.bias is not None:
                self._bind(p + "bias", 0, out, "output")
            return ix[:-1] + (out,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self._conv(n, m, p, x, ix, result)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = ix[1]
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, key, None) is not None:
                    self._bind(p + key, 0, c, "output")
            return ix
        if isinstance(m, nn.GroupNorm):
            names = [p + k for k in ("weight", "bias") if getattr(m, k, None) is not None]
            return self._group_norm_info(ix, x, m.num_groups, [], names=names)
        if isinstance(m, nn.LayerNorm):
            names = [p + k for k in ("weight", "bias") if getattr(m, k, None) is not None]
            k = len(m.normalized_shape)
            for pname in names:
                for j in range(k):
                    self._bind(pname, j, ix[x.dim() - k + j], "output")
            return ix
        if isinstance(m, nn.Embedding):
            self._bind(p + "weight", 0, none_dim(m.num_embeddings), "input")
            return ix + (self._fresh(p + "weight", 1, "output"),)
        if isinstance(m, nn.MultiheadAttention):
            return self._multihead_attention(n, m, p, args, kwargs, iargs, ikwargs, result)
        if isinstance(m, nn.PReLU):
            if m.num_parameters > 1:
                self._bind(p + "weight", 0, ix[1], "output")
            return ix
        if isinstance(m, _ELEMENTWISE_MODULES):
            if _is_tensor(result) and result.shape == x.shape:
                return ix
            raise Unsupported("an elementwise module changed its input's shape")
        for k, types in _POOLS.items():
            if isinstance(m, types):
                if getattr(m, "return_indices", False):
                    raise Unsupported("pooling with return_indices is not handled")
                return self._spatial(ix, x, k, result)
        if isinstance(m, (nn.Upsample,)):
            return self._spatial(ix, x, x.dim() - 2, result)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self._reshape(ix, result)
        raise Unsupported(f"no handler for leaf module type {type(m).__name__}")

    def _conv(self, n, m, p, x, ix, result):
        k = len(m.kernel_size)
        c = x.dim() - 1 - k
        channels = ix[c]
        if m.groups == 1:
            self._bind(p + "weight", 1, channels, "input")
            out = self._fresh(p + "weight", 0, "output")
        elif m.groups == m.in_channels:
            mult = m.out_channels // m.in_channels
            out = channels if mult == 1 else normalize(self.sp, channels + (Factor(None, mult, 1),))
            if mult > 1 and is_permutable(channels) and len(channels) != 1:
                raise Unsupported("a depthwise convolution with a channel multiplier on a structured axis")
            self._bind(p + "weight", 0, out, "output")
        else:
            warnings.warn(
                f"fx node {n.name!r}: grouped convolution {n.target} (groups={m.groups}, "
                f"{m.in_channels}->{m.out_channels} channels) is traced conservatively: its input and output "
                "channels are left unpermuted", stacklevel=4)
            self._fix_all(channels)
            self._bind(p + "weight", 0, none_dim(m.out_channels), "output")
            out = none_dim(m.out_channels)
        if m.bias is not None:
            self._bind(p + "bias", 0, out, "output")
        return ix[:c] + (out,) + tuple(none_dim(s) for s in result.shape[c + 1:])

    def _group_norm_info(self, ix, x, groups, params, names=None):
        c = ix[1]
        channels = x.shape[1]
        if names is not None:  # module parameters, bound by name
            for pname in names:
                self._bind(pname, 0, c, "output")
        else:
            for pd in params:
                if pd is not None:
                    union_dims(self.sp, pd[0], c)
        if 1 < groups < channels:
            if len(c) == 1 and is_permutable(c) and c[0].size == channels:
                self.sp.add_stride(c[0].space, channels // groups)
            elif is_permutable(c):
                raise Unsupported("GroupNorm over a channel axis that is itself structured")
        return ix

    def _layer_norm_info(self, x, ix, normalized_shape, params):
        k = len(normalized_shape)
        for pd in params:
            if pd is not None:
                for j in range(k):
                    union_dims(self.sp, pd[j], ix[x.dim() - k + j])
        return ix

    # -- shape ops -------------------------------------------------------------------------------------------
    def _elementwise(self, args, kwargs, iargs, ikwargs, result):
        pairs = [(i, a) for a, i in zip(list(args) + list(kwargs.values()), list(iargs) + list(ikwargs.values()))
                 if _is_tensor(a)]
        if not _is_tensor(result):
            raise Unsupported("an elementwise op did not return a tensor")
        return broadcast(self.sp, pairs, result.shape)

    def _reshape(self, ix, result):
        factors = [f for d in ix for f in d]
        return tuple(refine(self.sp, factors, list(result.shape)))

    def _transpose(self, ix, ndim, a, b):
        a, b = a % ndim, b % ndim
        out = list(ix)
        out[a], out[b] = out[b], out[a]
        return tuple(out)

    def _permute(self, ix, order):
        order = [int(o) % len(ix) for o in order]
        return tuple(ix[o] for o in order)

    def _expand(self, ix, x, result):
        out = []
        nd = result.dim()
        for j in range(nd):
            k = j - (nd - x.dim())
            if k >= 0 and x.shape[k] == result.shape[j]:
                out.append(ix[k])
            else:
                out.append(none_dim(result.shape[j]))
        return tuple(out)

    def _spatial(self, ix, x, k, result):
        """Pools/upsampling: the last ``k`` axes are spatial; channel axes are kept."""
        if result.dim() != x.dim() or result.shape[: x.dim() - k] != x.shape[: x.dim() - k]:
            raise Unsupported("a spatial op changed non-spatial axes")
        return ix[: x.dim() - k] + tuple(none_dim(s) for s in result.shape[x.dim() - k:])

    def _reduce(self, x, ix, dim, keepdim, result):
        if dim is None:
            return ()
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = {d % x.dim() for d in dims}
        out = []
        for j in range(x.dim()):
            if j in dims:
                if keepdim:
                    out.append(())
            else:
                out.append(ix[j])
        return tuple(out)

    def _cat(self, tensors, infos, dim, result):
        dim = dim % result.dim()
        for j in range(result.dim()):
            if j == dim:
                continue
            base = infos[0][j]
            for info in infos[1:]:
                base = union_dims(self.sp, base, info[j])
        parts = [info[dim] for info in infos]
        if not any(is_permutable(part) for part in parts):
            cat_dim = none_dim(result.shape[dim])
        else:
            total = result.shape[dim]
            space = self.sp.new(total, self.node.name)
            sizes = [t.shape[dim] for t in tensors]
            cuts = list(running_sums(sizes))[:-1]
            children = self.sp.partition(space, cuts)
            nonempty = [pt for pt, s in zip(parts, sizes) if s > 0]
            for (lo, hi, child), part in zip(children, nonempty):
                union_dims(self.sp, space_dim(child, hi - lo), part)
            cat_dim = (Factor(space, total, 1),)
        return tuple(cat_dim if j == dim else infos[0][j] for j in range(result.dim()))

    def _stack(self, tensors, infos, dim, result):
        dim = dim % result.dim()
        base = list(infos[0])
        for info in infos[1:]:
            base = [union_dims(self.sp, a, b) for a, b in zip(base, info)]
        return tuple(base[:dim]) + (none_dim(len(tensors)),) + tuple(base[dim:])

    def _select(self, ix, x, d, lo, hi, keepdim):
        """Channels ``[lo, hi)`` of axis ``d``: a slice of a top digit partitions its space."""
        dim = ix[d]
        out = list(ix)
        if not is_permutable(dim):
            new = none_dim(hi - lo) if keepdim else None
        elif lo == 0 and hi == x.shape[d]:
            new = dim if keepdim else None
        elif len(dim) == 1 and self.sp.size[self.sp.find(dim[0].space)] == dim[0].size * dim[0].stride:
            space, size, stride = dim[0]
            root = self.sp.find(space)
            child = self.sp.child_covering(root, lo * stride, hi * stride)
            for j, other in enumerate(out):
                if j == d:
                    continue
                new_other = []
                for f in other:
                    if f.space is not None and self.sp.find(f.space) == root:
                        if f.stride >= stride:
                            raise Unsupported("a fused axis is selected while another axis holds its parts")
                        f = Factor(child, f.size, f.stride)
                    new_other.append(f)
                out[j] = tuple(new_other)
            new = (Factor(child, hi - lo, stride),) if keepdim and hi - lo > 1 else (() if keepdim else None)
            if keepdim and hi - lo > 1 and stride > 1:
                self.sp.add_stride(child, stride)
        else:
            raise Unsupported(f"indexing channels [{lo}, {hi}) of a structured axis of size {x.shape[d]}")
        if new is None:
            del out[d]
        else:
            out[d] = new
        return tuple(out)

    def _split_results(self, ix, x, dim, sizes, keepdim):
        dim = dim % x.dim()
        outs, lo = [], 0
        for s in sizes:
            outs.append(self._select(ix, x, dim, lo, lo + s, keepdim))
            lo += s
        return tuple(outs)

    def _getitem(self, x, ix, index, result):
        if not _is_tensor(x):
            if isinstance(ix, (tuple, list)) and isinstance(index, (int, slice)):
                return ix[index]
            return None
        if not isinstance(index, tuple):
            index = (index,)
        if any(_is_tensor(i) for i in index):
            raise Unsupported("advanced (tensor) indexing")
        n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
        expanded = []
        for i in index:
            if i is Ellipsis:
                expanded += [slice(None)] * (x.dim() - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None))
        info = list(ix)
        d = 0  # position in the current (partially indexed) info
        src = 0  # axis of x
        for i in expanded:
            if i is None:
                info.insert(d, ())
                d += 1
                continue
            size = x.shape[src]
            if isinstance(i, int):
                k = i % size
                info = list(self._select(tuple(info), _Shape(info, x, d, size), d, k, k + 1, keepdim=False))
            elif isinstance(i, slice):
                start, stop, step = i.indices(size)
                if step != 1:
                    if not is_permutable(info[d]):
                        info[d] = none_dim(len(range(start, stop, step)))
                    else:
                        raise Unsupported("strided slicing of a channel axis")
                else:
                    info = list(self._select(tuple(info), _Shape(info, x, d, size), d, start, stop, keepdim=True))
                d += 1
            else:
                raise Unsupported(f"index {i!r}")
            src += 1
        return tuple(info)

    # -- matmul and attention --------------------------------------------------------------------------------
    def _matmul(self, n, a, b, ia, ib, result):
        if a.dim() < 2 or b.dim() < 2:
            raise Unsupported("matmul with a 1-D operand")
        union_dims(self.sp, ia[-1], ib[-2])
        self._set_role(n.args[1], -2, "input")
        self._set_role(n.args[1], -1, "output")
        self._set_role(n.args[0], -1, "input")
        # b first: the result's channels come from b (attn @ v must keep v's head digit)
        batch = broadcast(self.sp, [(ib[:-2], b[..., 0, 0]), (ia[:-2], a[..., 0, 0])], result.shape[:-2])
        return batch + (ia[-2], ib[-1])

    def _sdpa(self, args, kwargs, iargs, ikwargs, result):
        q, k, v = args[0], args[1], args[2]
        iq, ik, iv = iargs[0], iargs[1], iargs[2]
        union_dims(self.sp, iq[-1], ik[-1])
        union_dims(self.sp, ik[-2], iv[-2])
        # v first: the result's head digit must be v's (tied to q's through this broadcast)
        pairs = [(iv[:-2], v[..., 0, 0]), (iq[:-2], q[..., 0, 0]), (ik[:-2], k[..., 0, 0])]
        mask = _arg(args, kwargs, 3, "attn_mask")
        if _is_tensor(mask):
            imask = _arg(iargs, ikwargs, 3, "attn_mask")
            pairs.append((imask[:-2], mask[..., 0, 0]))
        batch = broadcast(self.sp, pairs, result.shape[:-2])
        return batch + (iq[-2], iv[-1])

    def _multihead_attention(self, n, m, p, args, kwargs, iargs, ikwargs, result):
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise Unsupported("MultiheadAttention with separate q/k/v projections, bias_k or add_zero_attn")
        query, key, value = (_arg(args, kwargs, i, k) for i, k in enumerate(("query", "key", "value")))
        iq, ik, iv = (_arg(iargs, ikwargs, i, k) for i, k in enumerate(("query", "key", "value")))
        e, h = m.embed_dim, m.num_heads
        self._bind(p + "in_proj_weight", 1, iq[-1], "input")
        union_dims(self.sp, iq[-1], ik[-1])
        union_dims(self.sp, iq[-1], iv[-1])
        rows = self._fresh(p + "in_proj_weight", 0, "output")
        row_space = rows[0].space
        children = self.sp.partition(row_space, [e, 2 * e])
        (_, _, cq), (_, _, ck), (_, _, cv) = children
        self.sp.union(cq, ck)
        if h > 1:
            self.sp.add_stride(cq, e // h)
            self.sp.add_stride(cv, e // h)
            self.sp.tie(cq, cv)
        if m.in_proj_bias is not None:
            self._bind(p + "in_proj_bias", 0, rows, "output")
        self._bind(p + "out_proj.weight", 1, (Factor(cv, e, 1),), "input")
        out = self._fresh(p + "out_proj.weight", 0, "output")
        if m.out_proj.bias is not None:
            self._bind(p + "out_proj.bias", 0, out, "output")
        for space, lo in ((cq, 0), (ck, e), (cv, 2 * e)):
            linear = {"weight": p + "in_proj_weight", "bias": p + "in_proj_bias" if m.in_proj_bias is not None
                      else None, "rows": (lo, lo + e)}
            self.special_taps.append((space, Tap(module=n.target, kind="input", channel_dim=-1, linear=linear)))
        attn_out = iq[:-1] + (out,)
        if isinstance(result, tuple):
            return (attn_out, self._none_info(result[1]))
        return attn_out


class _Shape:
    """Adapter giving ``_select`` the current (partially indexed) axis sizes during ``__getitem__``."""

    def __init__(self, info, x, d, size):
        self.shape = [dim_size(dd) for dd in info]
        self.shape[d] = size


def _arg(args, kwargs, position, key):
    if key in kwargs:
        return kwargs[key]
    return args[position] if len(args) > position else None


# -- resolution: spaces -> PermSpec --------------------------------------------------------------------------
def _build_spec(interp: _SpecInterpreter, strict: bool) -> PermSpec:
    sp = interp.sp
    for _ in range(100):
        sp.propagate()
        try:
            return _build_spec_once(interp)
        except ResolveProblem as problem:
            if strict:
                origins = sorted({sp.origin[s] for s in problem.spaces})
                raise SpecTraceError(f"{problem} (channels created at fx node(s) {origins}); pass strict=False to "
                                     "leave them unpermuted") from None
            warnings.warn(f"{problem}; those channels are left unpermuted", stacklevel=3)
            for s in problem.spaces:
                sp.fix(s)
    raise SpecTraceError("could not settle the spec after fixing 100 unsupported spaces")


def _build_spec_once(interp: _SpecInterpreter) -> PermSpec:
    sp = interp.sp
    for space, stride in sorted(sp.misaligned):
        if not sp.fixed[sp.find(space)]:
            raise ResolveProblem(f"a fused part of {sp.size[sp.find(space)]} channels straddles blocks of {stride} "
                                 "channels (e.g. GroupNorm groups across a concatenation)", [space])
    found: Dict[int, dict] = {}
    for name in interp.param_order:
        for axis, dim in enumerate(interp.param_dims[name]):
            if dim is None:
                continue
            try:
                found_pieces = pieces(interp.sp, dim)
            except ResolveProblem as e:
                raise ResolveProblem(f"{name} axis {axis} {e}", e.spaces) from None
            role = interp.param_roles.get((name, axis), "output")
            similarity = not name.endswith(_SIMILARITY_EXCLUDED_SUFFIXES)
            for leaf, offset, outer, span, inner, size, lo, hi, n in found_pieces:
                entry = found.setdefault(leaf, {"members": [], "name": None, "size": size})
                member = Member(name, axis, role, offset, outer, span if outer > 1 else 0, inner, similarity)
                if member not in entry["members"]:
                    entry["members"].append(member)
                if entry["name"] is None and role == "output":
                    base = name.rsplit(".", 1)[0] if "." in name else name
                    entry["name"] = base if (lo, hi) == (0, n) else f"{base}[{lo}:{hi}]"
    # block structure
    for leaf, entry in found.items():
        strides = sorted(st for st in sp.strides[leaf] if st < entry["size"])
        if len(strides) > 1:
            raise ResolveProblem(f"group of {entry['size']} channels has nested block structures {strides}",
                                  [leaf])
        if strides and entry["size"] % strides[0]:
            raise ResolveProblem(f"group of {entry['size']} channels does not split into blocks of {strides[0]}",
                                  [leaf])
        entry["num_blocks"] = entry["size"] // strides[0] if strides else 1
    # ties between block digits
    tie_parent = {leaf: leaf for leaf in found}

    def tie_find(a):
        while tie_parent[a] != a:
            tie_parent[a] = tie_parent[tie_parent[a]]
            a = tie_parent[a]
        return a

    for a, b in sp.ties:
        ra, rb = sp.find(a), sp.find(b)
        if ra == rb:
            continue
        fixed_a, fixed_b = ra not in found, rb not in found
        if fixed_a != fixed_b:  # one side is unpermuted: its partner's blocks must stay in place too
            raise ResolveProblem("a head-tied partner is unpermuted", [ra if fixed_b else rb])
        if fixed_a:
            continue
        if found[ra]["num_blocks"] != found[rb]["num_blocks"]:
            raise ResolveProblem(
                f"tied groups have {found[ra]['num_blocks']} and {found[rb]['num_blocks']} blocks", [ra, rb])
        tie_parent[tie_find(ra)] = tie_find(rb)
    # order, names, taps
    order = list(found)
    names: Dict[int, str] = {}
    used = set()
    for leaf in order:
        entry = found[leaf]
        base = entry["name"] or entry["members"][0].name.rsplit(".", 1)[0]
        name, k = base, 2
        while name in used:
            name, k = f"{base}#{k}", k + 1
        used.add(name)
        names[leaf] = name
    tie_members: Dict[int, List[int]] = {}
    for leaf in order:
        tie_members.setdefault(tie_find(leaf), []).append(leaf)
    taps = _collect_taps(interp, found)
    groups = []
    for leaf in order:
        entry = found[leaf]
        cls = tie_members[tie_find(leaf)]
        tie = names[cls[0]] if len(cls) > 1 and entry["num_blocks"] > 1 else None
        groups.append(Group(names[leaf], entry["size"], entry["members"], entry["num_blocks"], tie, taps[leaf]))
    return PermSpec(groups)


def _collect_taps(interp: _SpecInterpreter, found: Dict[int, dict]) -> Dict[int, List[Tap]]:
    """Consumer inputs first; else the output of the last module producing the channels; else special taps."""
    consumers: Dict[int, List[Tap]] = {leaf: [] for leaf in found}
    producers: Dict[int, List[Tuple[int, Tap]]] = {leaf: [] for leaf in found}
    input_modules = {leaf: {m.name for m in e["members"] if m.role == "input"} for leaf, e in found.items()}
    # A tensor read by several modules (a downsampling block's conv1 and shortcut both read the residual
    # stream) is tapped once: a second tap would count the same samples twice in the group's statistics.
    # Not when an in-place op may change the tensor between the reads (fx keeps the node name).
    mutated = _mutated_in_place(interp.module)
    seen_inputs: Dict[int, set] = {leaf: set() for leaf in found}
    for index, (module, kind, info, source) in enumerate(interp.module_taps):
        if not isinstance(info, tuple):
            continue
        for j, dim in enumerate(info):
            if not isinstance(dim, tuple):
                continue
            try:
                found_pieces = pieces(interp.sp, dim)
            except ResolveProblem:
                continue
            for leaf, offset, outer, span, inner, size, lo, hi, n in found_pieces:
                if leaf not in found or outer != 1 or inner != 1:
                    continue
                tap = Tap(module, kind, -1 if j == len(info) - 1 else j, None if (lo, hi) == (0, n) else (lo, hi))
                prefix = module + "."
                if kind == "input" and any(name.startswith(prefix) for name in input_modules[leaf]):
                    key = (source, tap.channel_dim, tap.channel_slice)
                    if tap not in consumers[leaf] and key not in seen_inputs[leaf]:
                        if source not in mutated:
                            seen_inputs[leaf].add(key)
                        consumers[leaf].append(tap)
                elif kind == "output":
                    producers[leaf].append((index, tap))
    special: Dict[int, List[Tap]] = {}
    for space, tap in interp.special_taps:
        special.setdefault(interp.sp.find(space), []).append(tap)
    out = {}
    for leaf in found:
        if consumers[leaf]:
            out[leaf] = consumers[leaf]
        elif producers[leaf]:
            last = producers[leaf][-1][1].module
            out[leaf] = _unique([t for _, t in producers[leaf] if t.module == last])
        else:
            out[leaf] = _unique(special.get(leaf, []))
    return out


def _mutated_in_place(gm: fx.GraphModule) -> set:
    """Names of the fx nodes whose tensor some node may modify in place (``relu_``, ``x.add_(...)``,
    ``inplace=True``, a module with ``inplace=True``): their readers may see different values."""
    out = set()
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or not node.args:
            continue
        target = node.target
        if node.op == "call_module":
            inplace = bool(getattr(gm.get_submodule(target), "inplace", False))
        else:
            name = target if isinstance(target, str) else getattr(target, "__name__", "")
            inplace = bool(node.kwargs.get("inplace", False)) or (
                name.endswith("_") and not name.endswith("__")) or name in ("__iadd__", "__imul__", "__isub__",
                                                                             "__itruediv__", "setitem")
        if inplace and isinstance(node.args[0], fx.Node):
            out.add(node.args[0].name)
    return out


def _unique(taps: List[Tap]) -> List[Tap]:
    out = []
    for t in taps:
        if t not in out:
            out.append(t)
    return out


def trace(
    model: nn.Module,
    example_inputs,
    strict: bool = True,
    check: bool = True,
    rtol: float = 1e-5,
    tracer: Optional[fx.Tracer] = None,
    share_heads: bool = True,
) -> PermSpec:
    """Discover the permutation spec of ``model`` (see the module docstring for the method).

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace symbolically.
        example_inputs: a tensor or a tuple of positional inputs (e.g. ``torch.randn(1, 3, 32, 32)``); one forward
            pass runs on them in eval mode under ``no_grad`` (the model's train/eval flags are restored).
        strict: raise :class:`SpecTraceError` on unsupported constructs (naming the fx node) instead of dropping
            the groups they touch with a warning.
        check: run :func:`mudsc.check_spec` on the result (random permutations of every group, float64).
        rtol: tolerance of that check.
        tracer: an ``fx.Tracer`` instance to trace with (e.g. one with custom leaf modules).
        share_heads: True (default): q/k and v/o groups of one attention layer carry the same ``block_tie``, so
            one head permutation serves both. False reproduces the original MuDSC (ALGORITHM.md §1.7, §8.1.12):
            the ties are removed and the heads of q/k and v/o are matched independently; such a spec is not
            function-preserving (``check_spec`` rejects it), so the check runs on the tied spec before untying.

    Returns:
        :class:`PermSpec`: groups in order of first appearance, each with members, block structure and taps.
    """
    if _is_tensor(example_inputs):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    try:
        if tracer is None:
            gm = fx.symbolic_trace(model)
        else:
            gm = fx.GraphModule(model, tracer.trace(model))
    except Exception as e:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError...)
        raise SpecTraceError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
    flags = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        interp = _SpecInterpreter(gm, strict)
        with torch.no_grad():
            interp.run(*example_inputs)
    finally:
        for m, flag in flags.items():
            m.training = flag
    spec = _build_spec(interp, strict)
    if check:
        from .check import check_spec

        check_spec(model, spec, example_inputs, rtol=rtol)
    if not share_heads:
        spec = PermSpec([dataclasses.replace(g, block_tie=None) for g in spec.groups])
    return spec
