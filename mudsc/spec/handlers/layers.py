"""Handlers of parametrised layers: Linear, convolutions, Batch/Group/LayerNorm, Embedding, PReLU, and of the
parameter-free leaf modules (activations, dropout, pools, upsampling), as modules and as functionals.

A layer binds its parameters' axes to the dims of the tensors it meets (``s.bind``: a ``Linear`` weight's columns
are the input's last axis) and creates a new space for the units it produces (``s.fresh``: the weight's rows).
Module handlers read the submodule from ``c.module`` and its parameter names from ``c.prefix``.
"""

from __future__ import annotations

import warnings

from ..factors import Factor, TensorInfo, Unsupported, is_permutable, none_dim, normalize, union_dims
from ..state import Call, TraceState, is_tensor
from ..views import View
from .shape import spatial_info


# -- helpers ---------------------------------------------------------------------------------------------------
def _group_norm_info(s: TraceState, ix: TensorInfo, x, groups: int, params, names=None) -> TensorInfo:
    """GroupNorm: parameters share the channel axis; ``1 < groups < channels`` splits its space into blocks."""
    c = ix[1]
    channels = x.shape[1]
    if names is not None:  # module parameters, bound by name
        for pname in names:
            s.bind(pname, 0, c, "output")
    else:
        for pd in params:
            if pd is not None:
                union_dims(s.sp, pd[0], c)
    if 1 < groups < channels:
        if len(c) == 1 and is_permutable(c) and c[0].size == channels:
            s.sp.add_stride(c[0].space, channels // groups)
        elif is_permutable(c):
            raise Unsupported("GroupNorm over a channel axis that is itself structured")
    return ix


def _module_params(c: Call, keys) -> list:
    """The qualified names of the module's parameters among ``keys`` that are not None."""
    return [c.prefix + k for k in keys if getattr(c.module, k, None) is not None]


# -- functionals -----------------------------------------------------------------------------------------------
def linear_function(s: TraceState, c: Call) -> TensorInfo:
    """``F.linear(x, weight, bias)``: weight columns are x's last axis; rows (and bias) the output's."""
    b = c.arg(2, "bias")
    iw, ib = c.info(1, "weight"), c.info(2, "bias")
    s.set_role(c.node_arg(1, "weight"), 0, "output")
    s.set_role(c.node_arg(1, "weight"), 1, "input")
    ix = c.iargs[0]
    union_dims(s.sp, iw[1], ix[-1])
    if b is not None:
        union_dims(s.sp, ib[0], iw[0])
    return ix[:-1] + (iw[0],)


def layer_norm_function(s: TraceState, c: Call) -> TensorInfo:
    """``F.layer_norm``: weight and bias axes are the normalised (last) axes of x."""
    x, ix = c.args[0], c.iargs[0]
    k = len(c.arg(1, "normalized_shape"))
    for pd in (c.info(2, "weight"), c.info(3, "bias")):
        if pd is not None:
            for j in range(k):
                union_dims(s.sp, pd[j], ix[x.dim() - k + j])
    return ix


def group_norm_function(s: TraceState, c: Call) -> TensorInfo:
    """``F.group_norm``: see :func:`_group_norm_info`."""
    params = [c.info(2, "weight"), c.info(3, "bias")]
    return _group_norm_info(s, c.iargs[0], c.args[0], c.arg(1, "num_groups"), params)


def batch_norm_function(s: TraceState, c: Call) -> TensorInfo:
    """``F.batch_norm``: statistics, weight and bias share x's channel axis (axis 1)."""
    x = c.iargs[0]
    for k, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        p = c.info(k, key)
        if p is not None:
            union_dims(s.sp, p[0], x[1])
    return x


def functional_conv(s: TraceState, c: Call):
    """``F.conv1d``/``F.conv2d``: not handled (use ``nn.Conv*`` modules)."""
    raise Unsupported("functional convolutions are not handled; use nn.Conv modules")


# -- modules ---------------------------------------------------------------------------------------------------
def linear(s: TraceState, c: Call) -> TensorInfo:
    """``nn.Linear``: weight columns are the input's last axis; rows (and bias) are a new space."""
    p, ix = c.prefix, c.iargs[0]
    s.bind(p + "weight", 1, ix[-1], "input")
    out = s.fresh(p + "weight", 0, "output")
    if c.module.bias is not None:
        s.bind(p + "bias", 0, out, "output")
    return ix[:-1] + (out,)


def _depthwise_out(s: TraceState, channels, mult: int):
    """The output channel dim of a depthwise convolution with channel multiplier ``mult``."""
    out = channels if mult == 1 else normalize(s.sp, channels + (Factor(None, mult, 1),))
    if mult > 1 and is_permutable(channels) and len(channels) != 1:
        raise Unsupported("a depthwise convolution with a channel multiplier on a structured axis")
    return out


def _grouped(s: TraceState, c: Call, channels):
    """A grouped convolution (``1 < groups < in_channels``): its weight is described by its block-diagonal dense
    form (``views.py``), so the input channels are a member on axis 1; input and output channels split into
    ``groups`` blocks whose block permutations are tied (a group's outputs read only that group's inputs)."""
    m, p = c.module, c.prefix
    s.set_view(p + "weight", View("grouped", 1, m.groups))
    s.bind(p + "weight", 1, channels, "input")
    out = s.fresh(p + "weight", 0, "output")
    s.sp.add_stride(channels[0].space, m.in_channels // m.groups)
    s.sp.add_stride(out[0].space, m.out_channels // m.groups)
    s.sp.tie(channels[0].space, out[0].space)
    return out


def conv(s: TraceState, c: Call) -> TensorInfo:
    """``nn.Conv1d/2d/3d``: dense, depthwise and grouped (block-tied) convolutions."""
    # a grouped convolution over a structured channel axis (after a channel shuffle) fixes its channels, warning
    m, p, x, ix, n = c.module, c.prefix, c.args[0], c.iargs[0], c.node
    k = len(m.kernel_size)
    axis = x.dim() - 1 - k
    channels = ix[axis]
    if m.groups == 1:
        s.bind(p + "weight", 1, channels, "input")
        out = s.fresh(p + "weight", 0, "output")
    elif m.groups == m.in_channels:
        out = _depthwise_out(s, channels, m.out_channels // m.in_channels)
        s.bind(p + "weight", 0, out, "output")
    elif len(channels) == 1 and is_permutable(channels) and channels[0].stride == 1 and \
            s.sp.size[s.sp.find(channels[0].space)] == m.in_channels:
        out = _grouped(s, c, channels)
    else:
        warnings.warn(
            f"fx node {n.name!r}: grouped convolution {n.target} (groups={m.groups}, "
            f"{m.in_channels}->{m.out_channels} channels) over a structured channel axis is traced "
            "conservatively: its input and output channels are left unpermuted", stacklevel=4)
        s.fix_all(channels)
        s.bind(p + "weight", 0, none_dim(m.out_channels), "output")
        out = none_dim(m.out_channels)
    if m.bias is not None:
        s.bind(p + "bias", 0, out, "output")
    return ix[:axis] + (out,) + tuple(none_dim(size) for size in c.result.shape[axis + 1:])


def batch_norm(s: TraceState, c: Call) -> TensorInfo:
    """``nn.BatchNorm*``: affine parameters and running statistics are the input's channel axis (axis 1)."""
    ix = c.iargs[0]
    for key in ("weight", "bias", "running_mean", "running_var"):
        if getattr(c.module, key, None) is not None:
            s.bind(c.prefix + key, 0, ix[1], "output")
    return ix


def group_norm(s: TraceState, c: Call) -> TensorInfo:
    """``nn.GroupNorm``: see :func:`_group_norm_info`."""
    names = _module_params(c, ("weight", "bias"))
    return _group_norm_info(s, c.iargs[0], c.args[0], c.module.num_groups, [], names=names)


def layer_norm(s: TraceState, c: Call) -> TensorInfo:
    """``nn.LayerNorm``: weight and bias axes are the normalised (last) axes of the input."""
    x, ix = c.args[0], c.iargs[0]
    k = len(c.module.normalized_shape)
    for pname in _module_params(c, ("weight", "bias")):
        for j in range(k):
            s.bind(pname, j, ix[x.dim() - k + j], "output")
    return ix


def embedding(s: TraceState, c: Call) -> TensorInfo:
    """``nn.Embedding``: the table's rows are token ids (not permutable); its columns are a new space."""
    p = c.prefix
    s.bind(p + "weight", 0, none_dim(c.module.num_embeddings), "input")
    return c.iargs[0] + (s.fresh(p + "weight", 1, "output"),)


def prelu(s: TraceState, c: Call) -> TensorInfo:
    """``nn.PReLU``: a per-channel slope shares the input's channel axis."""
    ix = c.iargs[0]
    if c.module.num_parameters > 1:
        s.bind(c.prefix + "weight", 0, ix[1], "output")
    return ix


def elementwise_module(s: TraceState, c: Call) -> TensorInfo:
    """Activations, dropout, identity: the output has the input's info."""
    if is_tensor(c.result) and c.result.shape == c.args[0].shape:
        return c.iargs[0]
    raise Unsupported("an elementwise module changed its input's shape")


def pool(k: int):
    """A handler for a pooling/upsampling module over the last ``k`` axes."""

    def handler(s: TraceState, c: Call) -> TensorInfo:
        """Pool the last ``k`` axes (``return_indices`` is not handled); the channel axes are kept."""
        if getattr(c.module, "return_indices", False):
            raise Unsupported("pooling with return_indices is not handled")
        return spatial_info(c.iargs[0], c.args[0], k, c.result)

    return handler


def upsample(s: TraceState, c: Call) -> TensorInfo:
    """``nn.Upsample``: every axis after batch and channel is spatial."""
    x = c.args[0]
    return spatial_info(c.iargs[0], x, x.dim() - 2, c.result)
