"""Correctness matrix: every architecture x every method x N in {2, 3}, each cell its own test id.

Architectures: the built-in ResNet-20 (BatchNorm and GroupNorm), VGG-11 and ViT; torchvision's ResNet-18,
VGG-11-BN and a small VisionTransformer; timm's ViT (vit_tiny's config at 32x32, 8x8 patches) and a ResNet.

Per cell two tests:

- ``test_merge_runs_and_loads``: N *different* random models merge; the merged model gives finite logits of the
  right shape, its ``state_dict()`` loads strictly into a fresh instance of the architecture, and that instance
  computes the same function (a width or attribute that lives outside the state dict would show up here).
- ``test_self_merge_reproduces_the_model``: ``merge([a] * N)`` must give ``a`` back (relative output distance
  below 1e-4 on held-out inputs); see that test's docstring for BatchNorm.

Everything is tiny (32x32 inputs, 2 batches of 8, small widths, 2 descent sweeps) so that the file runs in the
default suite. Models, loaders and specs are built once per architecture (module fixture). The cell
(arch, "mudsc-zip", N=2) of ``test_merge_runs_and_loads`` calls plain ``merge(models, loader)``: no spec, no
method, so the default path (trace of the first batch included) is covered for every architecture; every other
cell passes the spec traced once.

Models are random: parameters a library initialises to one constant (zero heads, zero biases, zero-init last
BN of a residual branch, unit norm weights) get a small random perturbation first, so that no architecture
is degenerate (a zero head makes every output 0, constant units make exact ties).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc import METHODS, merge, models, reset_bn, trace

torch.set_num_threads(2)

FAST = dict(max_sweeps=2, patience=1, progress=False)
RTOL = 1e-4
BATCH, NUM_BATCHES, NUM_CLASSES = 8, 2, 10


def _torchvision_vgg11_bn() -> nn.Module:
    """torchvision's vgg11_bn (its features, 7x7 adaptive pool, flatten) with a 32-wide classifier: the stock
    25088 -> 4096 -> 4096 head is 120M parameters, whose 4096-unit groups alone would take minutes of weight
    similarity on 2 cores; the flattened 512x7x7 conv features feeding a Linear are kept."""
    import torchvision

    m = torchvision.models.vgg11_bn(num_classes=NUM_CLASSES)
    m.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, NUM_CLASSES))
    return m


def _torchvision_resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def _torchvision_vit() -> nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=NUM_CLASSES)


def _timm_vit() -> nn.Module:
    """timm's VisionTransformer from the vit_tiny_patch16_224 config at 32x32 with 8x8 patches, cut to 2 blocks
    of width 48 (3 heads of 16): the full 12 x 192 model takes 20-40 s per activation merge on 2 cores."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=48, num_classes=NUM_CLASSES)


def _timm_resnet() -> nn.Module:
    """timm's ResNet class (BasicBlock, one block per stage) at widths 16-128."""
    import timm.models.resnet as tr

    return tr.ResNet(tr.BasicBlock, [1, 1, 1, 1], channels=(16, 32, 64, 128), stem_width=16,
                     num_classes=NUM_CLASSES)


ARCHS = {
    "resnet20-bn": lambda: models.resnet20(width=1),
    "resnet20-gn": lambda: models.resnet20(width=1, norm="gn"),
    "vgg11": lambda: models.vgg11(width=1),
    "vit": lambda: models.vit(depth=2, dim=24, heads=3, patch=8, mlp_ratio=2.0),
    "tv-resnet18": _torchvision_resnet18,
    "tv-vgg11_bn": _torchvision_vgg11_bn,
    "tv-vit": _torchvision_vit,
    "timm-vit": _timm_vit,
    "timm-resnet": _timm_resnet,
}
NS = [2, 3]
DEFAULT_CALL = ("mudsc-zip", 2)  # (method, N) of the cell that calls merge(models, loader) without a spec


def _randomize_constants(model: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter that is one constant over all its entries (0 or 1 at init) by N(0, 0.05²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _build(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_constants(ARCHS[arch](), seed).eval()


def _batches(seed: int, count: int):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=gen), torch.zeros(BATCH, dtype=torch.long))
            for _ in range(count)]


class _Zoo:
    """Per architecture, built on first use: three different random models, a merge loader, held-out inputs and
    the spec traced once from model 0."""

    def __init__(self):
        self._cache = {}

    def __getitem__(self, arch: str):
        if arch not in self._cache:
            k = list(ARCHS).index(arch)
            ms = [_build(arch, 100 * k + i) for i in range(max(NS))]
            loader = _batches(seed=1, count=NUM_BATCHES)
            x_test = _batches(seed=2, count=1)[0][0]
            spec = trace(ms[0], loader[0][0][:2])
            self._cache[arch] = (ms, loader, x_test, spec)
        return self._cache[arch]


@pytest.fixture(scope="module")
def zoo():
    return _Zoo()


def _relative_distance(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def _cells():
    return [pytest.param(arch, method, n, id=f"{arch}-{method}-N{n}")
            for arch in ARCHS for method in METHODS for n in NS]


@pytest.mark.parametrize("arch, method, n", _cells())
def test_merge_runs_and_loads(zoo, arch, method, n):
    ms, loader, x_test, spec = zoo[arch]
    if (method, n) == DEFAULT_CALL:
        result = merge(ms[:n], loader, **FAST)  # the zero-configuration call: traces the first batch itself
        assert result.report["method"] == method
    else:
        result = merge(ms[:n], loader, method=method, spec=spec, **FAST)
    assert result.report["num_models"] == n
    merged = result.model.eval()
    with torch.no_grad():
        out = merged(x_test)
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all(), f"{arch} {method} N={n}: non-finite logits"
    fresh = ARCHS[arch]().eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        again = fresh(x_test)
    torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-6,
                               msg=lambda m: f"a fresh {arch} loaded with the merged state dict differs: {m}")


@pytest.mark.parametrize("arch, method, n", _cells())
def test_self_merge_reproduces_the_model(zoo, arch, method, n):
    """``merge([a] * N, loader, method)`` must compute ``a``: ‖merged(x) − a(x)‖ / ‖a(x)‖ < 1e-4 on held-out x.

    Merging copies of one model can only pair every unit with its own twins (they correlate 1 in activations
    and in weights), and the merged unit is then the average of identical units, so the merge is a
    function-preserving permutation of ``a`` whatever the method and N.

    A fair comparison with BatchNorm: ``merge`` recomputes the merged model's running statistics on the loader
    (``reset_bn_stats=True``, the default), while ``a`` keeps its own (fresh ones: mean 0, var 1). Comparing the
    merged model with ``a`` as it is would charge the merge for the BN reset, and ``reset_bn_stats=False`` would
    leave the reset out of the test. The reset is a deterministic function of the weights and the data, and it
    runs the model in train mode, where BatchNorm normalises with batch statistics, so a permutation of ``a``
    gets the permuted statistics of ``a``. The reference is therefore ``reset_bn(copy of a, same loader)``, and
    both are compared in eval mode. For models without BatchNorm the reset is a no-op and the reference is ``a``.
    The outputs are compared on held-out inputs, not on the merge data: a unit that is dead on the merge data
    and is paired with the wrong unit can look correct on that data and still be wrong on other inputs.
    """
    ms, loader, x_test, spec = zoo[arch]
    a = ms[0]
    result = merge([a] * n, loader, method=method, spec=spec, **FAST)
    reference = reset_bn(copy.deepcopy(a), loader).eval()
    with torch.no_grad():
        ref = reference(x_test)
        out = result.model.eval()(x_test)
    assert ref.norm() > 0
    dist = _relative_distance(out, ref)
    assert dist < RTOL, (f"self-merge of {arch} with {method}, N={n}: relative output distance {dist:.3e} "
                         f"(>= {RTOL:g})")
