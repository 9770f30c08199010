"""mudsc.repair: REPAIR's rescaling of merged units.

The statistics a repaired model must reach are computed here from scratch (forward hooks, float64 sums, the
plan's labels), not with the module's helpers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc import models
from mudsc.repair import repair, repair_targets


def _loader(n=4, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(48, 3, size, size, generator=gen) for _ in range(n)]


def _channel_stats(model, names, loader):
    """``{module: (mean, std)}`` per output channel over all of ``loader`` (eval, float64)."""
    sums = {}

    def hook(name, y):
        d = -1 if isinstance(model.get_submodule(name), (nn.Linear, nn.LayerNorm)) else 1
        rows = y.detach().movedim(d, -1).reshape(-1, y.shape[d]).double()
        n, s, q = sums.get(name, (0, 0.0, 0.0))
        sums[name] = (n + rows.shape[0], s + rows.sum(0), q + (rows * rows).sum(0))

    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, y, n=n: hook(n, y)) for n in names]
    model.eval()
    with torch.no_grad():
        for x in loader:
            model(x)
    for h in handles:
        h.remove()
    out = {}
    for name, (n, s, q) in sums.items():
        mean = s / n
        out[name] = (mean, (q / n - mean * mean).clamp_min(0).sqrt())
    return out


def _wanted(ends, labels, k):
    """The mean over the endpoint units merged into each merged unit, of their means and of their stds."""
    labels = np.asarray(labels)
    mean = torch.cat([e[0] for e in ends])
    std = torch.cat([e[1] for e in ends])
    mu = torch.stack([mean[torch.as_tensor(labels == j)].mean() for j in range(k)])
    sigma = torch.stack([std[torch.as_tensor(labels == j)].mean() for j in range(k)])
    return mu, sigma


@pytest.mark.parametrize("arch", ["resnet20-gn", "vit", "vgg11-nobn"])
def test_repaired_units_have_the_interpolated_endpoint_statistics(arch):
    torch.manual_seed(1)
    build = {"resnet20-gn": lambda: models.resnet20(width=2, norm="gn"),
             "vit": lambda: models.vit(depth=2, dim=64, heads=2),
             "vgg11-nobn": lambda: models.vgg11(width=1, batch_norm=False)}[arch]
    a, b = build(), build()
    loader = _loader()
    result = mudsc.merge([a, b], loader, method="zipit", progress=False, repair=False)
    merged = copy.deepcopy(result.model)
    info = repair(merged, [a, b], result.plan.spec, result.plan.maps, loader)
    targets = repair_targets(merged, result.plan.spec)
    assert info["modules"] == [t.module for t in targets] and targets
    names = [t.module for t in targets]
    ends = [_channel_stats(m, names, loader) for m in (a, b)]
    got, before = _channel_stats(merged, names, loader), _channel_stats(result.model, names, loader)
    worst_before = 0.0
    for t in targets:
        m = result.plan.maps[t.group]
        mu, sigma = _wanted([e[t.module] for e in ends], m.labels, m.num_outputs)
        mean, std = got[t.module]
        torch.testing.assert_close(std, sigma, rtol=5e-3, atol=1e-6, msg=t.module)
        torch.testing.assert_close(mean, mu, rtol=0, atol=5e-3 * float(sigma.mean()), msg=t.module)
        worst_before = max(worst_before, float((before[t.module][1] / sigma - 1).abs().max()))
    assert worst_before > 0.05  # the merge did shrink or shift the units: the check above is not vacuous


def test_what_is_repaired():
    spec_of = lambda m: mudsc.trace(m, torch.randn(2, 3, 32, 32))  # noqa: E731
    gn = models.resnet20(width=1, norm="gn")
    assert all(isinstance(gn.get_submodule(t.module), nn.GroupNorm) for t in repair_targets(gn, spec_of(gn)))
    vgg = models.vgg11(width=1, batch_norm=False)
    kinds = {type(vgg.get_submodule(t.module)) for t in repair_targets(vgg, spec_of(vgg))}
    assert kinds <= {nn.Conv2d, nn.Linear} and nn.Conv2d in kinds
    vit = models.vit(depth=2, dim=64, heads=2)
    assert {type(vit.get_submodule(t.module)) for t in repair_targets(vit, spec_of(vit))} == {nn.LayerNorm}


class _LayerNorm2d(nn.LayerNorm):
    """timm's and torchvision's LayerNorm2d: a LayerNorm over the channels (axis 1) of an NCHW tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ChannelNormNet(nn.Module):
    """conv 3 -> 8 (LayerNorm2d) -> conv 8 -> 8 (LayerNorm2d) -> mean -> Linear: a ConvNeXt stem in small; the
    8x8 feature maps of 32x32 inputs make a channel axis taken as the last one 8 wide too, only not the channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 4, stride=4), _LayerNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 6, 3, padding=1), _LayerNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.n2(self.c2(torch.relu(self.n1(self.c1(x))))).mean((2, 3)))


def test_a_layer_norm_with_its_own_forward_is_not_repaired():
    """Its channel axis is not its type's (a LayerNorm2d normalises axis 1 of NCHW): the convolutions are
    repaired instead, and a merge with REPAIR (the default without BatchNorm) runs and keeps its statistics."""
    torch.manual_seed(0)
    a, b = _ChannelNormNet().eval(), _ChannelNormNet().eval()
    loader = _loader(n=2)
    spec = mudsc.trace(a, loader[0][:2])
    assert {t.module for t in repair_targets(a, spec)} == {"c1", "c2"}
    result = mudsc.merge([a, b], loader, method="zipit", progress=False)
    assert result.report["repair"]["modules"] == ["c1", "c2"]
    ends = [_channel_stats(m, ["c2"], loader)["c2"] for m in (a, b)]
    labels = result.plan.maps[[t.group for t in repair_targets(a, spec) if t.module == "c2"][0]].labels
    mu, sigma = _wanted(ends, labels, 6)
    got = _channel_stats(result.model, ["c2"], loader)["c2"]
    torch.testing.assert_close(got[0], mu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got[1], sigma, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet20-gn", "vit"])
def test_a_self_merge_stays_itself_with_repair(arch):
    torch.manual_seed(2)
    a = models.resnet20(width=1, norm="gn") if arch == "resnet20-gn" else models.vit(depth=2, dim=64, heads=2)
    loader = _loader(3)
    for n in (2, 3):
        result = mudsc.merge([a] * n, loader, method="zipit", progress=False)
        assert result.report["repair"] is not None and result.report["repair"]["max_scale"] == pytest.approx(1.0)
        a.eval()
        with torch.no_grad():
            torch.testing.assert_close(result.model(loader[0]), a(loader[0]), rtol=1e-4, atol=1e-5)


def test_merge_repairs_by_default_without_batchnorm_only():
    torch.manual_seed(3)
    loader = _loader(2)
    gn = [models.resnet20(width=1, norm="gn") for _ in range(2)]
    r = mudsc.merge(gn, loader, method="zipit", progress=False)
    assert r.report["repair"]["modules"] and r.report["timing"]["repair"] > 0
    assert r.report["repair"]["batches"] == len(loader)
    off = mudsc.merge(gn, loader, method="zipit", progress=False, repair=False)
    assert off.report["repair"] is None and off.report["timing"]["repair"] == 0
    bn = [models.resnet20(width=1) for _ in range(2)]
    assert mudsc.merge(bn, loader, method="zipit", progress=False).report["repair"] is None
    forced = mudsc.merge(bn, loader, method="zipit", progress=False, repair=True)
    assert forced.report["repair"]["modules"]  # the BatchNorm layers, after their reset
    fresh = models.resnet20(width=1)
    fresh.load_state_dict(forced.model.state_dict())


def test_bad_repair_arguments_are_refused_before_any_work():
    ms = [models.resnet20(width=1, norm="gn") for _ in range(2)]
    with pytest.raises(TypeError, match="repair must be"):
        mudsc.merge(ms, _loader(1), method="zipit", progress=False, repair="yes")
    with pytest.raises(ValueError, match="read again"):
        mudsc.merge(ms, iter(_loader(1)), method="zipit", progress=False, repair=True)
    one_shot = mudsc.merge(ms, iter(_loader(1)), method="zipit", progress=False)  # default: skipped, not an error
    assert one_shot.report["repair"] is None
