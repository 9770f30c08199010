"""REPAIR (Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023):
after merging, rescale each merged unit so that its activation statistics are those of the endpoints' units it
merges.

Merging averages the weights of matched units, and the average of two decorrelated units has a smaller variance
than either ("variance collapse"), which compounds with depth. For every *repaired module* (below) and every
merged output channel ``k`` of it, REPAIR measures

- the per-channel mean ``μ_i[c]`` and standard deviation ``σ_i[c]`` of the module's output in every endpoint ``i``
  over the data, and takes as target the average over the endpoint units merged into ``k`` (the plan's labels):
  ``μ*[k] = mean_{u→k} μ_u``, ``σ*[k] = mean_{u→k} σ_u`` (the interpolation of the endpoints' statistics);
- the merged model's own ``μ[k]``, ``σ[k]``, in one pass in which every repaired module's output is already
  corrected batch by batch, as a BatchNorm in train mode would: ``(y − mean_b)/std_b·σ*_b + μ*_b`` with the
  endpoints' interpolated statistics of the same batch ``b``, so that each module sees the repaired activations
  of the modules before it, and a model that merged nothing (a self-merge) passes through unchanged;

and folds the affine correction ``y ← a·y + b`` with ``a = σ*/σ``, ``b = μ* − a·μ`` into the module's own
parameters (``weight ← a·weight``, ``bias ← a·bias + b`` along the output axis): the architecture and the state
dict's keys are unchanged.

Repaired modules: the normalisation layers with an affine transform (``GroupNorm``, ``LayerNorm``, BatchNorm) whose
output channels are a group's units; a model without any gets its ``Conv``/``Linear`` layers with a bias whose
output channels are a group's units instead. A ``LayerNorm`` subclass with a forward of its own (timm's and
torchvision's ``LayerNorm2d`` normalise the channels of an NCHW tensor at axis 1) is not repaired: which axis of its
output holds the channels cannot be told from its type. A unit map that merges no units is an identity and REPAIR
changes nothing there beyond float noise. :func:`mudsc.merge` repairs by default the models without BatchNorm (for which
the BatchNorm reset does nothing); those with BatchNorm get the reset (``repair=`` chooses).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .distributed import resolve_group
from .norm import first_input
from .spec import PermSpec

__all__ = ["RepairTarget", "repair", "repair_targets"]

_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class RepairTarget:
    """One repaired module: its name, channel axis of its output, the group whose units its output channels are,
    and its endpoint statistics (filled by :func:`repair`)."""

    def __init__(self, module: str, group: str, channel_dim: int):
        self.module, self.group, self.channel_dim = module, group, channel_dim

    def __repr__(self) -> str:
        return f"RepairTarget({self.module!r}, group={self.group!r})"


def _channel_dim(module: nn.Module) -> int:
    """The channel axis of ``module``'s output: last for ``Linear`` and ``LayerNorm``, else 1 (NC...)."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def _own_layer_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a ``LayerNorm`` subclass with a forward of its own (its channel axis is unknown)."""
    return isinstance(module, nn.LayerNorm) and type(module).forward is not nn.LayerNorm.forward


def _has_affine(module: nn.Module) -> bool:
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    return isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)


def repair_targets(model: nn.Module, spec: PermSpec) -> List[RepairTarget]:
    """The modules REPAIR rescales in ``model`` (module docstring), in module order: normalisation layers with an
    affine whose weight's axis 0 is a whole group (an unsliced output member), else, when the model has none,
    ``Conv``/``Linear`` layers with a bias whose weight is."""
    owner: Dict[str, str] = {}
    for g in spec.groups:
        for m in g.members:
            if m.role == "output" and m.axis == 0 and m.offset == 0 and m.outer == 1 and m.inner == 1:
                owner[m.name] = g.name
    modules = dict(model.named_modules())
    found = {kind: [] for kind in ("norm", "layer")}
    for name, module in modules.items():
        group = owner.get(f"{name}.weight" if name else "weight")
        if group is None or not _has_affine(module) or module.weight.dim() == 0 or _own_layer_norm(module):
            continue
        size = next(g.size for g in spec.groups if g.name == group)
        if module.weight.shape[0] != size:
            continue
        if isinstance(module, _NORMS):
            found["norm"].append(RepairTarget(name, group, _channel_dim(module)))
        elif isinstance(module, _LAYERS):
            found["layer"].append(RepairTarget(name, group, _channel_dim(module)))
    return found["norm"] or found["layer"]


class _Moments:
    """Per-channel float64 sums of one module's outputs: pooled over the whole pass, and per batch
    (:meth:`end_batch` closes one)."""

    def __init__(self):
        self.count, self.sum, self.sumsq = 0, 0.0, 0.0
        self.batch = [0, 0.0, 0.0]
        self.per_batch: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, y: torch.Tensor, dim: int) -> None:
        rows = y.detach().movedim(dim, -1).reshape(-1, y.shape[dim]).double()
        n, s, q = rows.shape[0], rows.sum(0), (rows * rows).sum(0)
        self.count, self.sum, self.sumsq = self.count + n, self.sum + s, self.sumsq + q
        b = self.batch
        b[0], b[1], b[2] = b[0] + n, b[1] + s, b[2] + q

    def end_batch(self) -> None:
        n, s, q = self.batch
        if n:
            self.per_batch.append(_mean_std(n, s, q))
        self.batch = [0, 0.0, 0.0]

    def mean_std(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return _mean_std(self.count, self.sum, self.sumsq)

    def all_reduce(self, group) -> None:
        """Sum the pooled sums over the ranks of ``group`` (None: nothing to do)."""
        if group is None:
            return
        import torch.distributed as dist

        flat = torch.cat([torch.as_tensor([float(self.count)], dtype=torch.float64, device=self.sum.device),
                          self.sum, self.sumsq])
        dist.all_reduce(flat, group=group)
        c = (flat.numel() - 1) // 2
        self.count, self.sum, self.sumsq = int(round(flat[0].item())), flat[1:1 + c], flat[1 + c:]


def _mean_std(n: int, s: torch.Tensor, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mean = s / n
    return mean, (q / n - mean * mean).clamp_min(0).sqrt()


def _batches(loader: Iterable, max_batches: Optional[int]):
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield first_input(batch)


def _run(model: nn.Module, targets: List[RepairTarget], loader, max_batches, device, hook) -> int:
    """One pass of ``model`` over the data (eval, no grad) with ``hook(target, output) -> output or None`` on
    every target; calls ``hook(None, batch index)`` after each batch; the batches read."""
    handles = [model.get_submodule(t.module).register_forward_hook(lambda mod, args, y, t=t: hook(t, y))
               for t in targets]
    was = model.training
    batches = 0
    try:
        model.eval()
        with torch.no_grad():
            for x in _batches(loader, max_batches):
                model(x.to(device))
                hook(None, batches)
                batches += 1
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return batches


def _endpoint_stats(models: Sequence[nn.Module], targets: List[RepairTarget], loader, max_batches, device
                    ) -> List[Dict[str, _Moments]]:
    """Per model, ``{module: its output's _Moments}`` of every target over the data (pooled and per batch)."""
    out = []
    for model in models:
        moments = {t.module: _Moments() for t in targets}

        def hook(t, y, moments=moments):
            if t is None:
                for m in moments.values():
                    m.end_batch()
            else:
                moments[t.module].add(y, t.channel_dim)

        _run(model, targets, loader, max_batches, device, hook)
        if any(m.count == 0 for m in moments.values()):
            raise ValueError("REPAIR: a repaired module never ran on the data (the loader yielded no batches?)")
        out.append(moments)
    return out


def _interpolate(per_model: Sequence[Tuple[torch.Tensor, torch.Tensor]], labels: np.ndarray, num_outputs: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(μ* [K], σ* [K])`` from every model's ``(mean [C], std [C])``: the mean over the endpoint units merged
    into each merged unit (``labels``, model-major)."""
    means = torch.cat([m for m, _ in per_model])
    stds = torch.cat([s for _, s in per_model])
    index = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=means.device)
    count = torch.zeros(num_outputs, dtype=torch.float64, device=means.device).index_add_(
        0, index, torch.ones_like(means)).clamp_min(1)
    return (torch.zeros_like(count).index_add_(0, index, means) / count,
            torch.zeros_like(count).index_add_(0, index, stds) / count)


def _corrected_pass(merged: nn.Module, targets: List[RepairTarget], wanted_per_batch: Dict[str, list], loader,
                    max_batches, device, group=None) -> Tuple[Dict[str, Tuple[torch.Tensor, torch.Tensor]], int]:
    """``({module: pooled (mean, std) of its raw output}, batches)`` of the merged model, each target's output
    replaced as it runs by ``(y − mean_b)/std_b·σ*_b + μ*_b``: its batch statistics swapped for the endpoints'
    interpolated statistics of the same batch (so downstream modules see repaired activations, and an unmerged
    model passes unchanged)."""
    moments = {t.module: _Moments() for t in targets}
    index = [0]

    def hook(t, y):
        if t is None:
            index[0] += 1
            return None
        d = t.channel_dim % y.dim()
        rows = y.movedim(d, -1).reshape(-1, y.shape[d]).double()
        moments[t.module].add(y, d)
        mean, std = _mean_std(rows.shape[0], rows.sum(0), (rows * rows).sum(0))
        mu, sigma = wanted_per_batch[t.module][index[0]]
        live = std > 1e-12 * sigma.abs().clamp_min(1.0)
        scale = torch.where(live, sigma / torch.where(live, std, torch.ones_like(std)), torch.ones_like(std))
        shape = [1] * y.dim()
        shape[d] = -1
        out = (y.double() - mean.view(shape)) * scale.view(shape) + mu.view(shape)
        return out.to(y.dtype)

    batches = _run(merged, targets, loader, max_batches, device, hook)
    for m in moments.values():
        m.all_reduce(group)
    return {k: m.mean_std() for k, m in moments.items()}, batches


def repair(merged: nn.Module, models: Sequence[nn.Module], spec: PermSpec, maps: Dict[str, object], loader: Iterable,
           max_batches: Optional[int] = None, device=None, process_group=None) -> dict:
    """REPAIR ``merged`` (the merge of ``models`` under ``maps``, ``{group: MatchResult}``) in place (module
    docstring); returns ``{"modules": repaired module names, "batches": ..., "max_scale": largest a}``.

    Passes over ``loader`` (at most ``max_batches`` batches each, the same batches every pass: a re-iterable
    loader): one per endpoint, then one of the merged model. Groups
    without a map are identities (unit ``c`` of every model merged into ``c``). ValueError when no batch ran.
    Under a process group (:func:`mudsc.distributed.resolve_group`) each rank reads its shard and the pooled
    statistics are summed over the ranks (every rank needs a batch)."""
    group = resolve_group(process_group)
    targets = repair_targets(merged, spec)
    if not targets:
        return {"modules": [], "batches": 0, "max_scale": 1.0}
    if device is None:
        p = next(iter(merged.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    sizes = {g.name: g.size for g in spec.groups}
    n = len(models)
    stats = _endpoint_stats(models, targets, loader, max_batches, device)
    for moments in stats:
        for m in moments.values():
            m.all_reduce(group)
    wanted, per_batch = {}, {}
    for t in targets:
        m = maps.get(t.group)
        labels = m.labels if m is not None else np.tile(np.arange(sizes[t.group]), n)
        k = int(m.num_outputs) if m is not None else sizes[t.group]
        wanted[t.module] = _interpolate([s[t.module].mean_std() for s in stats], labels, k)
        per_batch[t.module] = [_interpolate([s[t.module].per_batch[b] for s in stats], labels, k)
                               for b in range(len(stats[0][t.module].per_batch))]
    measured, batches = _corrected_pass(merged, targets, per_batch, loader, max_batches, device, group)
    largest = _fold(merged, targets, wanted, measured)
    return {"modules": [t.module for t in targets], "batches": batches, "max_scale": largest}


def _fold(merged: nn.Module, targets: List[RepairTarget], wanted: dict, measured: dict) -> float:
    """Fold ``y ← a·y + b`` (``a = σ*/σ``, ``b = μ* − a·μ``) into every target module's weight and bias; the
    largest ``a``. A channel constant on the data (``σ = 0``) keeps its scale (``a = 1``) and only moves."""
    largest = 0.0
    with torch.no_grad():
        for t in targets:
            mu, sigma = wanted[t.module]
            mean, std = measured[t.module]
            live = std > 1e-12 * sigma.abs().clamp_min(1.0)
            a = torch.where(live, sigma / torch.where(live, std, torch.ones_like(std)), torch.ones_like(std))
            b = mu - a * mean
            module = merged.get_submodule(t.module)
            shape = [-1] + [1] * (module.weight.dim() - 1)
            module.weight.mul_(a.to(module.weight.dtype).view(shape))
            module.bias.mul_(a.to(module.bias.dtype)).add_(b.to(module.bias.dtype))
            largest = max(largest, float(a.max()))
    return largest
