"""Model transforms driven by a PermSpec: permute one model, or merge N models with per-group unit maps.

``permute_model``: for every group g with ``perm: int64[size]`` (new unit j takes old unit ``perm[j]``), every
member axis is re-indexed with ``index_select``.

``apply_maps`` (ALGORITHM.md §6.2, ZipIt!'s ``M (blockdiag W) U``): with N models and, per group, ``labels:
int64[N·Om]`` (model-major) and K merged units, let ``U_i[u, k] = [labels[i·Om + u] == k]`` and
``M_i = U_i / (c + eps)`` where ``c[k]`` counts the units of all models mapped to k. Each model's tensor is
transformed with ``N·M_iᵀ`` on output-side axes (cluster means, written as segment sums with ``index_add``) and
``U_i`` on input-side axes (segment sums of the columns merged together), then the N results are averaged:
``W* = Σ_i M_iᵀ W_i U_i`` (``1/N · Σ_i W_i U_i`` for input-only tensors such as a classifier). Tensors in no group
are averaged. Deviation from the original: ``eps`` defaults to 0 (the original keeps ``1e-5``, a 5e-6 relative
shrink per output axis; pass ``merge_eps=1e-5`` for parity) so that exact permutation maps recover a model
exactly. Module attributes (features, channels, normalized_shape, heads' ``head_dim`` ...) follow the new widths.

Tensors with a view (``spec.views``: a grouped convolution's weight, a per-head table) are transformed in their
dense form and stored back compactly (``views.py``).

Tied tensors (one parameter under several names, ``dec.weight = emb.weight``) are transformed once, under the name
``named_parameters()`` gives, and stay one tensor in the result: ``permute_model`` permutes a deep copy in place,
``apply_maps`` puts each merged tensor at every place that held the original.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..maps import merge_scale
from .data import Group, Member, PermSpec
from .views import compact, dense_shape, expand


def _named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


def _tensor_slots(model: nn.Module) -> Dict[str, List[Tuple[nn.Module, str]]]:
    """``{name: [(module, attribute)]}`` per parameter/buffer (deduplicated names, as :func:`_named_tensors`):
    every place that holds the tensor; a tied tensor (``dec.weight = emb.weight``) has several."""
    places: Dict[int, List[Tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for attribute, t in store.items():
                if t is not None:
                    places.setdefault(id(t), []).append((module, attribute))
    return {name: places[id(t)] for name, t in _named_tensors(model).items()}


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, slots=None) -> None:
    """Replace parameter/buffer ``name`` (possibly with a new shape), keeping its kind and requires_grad, at every
    place that holds it (``slots`` from :func:`_tensor_slots`, computed when not given): tied tensors stay tied."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        old = module._parameters[leaf]
        new = nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad)
    elif leaf in module._buffers:
        new = value.to(module._buffers[leaf].dtype)
    else:
        raise ValueError(f"{name!r} is neither a parameter nor a buffer of {type(module).__name__}")
    places = (slots if slots is not None else _tensor_slots(model)).get(name, [(module, leaf)])
    for holder, attribute in places:
        if attribute in holder._parameters:
            holder._parameters[attribute] = new
        else:
            holder._buffers[attribute] = new


def _check_members(spec: PermSpec, tensors: Dict[str, torch.Tensor], what: str) -> None:
    """Raise unless every member names a tensor of ``what`` whose (dense, for a view) shape holds it."""
    for name in spec.views:
        if name not in tensors:
            raise ValueError(f"the spec has a view of {name!r}, which is not a parameter or buffer of {what}")
    for g in spec.groups:
        for m in g.members:
            if m.name not in tensors:
                raise ValueError(f"group {g.name!r} names {m.name!r}, which is not a parameter or buffer of {what}")
            view = spec.views.get(m.name)
            shape = tuple(tensors[m.name].shape)
            shape = dense_shape(shape, view, m.name) if view is not None else shape
            if m.axis >= len(shape) or m.extent(g.size) > shape[m.axis]:
                raise ValueError(f"group {g.name!r}: member {m.name} axis {m.axis} (layout {m}) does not fit the "
                                 f"tensor's {'dense ' if view else ''}shape {shape} with group size {g.size}")


def permute_model(model: nn.Module, spec: PermSpec, permutations: Mapping[str, torch.Tensor],
                  inplace: bool = False) -> nn.Module:
    """A deep copy of ``model`` with every group's units permuted.

    Args:
        permutations: ``{group name: LongTensor[size]}``; new unit j takes old unit ``perm[j]``. Groups left out
            keep the identity.
        inplace: permute ``model`` itself (and return it) instead of a copy.
    """
    unknown = sorted(set(permutations) - {g.name for g in spec.groups})
    if unknown:
        raise ValueError(f"permutations name groups that are not in the spec: {unknown}")
    perms = {}
    for g in spec.groups:
        if g.name not in permutations:
            continue
        p = torch.as_tensor(permutations[g.name], dtype=torch.long).cpu()
        if p.shape != (g.size,) or not torch.equal(torch.sort(p).values, torch.arange(g.size)):
            raise ValueError(f"permutation for group {g.name!r} must be a permutation of range({g.size}), got shape "
                             f"{tuple(p.shape)}")
        perms[g.name] = p
    new = model if inplace else copy.deepcopy(model)
    tensors = _named_tensors(new)
    _check_members(spec, tensors, type(model).__name__)
    scratch: Dict[tuple, torch.Tensor] = {}  # per (dtype, device): one buffer the gathers write into
    with torch.no_grad():
        for name in spec.tensor_names():
            stored, view = tensors[name], spec.views.get(name)
            t = expand(stored, view, name) if view is not None else stored
            index: Dict[int, torch.Tensor] = {}
            for member, group in spec.members_of(name):
                if group.name not in perms:
                    continue
                positions = member.indices(group.size)
                idx = index.setdefault(member.axis, torch.arange(t.shape[member.axis]))
                idx[positions.reshape(-1)] = positions[:, perms[group.name], :].reshape(-1)
            for axis, idx in index.items():
                key = (t.dtype, t.device)
                if key not in scratch or scratch[key].numel() < t.numel():
                    scratch[key] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
                gathered = scratch[key][:t.numel()].view(t.shape)
                torch.index_select(t, axis, idx.to(t.device), out=gathered)
                t.copy_(gathered)
            if view is not None and index:
                stored.copy_(compact(t, view, name))
    return new


def _labels_of(spec: PermSpec, maps: Mapping[str, object], num_models: int) -> Dict[str, Tuple[torch.Tensor, int]]:
    unknown = sorted(set(maps) - {g.name for g in spec.groups})
    if unknown:
        raise ValueError(f"maps name groups that are not in the spec: {unknown}")
    out = {}
    for g in spec.groups:
        if g.name not in maps:
            out[g.name] = (torch.arange(g.size).repeat(num_models), g.size)
            continue
        entry = maps[g.name]
        if not hasattr(entry, "labels") or not hasattr(entry, "num_outputs"):
            raise TypeError(f"maps[{g.name!r}] must have .labels and .num_outputs (a MatchResult), "
                            f"got {type(entry).__name__}")
        labels = torch.as_tensor(np.asarray(entry.labels), dtype=torch.long)
        k = int(entry.num_outputs)
        if labels.shape != (num_models * g.size,):
            raise ValueError(f"maps[{g.name!r}].labels has shape {tuple(labels.shape)}; group {g.name!r} with "
                             f"{num_models} models of {g.size} units needs ({num_models * g.size},)")
        if k < 1 or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"maps[{g.name!r}].labels must lie in [0, num_outputs={k}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if g.num_blocks > 1 and k % g.num_blocks:
            raise ValueError(f"group {g.name!r} has {g.num_blocks} blocks but maps give {k} merged units, "
                             "which do not split into equal blocks")
        out[g.name] = (labels, k)
    return out


def _transform_region(region: torch.Tensor, labels: torch.Tensor, k: int, scale) -> torch.Tensor:
    """``region: [outer, Om, inner, rest]`` -> ``[outer, K, inner, rest]`` by segment sums (times ``scale[K]``)."""
    out = region.new_zeros(region.shape[0], k, *region.shape[2:])
    out.index_add_(1, labels.to(region.device), region)
    if scale is not None:
        out *= scale.to(region.device, region.dtype).view(1, -1, 1, 1)
    return out


def _transform_axis(t, axis, members: List[Tuple[Member, Group]], model_index, labels, counts, num_models, eps):
    moved = t.movedim(axis, 0)
    length = moved.shape[0]
    rest = moved.shape[1:]
    flat = moved.reshape(length, -1)
    pieces, cursor = [], 0

    def transformed(member, group, region):
        lab, k = labels[group.name]
        lab_i = lab[model_index * group.size:(model_index + 1) * group.size]
        scale = None if member.role == "input" else merge_scale(counts[group.name], num_models, eps)
        return _transform_region(region, lab_i, k, scale)

    if len(members) == 1 and members[0][0].outer > 1:
        member, group = members[0]
        span = member.span or group.size * member.inner
        if member.offset != 0 or span != group.size * member.inner or member.outer * span != length:
            raise ValueError(f"{member.name} axis {axis}: merging a member with layout {member} is not supported")
        region = flat.reshape(member.outer, group.size, member.inner, -1)
        out = transformed(member, group, region).reshape(-1, flat.shape[1])
    else:
        for member, group in members:
            if member.outer > 1:
                raise ValueError(f"{member.name} axis {axis}: a repeated member shares its axis with others; "
                                 "merging it is not supported")
            if member.offset < cursor:
                raise ValueError(f"{member.name} axis {axis}: members overlap at offset {member.offset}")
            pieces.append(flat[cursor:member.offset])
            width = group.size * member.inner
            region = flat[member.offset:member.offset + width].reshape(1, group.size, member.inner, -1)
            pieces.append(transformed(member, group, region).reshape(-1, flat.shape[1]))
            cursor = member.offset + width
        pieces.append(flat[cursor:])
        out = torch.cat(pieces, 0)
    return out.reshape(out.shape[0], *rest).movedim(0, axis)


def apply_maps(models: Sequence[nn.Module], spec: PermSpec, maps: Mapping[str, object],
               merge_eps: float = 0.0) -> nn.Module:
    """Merge N same-architecture models into one with per-group unit maps (see the module docstring).

    Args:
        models: N models with identical parameter names and shapes.
        spec: their permutation spec.
        maps: ``{group name: obj}`` with ``obj.labels: int64[N·Om]`` (merged unit of each input unit, model-major)
            and ``obj.num_outputs`` K, e.g. :class:`mudsc.MatchResult`. Groups left out are matched by identity.
        merge_eps: the ``eps`` of ``M = U / (colsum(U) + eps)``; 1e-5 reproduces the original exactly.

    Returns:
        A new module (a deep copy of ``models[0]`` with merged tensors); widths may differ from the inputs'.
    """
    if len(models) < 1:
        raise ValueError("apply_maps needs at least one model")
    num_models = len(models)
    named = [_named_tensors(m) for m in models]
    for i, d in enumerate(named[1:], 1):
        if d.keys() != named[0].keys() or any(d[k].shape != named[0][k].shape for k in d):
            raise ValueError(f"model {i} does not have model 0's parameter names and shapes")
    _check_members(spec, named[0], type(models[0]).__name__)
    labels = _labels_of(spec, maps, num_models)
    counts = {g: torch.bincount(lab, minlength=k).double() for g, (lab, k) in labels.items()}
    merged = _skeleton_copy(models[0], named[0])  # keeps ties; _set_tensor replaces a tensor at all its places
    slots = _tensor_slots(merged)
    with torch.no_grad():
        for name, ref in named[0].items():
            if not torch.is_floating_point(ref):
                continue  # integer buffers (num_batches_tracked) keep model 0's value
            by_axis: Dict[int, list] = {}
            for member, group in spec.members_of(name):
                by_axis.setdefault(member.axis, []).append((member, group))
            if not by_axis:  # in no group: a plain average
                _set_tensor(merged, name, _average([named[i][name] for i in range(num_models)]), slots)
                continue
            total, view = None, spec.views.get(name)
            for i in range(num_models):
                source = named[i][name]
                t = source.double()
                t = expand(t, view, name) if view is not None else t
                for axis, ms in sorted(by_axis.items()):
                    t = _transform_axis(t, axis, ms, i, labels, counts, num_models, merge_eps)
                if total is None:  # the running sum must not be a float64 model's own storage
                    shared = t.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
                    total = t.clone() if shared else t
                else:
                    total.add_(t)
            total = total.div_(num_models)
            total = compact(total, view, name) if view is not None else total
            _set_tensor(merged, name, total.to(ref.dtype), slots)
    _check_fused_widths(spec, merged)
    update_module_attributes(merged)
    return merged


_AVERAGE_CHUNK = 1 << 18  # elements per float64 chunk of _average (2 MiB: stays in cache)


def _average(tensors: List[torch.Tensor]) -> torch.Tensor:
    """The mean of equally shaped tensors, accumulated in float64 and rounded to their dtype once (the same
    values as ``torch.stack(ts).double().mean(0).to(dtype)``), chunk by chunk so that no float64 copy of a
    whole tensor is ever made: a state-dict average's memory traffic."""
    ref = tensors[0]
    out = torch.empty_like(ref, memory_format=torch.contiguous_format)
    flat_out = out.view(-1)
    flats = [t.reshape(-1) for t in tensors]
    for start in range(0, flat_out.numel(), _AVERAGE_CHUNK):
        stop = min(start + _AVERAGE_CHUNK, flat_out.numel())
        acc = flats[0][start:stop].double()
        if acc.untyped_storage().data_ptr() == flats[0].untyped_storage().data_ptr():
            acc = acc.clone()  # a float64 tensor's own storage
        for f in flats[1:]:
            acc.add_(f[start:stop])
        flat_out[start:stop] = acc.div_(len(tensors))
    return out


def _skeleton_copy(model: nn.Module, tensors: Dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose floating parameters and buffers are empty placeholders (same dtype,
    device, kind and ``requires_grad``; one per tensor, so ties stay ties): :func:`apply_maps` replaces every one
    of them, and copying the old values first would double the model's memory and time for nothing. A model
    that also keeps one of those tensors in a plain attribute (outside ``_parameters`` / ``_buffers``, where the
    placeholder would not be replaced) gets a full deep copy instead."""
    memo: Dict[int, torch.Tensor] = {}
    for t in tensors.values():
        if torch.is_floating_point(t) and id(t) not in memo:
            empty = torch.empty(0, dtype=t.dtype, device=t.device)
            memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    placeholders = {id(t) for t in memo.values()}
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        for key, value in vars(module).items():
            if key not in ("_parameters", "_buffers") and isinstance(value, torch.Tensor) and id(value) in placeholders:
                return copy.deepcopy(model)
    return copied


def _check_fused_widths(spec: PermSpec, model: nn.Module) -> None:
    """Fused q/k/v rows must keep equal thirds (the attention code splits them evenly)."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            rows, cols = m.in_proj_weight.shape
            if rows != 3 * cols:
                raise ValueError(f"merged MultiheadAttention has in_proj rows {rows} for embed_dim {cols}; torch's "
                                 "MultiheadAttention needs q, k and v as wide as the residual stream")


def update_module_attributes(model: nn.Module) -> None:
    """Make module attributes agree with (possibly resized) parameters, in place."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvNd):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            multiplier = m.out_channels // m.in_channels if depthwise else 1
            m.out_channels = m.weight.shape[0]
            if depthwise:
                m.in_channels = m.groups = m.out_channels // multiplier
            else:
                m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm):
            if m.weight is not None:
                m.num_channels = m.weight.shape[0]
                if m.num_channels % m.num_groups:
                    raise ValueError(f"{name}: {m.num_channels} channels do not split into {m.num_groups} groups")
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.MultiheadAttention):
            m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
            m.head_dim = m.embed_dim // m.num_heads
        if hasattr(m, "num_heads") and hasattr(m, "head_dim") and isinstance(getattr(m, "qkv", None), nn.Linear):
            m.head_dim = m.qkv.weight.shape[0] // 3 // m.num_heads
        for attr in ("embed_dim", "dim"):
            if hasattr(m, attr) and isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(
                    getattr(m, attr), int):
                setattr(m, attr, m.qkv.weight.shape[1])
