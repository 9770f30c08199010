"""Handlers of ops that move channels between axes without mixing them: elementwise, reshapes, transposes,
expands, pools, reductions, concatenation, stacking, splitting, indexing, padding and rolling.

Each handler maps a :class:`~mudsc.spec.state.Call` (real arguments, their tensor infos, the real result) to the
result's tensor info, recording identities in the trace state (``s.sp``): an elementwise op identifies its
operands' broadcast axes, a reshape regroups the factor list into the new axis lengths, ``cat`` creates a space
partitioned into its operands' spaces, slicing a fused axis picks a child space (see ``factors.py`` for dims).
"""

from __future__ import annotations

from typing import List

import torch

from ..factors import Factor, TensorInfo, Unsupported, broadcast, dim_size, is_permutable, none_dim, refine, \
    running_sums, space_dim, union_dims
from ..state import Call, TraceState, is_tensor


# -- helpers shared by several handlers ------------------------------------------------------------------------
def reshape_info(s: TraceState, ix: TensorInfo, result) -> TensorInfo:
    """The info of ``result``, a reshape of a tensor of info ``ix`` (row-major factors regrouped)."""
    factors = [f for d in ix for f in d]
    return tuple(refine(s.sp, factors, list(result.shape)))


def transpose_info(ix: TensorInfo, ndim: int, a: int, b: int) -> TensorInfo:
    """``ix`` with axes ``a`` and ``b`` swapped."""
    a, b = a % ndim, b % ndim
    out = list(ix)
    out[a], out[b] = out[b], out[a]
    return tuple(out)


def permute_info(ix: TensorInfo, order) -> TensorInfo:
    """``ix`` reordered by ``order``."""
    order = [int(o) % len(ix) for o in order]
    return tuple(ix[o] for o in order)


def spatial_info(ix: TensorInfo, x, k: int, result) -> TensorInfo:
    """Pools/upsampling: the last ``k`` axes are spatial; channel axes are kept."""
    if result.dim() != x.dim() or result.shape[: x.dim() - k] != x.shape[: x.dim() - k]:
        raise Unsupported("a spatial op changed non-spatial axes")
    return ix[: x.dim() - k] + tuple(none_dim(size) for size in result.shape[x.dim() - k:])


def reduce_info(x, ix: TensorInfo, dim, keepdim: bool) -> TensorInfo:
    """A reduction over ``dim`` (all axes when None): reduced axes vanish, or become size 1 with ``keepdim``."""
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


class _Shape:
    """Adapter giving :func:`select` the current (partially indexed) axis sizes during ``__getitem__``."""

    def __init__(self, info, x, d, size):
        self.shape = [dim_size(dd) for dd in info]
        self.shape[d] = size


def _rename_parts(s: TraceState, info: List, d: int, root: int, child: int, stride: int) -> None:
    """In every axis but ``d``, digits of ``root`` become digits of ``child`` (a fused axis was sliced)."""
    for j, other in enumerate(info):
        if j == d:
            continue
        new_other = []
        for f in other:
            if f.space is not None and s.sp.find(f.space) == root:
                if f.stride >= stride:
                    raise Unsupported("a fused axis is selected while another axis holds its parts")
                f = Factor(child, f.size, f.stride)
            new_other.append(f)
        info[j] = tuple(new_other)


def select(s: TraceState, ix: TensorInfo, x, d: int, lo: int, hi: int, keepdim: bool) -> TensorInfo:
    """Channels ``[lo, hi)`` of axis ``d``: a slice of a top digit partitions its space."""
    dim = ix[d]
    out = list(ix)
    if not is_permutable(dim):
        new = none_dim(hi - lo) if keepdim else None
    elif lo == 0 and hi == x.shape[d]:
        new = dim if keepdim else None
    elif len(dim) == 1 and s.sp.size[s.sp.find(dim[0].space)] == dim[0].size * dim[0].stride:
        space, size, stride = dim[0]
        root = s.sp.find(space)
        child = s.sp.child_covering(root, lo * stride, hi * stride)
        _rename_parts(s, out, d, root, child, stride)
        new = (Factor(child, hi - lo, stride),) if keepdim and hi - lo > 1 else (() if keepdim else None)
        if keepdim and hi - lo > 1 and stride > 1:
            s.sp.add_stride(child, stride)
    else:
        raise Unsupported(f"indexing channels [{lo}, {hi}) of a structured axis of size {x.shape[d]}")
    if new is None:
        del out[d]
    else:
        out[d] = new
    return tuple(out)


def split_results(s: TraceState, ix: TensorInfo, x, dim: int, sizes, keepdim: bool):
    """The infos of consecutive slices of ``sizes`` along ``dim`` (``unbind``, ``chunk``, ``split``)."""
    dim = dim % x.dim()
    outs, lo = [], 0
    for size in sizes:
        outs.append(select(s, ix, x, dim, lo, lo + size, keepdim))
        lo += size
    return tuple(outs)


def _expand_index(index, ndim: int) -> list:
    """A basic index as one entry per axis of a ``ndim``-axis tensor (``...`` expanded), ``None`` kept."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(is_tensor(i) for i in index):
        raise Unsupported("advanced (tensor) indexing")
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded += [slice(None)] * (ndim - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (ndim - sum(1 for i in expanded if i is not None))
    return expanded


def _tensor_positions(index) -> List[int]:
    """The positions of the tensor entries of an index (``x[idx]`` or ``x[a, idx, ...]``)."""
    entries = index if isinstance(index, tuple) else (index,)
    return [j for j, i in enumerate(entries) if is_tensor(i)]


def advanced_index_info(s: TraceState, x, ix: TensorInfo, index) -> TensorInfo:
    """``x[..., idx, ...]``: one integer tensor (or boolean mask) among slices and ``...``. The axis an integer
    tensor indexes is gathered at fixed positions, so its spaces are fixed and the index's axes (no channels) take
    its place; a mask must cover axes without channels and leaves one axis of its ``True`` count. The sliced axes
    are handled as in basic indexing."""
    entries = index if isinstance(index, tuple) else (index,)
    where = _tensor_positions(index)
    if len(where) > 1:
        raise Unsupported(f"indexing with {len(where)} tensor indices")
    if not all(i is Ellipsis or isinstance(i, slice) or is_tensor(i) for i in entries):
        raise Unsupported("a tensor index combined with integer or None indices")
    t = entries[where[0]]
    mask = t.dtype == torch.bool
    if t.dtype.is_floating_point or t.dtype.is_complex or (mask and t.dim() == 0):
        raise Unsupported(f"a {t.dim()}-d tensor index of dtype {t.dtype}")
    width = t.dim() if mask else 1
    before, after = entries[: where[0]], entries[where[0] + 1:]
    if any(i is Ellipsis for i in before):
        start = x.dim() - width - sum(1 for i in after if i is not Ellipsis)
    else:
        start = len(before)
    info = getitem_info(s, x, ix, before + (slice(None),) * width + after)
    indexed = info[start: start + width]
    if mask:
        if any(is_permutable(d) for d in indexed):
            raise Unsupported(f"a boolean mask indexes axes {start}..{start + width - 1} of a tensor, which hold "
                              "channels")
        new = (none_dim(int(t.sum())),)
    else:
        s.fix_all(indexed)
        new = tuple(none_dim(n) for n in t.shape)
    return tuple(info[:start]) + new + tuple(info[start + width:])


def getitem_info(s: TraceState, x, ix, index):
    """``x[index]``: basic indexing of a tensor (ints, slices, None, ...), one tensor index (see
    :func:`advanced_index_info`), or an item of a tuple of infos."""
    if not is_tensor(x):
        if isinstance(ix, (tuple, list)) and isinstance(index, (int, slice)):
            return ix[index]
        return None
    if _tensor_positions(index):
        return advanced_index_info(s, x, ix, index)
    info = list(ix)
    d = 0  # position in the current (partially indexed) info
    src = 0  # axis of x
    for i in _expand_index(index, x.dim()):
        if i is None:
            info.insert(d, ())
            d += 1
            continue
        size = x.shape[src]
        if isinstance(i, int):
            k = i % size
            info = list(select(s, tuple(info), _Shape(info, x, d, size), d, k, k + 1, keepdim=False))
        elif isinstance(i, slice):
            start, stop, step = i.indices(size)
            if step != 1:
                if not is_permutable(info[d]):
                    info[d] = none_dim(len(range(start, stop, step)))
                else:
                    raise Unsupported("strided slicing of a channel axis")
            else:
                info = list(select(s, tuple(info), _Shape(info, x, d, size), d, start, stop, keepdim=True))
            d += 1
        else:
            raise Unsupported(f"index {i!r}")
        src += 1
    return tuple(info)


def _cat_dim(c: Call) -> int:
    """The ``dim`` argument of ``cat``/``stack`` (default 0)."""
    return c.kwargs.get("dim", c.args[1] if len(c.args) > 1 else 0)


# -- handlers --------------------------------------------------------------------------------------------------
def no_info(s: TraceState, c: Call):
    """Ops whose result carries no channels (``getattr``, ``torch._assert``, ``x.size()``...)."""
    return None


def elementwise(s: TraceState, c: Call) -> TensorInfo:
    """A broadcasting elementwise op: identify the tensor operands' right-aligned axes."""
    values = list(c.args) + list(c.kwargs.values())
    infos = list(c.iargs) + list(c.ikwargs.values())
    pairs = [(i, a) for a, i in zip(values, infos) if is_tensor(a)]
    if not is_tensor(c.result):
        raise Unsupported("an elementwise op did not return a tensor")
    return broadcast(s.sp, pairs, c.result.shape)


def stochastic_depth(s: TraceState, c: Call) -> TensorInfo:
    """torchvision's ``stochastic_depth(x, p, mode, training)``: x, or x times per-sample noise: x's info."""
    # the noise (training only) has shape [N, 1, ...] ("row") or [1, ...] ("batch"): it never mixes channels
    if not is_tensor(c.result) or c.result.shape != c.args[0].shape:
        raise Unsupported("stochastic_depth changed its input's shape")
    return c.iargs[0]


def reshape(s: TraceState, c: Call) -> TensorInfo:
    """``view``/``reshape``/``flatten``/``squeeze``... (and ``nn.Flatten``): regroup the input's factors."""
    return reshape_info(s, c.iargs[0], c.result)


def transpose(s: TraceState, c: Call) -> TensorInfo:
    """``transpose``/``swapaxes``: swap two axes."""
    return transpose_info(c.iargs[0], c.args[0].dim(), c.args[1], c.args[2])


def permute_function(s: TraceState, c: Call) -> TensorInfo:
    """``torch.permute(x, dims)``: reorder the axes."""
    return permute_info(c.iargs[0], c.args[1])


def permute_method(s: TraceState, c: Call) -> TensorInfo:
    """``x.permute(*dims)`` or ``x.permute(dims)``: reorder the axes."""
    order = c.args[1:] if not isinstance(c.args[1], (tuple, list)) else c.args[1]
    return permute_info(c.iargs[0], order)


def matrix_transpose(s: TraceState, c: Call) -> TensorInfo:
    """``x.t()``: swap the two axes of a matrix (a no-op below two axes)."""
    x, ix = c.args[0], c.iargs[0]
    return transpose_info(ix, x.dim(), 0, 1) if x.dim() == 2 else ix


def expand(s: TraceState, c: Call) -> TensorInfo:
    """``expand``/``expand_as``/``broadcast_to``: kept axes keep their dims, new or grown axes carry none."""
    x, ix, result = c.args[0], c.iargs[0], c.result
    out = []
    nd = result.dim()
    for j in range(nd):
        k = j - (nd - x.dim())
        if k >= 0 and x.shape[k] == result.shape[j]:
            out.append(ix[k])
        else:
            out.append(none_dim(result.shape[j]))
    return tuple(out)


def reduce(s: TraceState, c: Call) -> TensorInfo:
    """``mean``/``sum``/``amax``... over ``dim``: the reduced axes vanish (or stay with size 1)."""
    return reduce_info(c.args[0], c.iargs[0], c.arg(1, "dim"), c.kwargs.get("keepdim", False))


def joined_dim(s: TraceState, parts, sizes, total: int):
    """The dim of an axis joining ``parts`` (dims of lengths ``sizes``) end to end: a new space partitioned into
    one child per part, each identified with its part (none if no part holds channels)."""
    if not any(is_permutable(part) for part in parts):
        return none_dim(total)
    space = s.sp.new(total, s.node.name)
    cuts = list(running_sums(sizes))[:-1]
    children = s.sp.partition(space, cuts)
    nonempty = [pt for pt, size in zip(parts, sizes) if size > 0]
    for (lo, hi, child), part in zip(children, nonempty):
        union_dims(s.sp, space_dim(child, hi - lo), part)
    return (Factor(space, total, 1),)


def cat(s: TraceState, c: Call) -> TensorInfo:
    """``torch.cat``: other axes are identified; the joined axis is a new space partitioned into the parts."""
    tensors, infos, result = c.args[0], c.iargs[0], c.result
    dim = _cat_dim(c) % result.dim()
    for j in range(result.dim()):
        if j == dim:
            continue
        base = infos[0][j]
        for info in infos[1:]:
            base = union_dims(s.sp, base, info[j])
    sizes = [t.shape[dim] for t in tensors]
    cat_dim = joined_dim(s, [info[dim] for info in infos], sizes, result.shape[dim])
    return tuple(cat_dim if j == dim else infos[0][j] for j in range(result.dim()))


def stack(s: TraceState, c: Call) -> TensorInfo:
    """``torch.stack``: the operands' axes are identified; the new axis carries no channels."""
    tensors, infos, result = c.args[0], c.iargs[0], c.result
    dim = _cat_dim(c) % result.dim()
    base = list(infos[0])
    for info in infos[1:]:
        base = [union_dims(s.sp, a, b) for a, b in zip(base, info)]
    return tuple(base[:dim]) + (none_dim(len(tensors)),) + tuple(base[dim:])


def unbind(s: TraceState, c: Call):
    """``x.unbind(dim)``: one info per index of ``dim`` (a fused axis yields its child spaces)."""
    x = c.args[0]
    dim = c.arg(1, "dim") or 0
    return split_results(s, c.iargs[0], x, dim, [1] * x.shape[dim], keepdim=False)


def split(s: TraceState, c: Call):
    """``chunk``/``split``/``tensor_split`` along ``dim``: one info per part."""
    dim = c.arg(2, "dim") or 0
    sizes = [r.shape[dim] for r in c.result]
    return split_results(s, c.iargs[0], c.args[0], dim, sizes, keepdim=True)


def getitem(s: TraceState, c: Call):
    """``operator.getitem``: tensor indexing (basic, or by one index tensor), or an item of a tuple result."""
    out = getitem_info(s, c.args[0], c.iargs[0], c.args[1])
    if is_tensor(c.args[0]):
        iindex = c.iargs[1] if isinstance(c.args[1], tuple) else (c.iargs[1],)
        for j in _tensor_positions(c.args[1]):
            s.fix_all(iindex[j])  # the index's entries are positions: permuting them would move the gather
    return out


def pad(s: TraceState, c: Call) -> TensorInfo:
    """``F.pad``: padded (or cropped) axes carry no channels (a padded channel axis is refused); others are kept."""
    x, ix, amounts = c.args[0], c.iargs[0], c.arg(1, "pad")
    out = list(ix)
    for k in range(len(amounts) // 2):
        axis = x.dim() - 1 - k
        lo, hi = int(amounts[2 * k]), int(amounts[2 * k + 1])
        if lo == 0 and hi == 0:
            continue
        if is_permutable(ix[axis]):
            raise Unsupported(f"F.pad pads axis {axis}, which holds channels, by ({lo}, {hi})")
        out[axis] = none_dim(c.result.shape[axis])
    return tuple(out)


def roll(s: TraceState, c: Call) -> TensorInfo:
    """``torch.roll``/``x.roll``: rolled axes (all without ``dims``) must carry no channels; every axis is kept."""
    # without dims the flattened tensor is rolled, which moves entries across every axis
    x, ix = c.args[0], c.iargs[0]
    shifts, dims = c.arg(1, "shifts"), c.arg(2, "dims")
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    if dims is None or (isinstance(dims, (tuple, list)) and not dims):
        rolled = list(range(x.dim())) if x.numel() and any(int(t) % x.numel() for t in shifts) else []
    else:
        dims = [dims] if isinstance(dims, int) else list(dims)
        rolled = [d % x.dim() for t, d in zip(shifts, dims) if int(t) % x.shape[d]]
    for d in rolled:
        if is_permutable(ix[d]):
            raise Unsupported(f"torch.roll rolls axis {d}, which holds channels")
    return ix


def spatial(k: int):
    """A handler for a function pooling/resizing the last ``k`` axes of its first argument."""

    def handler(s: TraceState, c: Call) -> TensorInfo:
        """Pool/resize the last ``k`` axes; the channel axes are kept."""
        return spatial_info(c.iargs[0], c.args[0], k, c.result)

    return handler


def interpolate(s: TraceState, c: Call) -> TensorInfo:
    """``F.interpolate``: every axis after batch and channel is spatial."""
    return spatial_info(c.iargs[0], c.args[0], c.args[0].dim() - 2, c.result)
