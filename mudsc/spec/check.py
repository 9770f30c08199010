"""``check_spec``: verify a permutation spec by permuting every group at random and comparing outputs.

A spec is correct iff permuting each group's units consistently at all its members leaves the model's function
unchanged. The check runs on a float64 copy in eval mode whose parameters and buffers are first perturbed with
small noise (so that equal-initialised tensors such as BatchNorm weights, LayerNorm biases, zero ``cls_token``
or unit running variances cannot hide a wrong member), permutes it with ``spec.random_permutations(seed)``, and
requires ``|out_perm - out| <= rtol·max|out|`` for every output tensor. On failure it permutes one group at a time
to name the culprit.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
import torch.nn as nn

from .data import PermSpec
from .transform import permute_model


class SpecCheckError(AssertionError):
    """A spec failed the permutation-invariance check; the message names the group."""


def _flatten(x: Any) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _flatten(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flatten(v)]
    return []


def _cast(x: Any, dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if torch.is_floating_point(x) else x
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def _float_copy(model: nn.Module, dtype: torch.dtype, seed: int, perturb: bool) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose floating parameters and buffers are ``dtype`` and, with
    ``perturb``, carry small noise: each tensor is converted once, straight into its copy (a deep copy followed by
    ``.to(dtype)`` and out-of-place noise would write every byte three times more), and the noise is drawn into
    one reused buffer."""
    gen = torch.Generator().manual_seed(seed + 12345)
    memo: Dict[int, torch.Tensor] = {}
    scratch = torch.empty(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not torch.is_floating_point(t) or id(t) in memo:
                continue
            c = torch.empty(t.shape, dtype=dtype, device=t.device)
            n = t.numel()
            if perturb and n > scratch.numel():
                scratch = torch.empty(n)
            if perturb and name.endswith("running_var"):
                c.copy_(torch.rand(t.shape, generator=gen).to(t.device) * 1.5 + 0.5)
            elif perturb:
                scale = 0.1 * max(float(t.std()) if n > 1 else 0.0, 0.1)
                # drawn on the CPU (a CPU generator gives the same noise whatever the model's device), in float32
                # and added in t's dtype before the one conversion: noise only has to tell units apart, and
                # float64 draws and mixed-dtype adds cost several times as much
                noise = torch.randn(n, generator=gen, out=scratch[:n]).view(t.shape).to(t.device)
                c.copy_(noise.mul_(scale).add_(t))
            else:
                c.copy_(t)
            memo[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
        base = copy.deepcopy(model, memo)
    return base.eval()


def _max_error(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        scale = max(float(x.abs().max()), 1e-30) if x.numel() else 1.0
        worst = max(worst, float((x - y).abs().max()) / scale if x.numel() else 0.0)
    return worst


def check_spec(model: nn.Module, spec: PermSpec, example_inputs, rtol: float = 1e-5, seed: int = 0,
               perturb: bool = True, dtype: torch.dtype = torch.float64) -> float:
    """Raise :class:`SpecCheckError` unless random permutations of every group leave the outputs unchanged.

    Args:
        model: the model (not modified: a copy is cast to ``dtype``, set to eval and perturbed).
        spec: the spec to verify.
        example_inputs: a tensor or tuple of positional inputs.
        rtol: allowed ``max|Δout| / max|out|`` per output tensor.
        seed: seeds the permutations and the perturbation.
        perturb: add small noise to every parameter/buffer first (recommended).
        dtype: the dtype of the check (float64 makes rtol=1e-5 meaningful for deep models).

    Returns:
        The observed relative error (float).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = _cast(tuple(example_inputs), dtype)

    base = _float_copy(model, dtype, seed, perturb)
    perms = spec.random_permutations(seed)
    with torch.no_grad():
        reference = _flatten(base(*inputs))
        if not reference:
            raise SpecCheckError(f"{type(model).__name__} returned no tensors to compare")
        # Permuted in place (the copy is ours): a second copy of a large model costs as much as its forward.
        permuted = _flatten(permute_model(base, spec, perms, inplace=True)(*inputs))
        error = _max_error(reference, permuted)
        if error <= rtol:
            return error
        base = _float_copy(model, dtype, seed, perturb)  # the same perturbed copy again, to permute one group at a time
        for g in spec.groups:
            single = _flatten(permute_model(base, spec, {g.name: perms[g.name]})(*inputs))
            e = _max_error(reference, single)
            if e > rtol:
                raise SpecCheckError(
                    f"permuting group {g.name!r} ({g.size} units, {g.num_blocks} blocks; members "
                    f"{[(m.name, m.axis, m.role) for m in g.members[:4]]}...) changes the outputs by {e:.3g} "
                    f"relative (rtol {rtol}): the spec is wrong for this group")
    raise SpecCheckError(f"permuting all groups together changes the outputs by {error:.3g} relative (rtol {rtol}), "
                         "although each group alone passes: block ties between groups are probably wrong")
