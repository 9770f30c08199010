"""Handlers of torchvision's Swin transformer functions: ``_patch_merging_pad``, ``_get_relative_position_bias`` and
``shifted_window_attention`` (``torchvision/models/swin_transformer.py``).

torchvision wraps these three with ``torch.fx.wrap``, so they are leaf ``call_function`` nodes, and their bodies
cannot be traced symbolically anyway (they branch on shapes). Each handler states what the function does to
channels, read from torchvision's source:

- ``_patch_merging_pad(x)``: ``[..., H, W, C]`` padded to even H/W, its four 2x2 neighbours concatenated on the
  channel axis: ``[..., H/2, W/2, 4C]``, like ``torch.cat`` of four copies of x;
- ``_get_relative_position_bias(table, index, window_size)``: ``table[index]`` arranged as ``[1, heads, N, N]``;
  the table's rows (relative positions) are gathered at fixed positions, its columns are the heads;
- ``shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, ...)``: pad, roll and
  partition the ``[B, H, W, C]`` input into windows (spatial axes only), a fused q/k/v projection and a multi-head
  attention per window like ``nn.MultiheadAttention`` (rows of ``qkv_weight`` partitioned into q/k/v, q∪k,
  heads of ``C // num_heads`` channels, q and v heads tied), the output projection, then the windows reversed.
  The relative-position bias (``[1, heads, N, N]``) is added to the logits and v2's ``logit_scale``
  (``[heads, 1, 1]``) multiplies them: their heads axis is q's head digit.

The handlers are registered by name in ``dispatch.py`` (torchvision need not be imported).
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx

from ..data import Tap
from ..factors import Dim, Factor, TensorInfo, Unsupported, UnsupportedPart, is_permutable, none_dim, union_dims
from ..state import Call, SpecialTap, TraceState, is_tensor
from .shape import joined_dim

_SWA_ARGS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")

_LOGIT_OPERANDS = ("relative_position_bias", "logit_scale")


def _at(name: str) -> int:
    """The position of ``shifted_window_attention``'s argument ``name``."""
    return _SWA_ARGS.index(name)


def patch_merging_pad(s: TraceState, c: Call) -> TensorInfo:
    """torchvision's ``_patch_merging_pad``: ``[..., H, W, C]`` to ``[..., H/2, W/2, 4C]`` (four channel copies)."""
    x, ix, result = c.args[0], c.iargs[0], c.result
    if x.dim() < 3 or any(is_permutable(d) for d in ix[-3:-1]):
        raise Unsupported("_patch_merging_pad pads and subsamples axes -3 and -2, which must not hold channels")
    channels = x.shape[-1]
    last = joined_dim(s, [ix[-1]] * 4, [channels] * 4, 4 * channels)
    return tuple(ix[:-3]) + (none_dim(result.shape[-3]), none_dim(result.shape[-2]), last)


def relative_position_bias(s: TraceState, c: Call) -> TensorInfo:
    """torchvision's ``_get_relative_position_bias``: ``[1, heads, N, N]``, axis 1 the table's columns."""
    table, itable, result = c.args[0], c.iargs[0], c.result
    if table.dim() != 2 or result.dim() != 4 or result.shape[:2] != (1, table.shape[1]):
        raise Unsupported(f"_get_relative_position_bias of a table of shape {tuple(table.shape)} returned shape "
                          f"{tuple(result.shape)}")
    s.fix_all(itable[0])  # rows are gathered at fixed positions
    s.fix_all(c.iargs[1])  # so are the index's entries
    return ((), itable[1], none_dim(result.shape[2]), none_dim(result.shape[3]))


def _weight(s: TraceState, c: Call, name: str, rows_role: str = "output"):
    """The real tensor and info of weight argument ``name``, its axis roles set (rows produced, columns read)."""
    node = c.node_arg(_at(name), name)
    s.set_role(node, 0, rows_role)
    if is_tensor(c.arg(_at(name), name)) and c.arg(_at(name), name).dim() == 2:
        s.set_role(node, 1, "input")
    return c.arg(_at(name), name), c.info(_at(name), name)


def _whole_space(s: TraceState, dim: Dim, what: str) -> int:
    """The space of ``dim`` when it is one whole space, else Unsupported naming ``what``."""
    if len(dim) != 1 or dim[0].space is None or dim[0].stride != 1 or \
            s.sp.size[s.sp.find(dim[0].space)] != dim[0].size:
        raise Unsupported(f"shifted_window_attention's {what} is not one whole channel space")
    return dim[0].space


def _qkv_spaces(s: TraceState, c: Call, ic: Dim, channels: int, heads: int):
    """Bind ``qkv_weight``/``qkv_bias``: columns are the input channels, rows split into q/k/v; returns them."""
    w, iw = _weight(s, c, "qkv_weight")
    if tuple(w.shape) != (3 * channels, channels):
        raise Unsupported(f"shifted_window_attention with qkv_weight of shape {tuple(w.shape)} for {channels} "
                          "input channels")
    union_dims(s.sp, iw[1], ic)
    if is_tensor(c.arg(_at("qkv_bias"), "qkv_bias")):
        _, ib = _weight(s, c, "qkv_bias")
        union_dims(s.sp, ib[0], iw[0])
    rows = _whole_space(s, iw[0], "qkv_weight rows")
    cq, ck, cv = (s.sp.child_covering(rows, lo, lo + channels) for lo in (0, channels, 2 * channels))
    s.sp.union(cq, ck)
    if heads > 1:
        s.sp.add_stride(cq, channels // heads)
        s.sp.add_stride(cv, channels // heads)
        s.sp.tie(cq, cv)
    return cq, ck, cv


def _proj_dim(s: TraceState, c: Call, cv: int, channels: int) -> Dim:
    """Bind ``proj_weight``/``proj_bias``: columns are v's channels; returns the rows (the output channels)."""
    w, iw = _weight(s, c, "proj_weight")
    if tuple(w.shape) != (channels, channels):
        raise Unsupported(f"shifted_window_attention with proj_weight of shape {tuple(w.shape)} for {channels} "
                          "channels")
    union_dims(s.sp, iw[1], (Factor(cv, channels, 1),))
    if is_tensor(c.arg(_at("proj_bias"), "proj_bias")):
        _, ib = _weight(s, c, "proj_bias")
        union_dims(s.sp, ib[0], iw[0])
    return iw[0]


def _calling_module(s: TraceState, c: Call) -> Optional[str]:
    """The module whose forward calls the function with its own input (torchvision's ``ShiftedWindowAttention``):
    the innermost entry of the node's ``nn_module_stack``, provided the input was computed outside it."""
    stack = c.node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, value = list(stack.items())[-1]
    path = value[0] if isinstance(value, tuple) else key
    source = c.node_arg(0, "input")
    if isinstance(source, fx.Node):
        inside = [v[0] if isinstance(v, tuple) else k for k, v in (source.meta.get("nn_module_stack") or {}).items()]
        if any(p == path or p.startswith(path + ".") for p in inside):
            return None
    return path


def _qkv_taps(s: TraceState, c: Call, spaces, channels: int) -> None:
    """Taps of the q, k and v spaces: the calling module's input through the matching rows of ``qkv_weight``."""
    module = _calling_module(s, c)
    weight = c.node_arg(_at("qkv_weight"), "qkv_weight")
    bias = c.node_arg(_at("qkv_bias"), "qkv_bias")
    if module is None or not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return
    bias_name = s.canonical(bias.target) if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
    for space, lo in zip(spaces, (0, channels, 2 * channels)):
        linear = {"weight": s.canonical(weight.target), "bias": bias_name, "rows": (lo, lo + channels)}
        s.special_taps.append(SpecialTap(space, Tap(module=module, kind="input", channel_dim=-1, linear=linear)))


def _logit_operand(s: TraceState, value, info: TensorInfo, head: Dim, what: str) -> None:
    """An operand broadcast against the logits ``[windows, heads, N, N]`` (right-aligned): its heads axis is q's
    head digit, its other axes carry no channels."""
    if value.dim() > 4:
        raise Unsupported(f"shifted_window_attention's {what} has {value.dim()} axes; the logits have 4")
    for k in range(value.dim()):
        size, j = value.shape[k], 4 - value.dim() + k
        if size == 1:
            continue
        union_dims(s.sp, head if j == 1 else none_dim(size), info[k])


def shifted_window_attention(s: TraceState, c: Call) -> TensorInfo:
    """torchvision's ``shifted_window_attention``: windowed multi-head attention over ``[B, H, W, C]``."""
    x, ix = c.args[0], c.iargs[0]
    heads = int(c.arg(_at("num_heads"), "num_heads"))
    if x.dim() != 4 or any(is_permutable(d) for d in ix[:3]):
        raise Unsupported("shifted_window_attention pads, rolls and windows axes 0-2 of its input, which must not "
                          "hold channels")
    channels = x.shape[-1]
    if channels % heads:
        raise Unsupported(f"shifted_window_attention with {channels} channels in {heads} heads")
    cq, ck, cv = _qkv_spaces(s, c, ix[-1], channels, heads)
    out = _proj_dim(s, c, cv, channels)
    _qkv_taps(s, c, (cq, ck, cv), channels)
    head = (Factor(cq, heads, channels // heads),) if heads > 1 else ()
    result = tuple(ix[:-1]) + (out,)
    operands = [(name, c.arg(_at(name), name), c.info(_at(name), name)) for name in _LOGIT_OPERANDS]
    operands = [op for op in operands if is_tensor(op[1])]
    for name, value, info in operands:
        try:
            _logit_operand(s, value, info, head, name)
        except Unsupported as e:
            # the rest is recorded: without strict only q's heads and these operands are left unpermuted
            touched = (head,) + tuple(op[2] for op in operands)
            raise UnsupportedPart(f"its {name} meets q's heads: {e}", touched, result) from e
    return result
