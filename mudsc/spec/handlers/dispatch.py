"""The op tables and the dispatch of one fx node to its handler.

Layout. Three registries map an op to a handler ``handler(state, call) -> tensor info``:

- :data:`FUNCTION_HANDLERS`: ``call_function`` targets (``{operator.add: elementwise, torch.cat: cat,
  F.linear: linear_function, ...}``), looked up by identity;
- :data:`NAMED_FUNCTION_HANDLERS`: functions of optional libraries (torchvision's ``stochastic_depth`` and the
  Swin functions it wraps with ``torch.fx.wrap``, ``swin.py``), keyed by
  ``"module.qualname"`` so that the library need not be imported; looked up when the identity lookup fails;
- :data:`METHOD_HANDLERS`: tensor method names (``{"view": reshape, "unbind": unbind, ...}``);
- :data:`MODULE_HANDLERS`: leaf module types (``{nn.Linear: linear, nn.Conv2d: conv, ...}``), looked up along the
  module's MRO, so the most specific registered class wins (``nn.UpsamplingNearest2d`` before ``nn.Upsample``,
  ``nn.BatchNorm2d`` through ``_BatchNorm``).

The op sets below (elementwise functions, methods and modules, pools, reshapes, reductions) fill the registries;
an op that appears twice is a programming error (:func:`_table` raises). :func:`handle_node` handles the fx node
kinds: placeholders carry no channels, ``get_attr`` reads a parameter's dims, the output fixes what it returns,
leaf modules also record their input/output as tap candidates.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..factors import Unsupported
from ..state import Call, ModuleTap, TraceState, is_tensor
from .attention import matmul, multihead_attention, scaled_dot_product_attention
from .layers import (batch_norm, batch_norm_function, conv, elementwise_module, embedding, functional_conv,
                     group_norm, group_norm_function, layer_norm, layer_norm_function, linear, linear_function, pool,
                     prelu, upsample)
from .shape import (cat, elementwise, expand, getitem, interpolate, matrix_transpose, no_info, pad, permute_function,
                    permute_method, reduce, reshape, roll, spatial, split, stack, stochastic_depth, transpose, unbind)
from .swin import patch_merging_pad, relative_position_bias, shifted_window_attention

Handler = Callable[[TraceState, Call], Any]

ELEMENTWISE_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.floordiv, operator.mod,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.relu, torch.sigmoid, torch.tanh, torch.exp,
    torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.clamp, torch.where, torch.erf, torch.pow, torch.square,
    torch.softmax, torch.log_softmax, torch.maximum, torch.minimum,
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
    F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.softmax, F.log_softmax, F.hardtanh, F.selu,
)
ELEMENTWISE_METHODS = (
    "add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "clamp",
    "pow", "square", "softmax", "log_softmax", "add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "clamp_",
    "contiguous", "clone", "float", "double", "half", "bfloat16", "to", "type_as", "detach", "requires_grad_",
    "masked_fill", "erf", "type", "cpu", "cuda",
)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softmax, nn.LogSoftmax, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Hardtanh, nn.SELU,
)
POOL_MODULES = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.UpsamplingNearest2d,
        nn.UpsamplingBilinear2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}
POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.avg_pool1d: 1,
    F.avg_pool2d: 2, F.avg_pool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
}
RESHAPE_METHODS = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
REDUCTION_METHODS = ("mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod")


def _table(*entries: Mapping[Any, Handler]) -> Dict[Any, Handler]:
    """Merge ``{op: handler}`` maps into one registry; an op registered twice raises ``ValueError``."""
    out: Dict[Any, Handler] = {}
    for entry in entries:
        for op, handler in entry.items():
            if op in out:
                raise ValueError(f"op {op!r} is registered twice")
            out[op] = handler
    return out


def _all(ops: Iterable, handler: Handler) -> Dict[Any, Handler]:
    """``{op: handler}`` for every op in ``ops``."""
    return {op: handler for op in ops}


FUNCTION_HANDLERS: Dict[Any, Handler] = _table(
    {operator.getitem: getitem, getattr: no_info, torch._assert: no_info},
    _all(ELEMENTWISE_FUNCTIONS, elementwise),
    _all((torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze), reshape),
    _all((torch.transpose, torch.swapaxes), transpose),
    {torch.permute: permute_function, torch.cat: cat, torch.concat: cat, torch.stack: stack},
    _all((torch.matmul, operator.matmul, torch.bmm), matmul),
    {F.scaled_dot_product_attention: scaled_dot_product_attention},
    {F.linear: linear_function, F.layer_norm: layer_norm_function,
     F.group_norm: group_norm_function, F.batch_norm: batch_norm_function},
    {fn: spatial(k) for fn, k in POOL_FUNCTIONS.items()},
    {F.interpolate: interpolate, F.pad: pad, torch.roll: roll},
    _all((torch.mean, torch.sum, torch.amax, torch.amin), reduce),
    _all((F.conv2d, F.conv1d), functional_conv),
)

_TV_SWIN = "torchvision.models.swin_transformer."
NAMED_FUNCTION_HANDLERS: Dict[str, Handler] = _table(
    {"torchvision.ops.stochastic_depth.stochastic_depth": stochastic_depth},
    {_TV_SWIN + "_patch_merging_pad": patch_merging_pad,
     _TV_SWIN + "_get_relative_position_bias": relative_position_bias,
     _TV_SWIN + "shifted_window_attention": shifted_window_attention},
)

METHOD_HANDLERS: Dict[str, Handler] = _table(
    _all(("size", "dim", "numel", "__len__"), no_info),
    _all(ELEMENTWISE_METHODS, elementwise),
    _all(RESHAPE_METHODS, reshape),
    _all(("transpose", "swapaxes"), transpose),
    {"permute": permute_method, "t": matrix_transpose, "unbind": unbind, "roll": roll},
    _all(("expand", "expand_as", "broadcast_to"), expand),
    _all(("chunk", "split", "tensor_split"), split),
    _all(REDUCTION_METHODS, reduce),
)

MODULE_HANDLERS: Dict[type, Handler] = _table(
    {nn.Linear: linear},
    _all((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv),
    {nn.modules.batchnorm._BatchNorm: batch_norm, nn.GroupNorm: group_norm,
     nn.LayerNorm: layer_norm, nn.Embedding: embedding,
     nn.MultiheadAttention: multihead_attention, nn.PReLU: prelu},
    _all(ELEMENTWISE_MODULES, elementwise_module),
    *(_all(types, pool(k)) for k, types in POOL_MODULES.items()),
    {nn.Upsample: upsample, nn.Flatten: reshape, nn.Unflatten: reshape},
)


def module_handler(module: nn.Module) -> Optional[Handler]:
    """The handler registered for the most specific class in ``type(module)``'s MRO (None if none is)."""
    for cls in type(module).__mro__:
        handler = MODULE_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


# -- fx node kinds ---------------------------------------------------------------------------------------------
def _placeholder(s: TraceState, c: Call):
    """A model input: nothing permutable."""
    return s.none_info(c.result)


def _get_attr(s: TraceState, c: Call):
    """A parameter or buffer read: its per-axis dims (fresh spaces where no op met them yet)."""
    if is_tensor(c.result) and s.has_tensor(c.node.target):
        return s.param_info(c.node.target)
    return s.none_info(c.result)


def _output(s: TraceState, c: Call):
    """The model output: everything it returns keeps the identity."""
    s.fix_all(c.iargs)
    return None


def _call_module(s: TraceState, c: Call):
    """A leaf module: its registered handler; its first tensor input and tensor output become tap candidates."""
    n = c.node
    first = next(((node, i) for node, a, i in zip(n.args, c.args, c.iargs) if is_tensor(a)), None)
    if first is not None:
        source = first[0].name if isinstance(first[0], fx.Node) else f"{n.name}.arg"
        s.module_taps.append(ModuleTap(n.target, "input", first[1], source))
    handler = module_handler(c.module)
    if handler is None:
        raise Unsupported(f"no handler for leaf module type {type(c.module).__name__}")
    out = handler(s, c)
    if is_tensor(c.result):
        s.module_taps.append(ModuleTap(n.target, "output", out, n.name))
    return out


def _has_tensor(value) -> bool:
    """Whether ``value`` is a tensor or a list/tuple holding one."""
    return is_tensor(value) or (isinstance(value, (list, tuple)) and any(is_tensor(x) for x in value))


def _touches_tensors(c: Call) -> bool:
    """Whether a function/method call reads or returns tensors (else it is shape arithmetic or an assert)."""
    return any(_has_tensor(a) for a in list(c.args) + list(c.kwargs.values())) or _has_tensor(c.result)


def qualified_name(fn) -> str:
    """``"module.qualname"`` of a function (the key of :data:`NAMED_FUNCTION_HANDLERS`)."""
    return f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', getattr(fn, '__name__', fn))}"


def _call_function(s: TraceState, c: Call):
    """A ``call_function`` node: the handler registered for its target."""
    if not _touches_tensors(c):
        return None
    fn = c.node.target
    handler = FUNCTION_HANDLERS.get(fn) or NAMED_FUNCTION_HANDLERS.get(qualified_name(fn))
    if handler is None:
        raise Unsupported(f"no handler for function {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)}")
    return handler(s, c)


def _call_method(s: TraceState, c: Call):
    """A ``call_method`` node: the handler registered for the method name."""
    if not _touches_tensors(c):
        return None
    name = c.node.target
    if not is_tensor(c.args[0]):
        raise Unsupported(f"method {name!r} called on a non-tensor")
    handler = METHOD_HANDLERS.get(name)
    if handler is None:
        raise Unsupported(f"no handler for tensor method {name!r}")
    return handler(s, c)


NODE_HANDLERS: Dict[str, Handler] = {
    "placeholder": _placeholder, "get_attr": _get_attr, "output": _output, "call_module": _call_module,
    "call_function": _call_function, "call_method": _call_method,
}


def handle_node(s: TraceState, c: Call):
    """The tensor info of node ``c.node``'s result, recording the node's constraints in ``s``."""
    handler = NODE_HANDLERS.get(c.node.op)
    if handler is None:
        raise Unsupported(f"op kind {c.node.op!r} is not handled")
    return handler(s, c)
