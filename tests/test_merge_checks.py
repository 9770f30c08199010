"""What merge refuses before heavy work, and what it guarantees about its result (issue: correct merges for every
model, every N, every width): the default zip width keeps the architecture for every N; a width change a model
cannot follow is refused naming the module; the merged model runs; NaN/Inf weights, mixed dtypes or devices, a
device that does not exist, a later batch of the wrong shape and running out of memory are named errors."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import mudsc
from mudsc import models
from mudsc.probe import ModelRunError, run_named

torch.set_num_threads(2)
FAST = dict(max_sweeps=1, patience=1, progress=False)


def _loader(shape=(3, 32, 32), batches=2, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=gen) for _ in range(batches)]


def _seeded(make, n):
    out = []
    for seed in range(n):
        torch.manual_seed(100 + seed)
        out.append(make().eval())
    return out


def _tv_vit():
    return torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10)


@pytest.mark.parametrize("method", ["zipit", "mudsc-zip", "wzip"])
def test_three_models_zip_keeps_the_architecture(method):
    """reduce defaults to 1 - 1/N: every group keeps its width exactly, and the merged state dict loads into a
    fresh instance of the architecture."""
    ms = _seeded(lambda: models.resnet20(width=1), 3)
    r = mudsc.merge(ms, _loader(), method=method, **FAST)
    for name, g in r.report["groups"].items():
        assert g["num_outputs"] == g["size"], name
    fresh = models.resnet20(width=1)
    fresh.load_state_dict(r.model.state_dict())
    assert fresh.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_zip_solvers_default_to_the_width_of_one_model():
    rng = np.random.default_rng(0)
    for n, om in ((2, 24), (3, 24), (4, 12), (3, 192)):
        sim = np.corrcoef(rng.standard_normal((n * om, 40))).astype(np.float32)
        assert mudsc.zip_match(sim, n).num_outputs == om
        assert mudsc.group_zip_match(sim, n, 4).num_outputs == om


def test_torchvision_vit_merges_from_three_models_and_loads():
    ms = _seeded(_tv_vit, 3)
    r = mudsc.merge(ms, _loader(), method="zipit", progress=False)
    fresh = _tv_vit()
    fresh.load_state_dict(r.model.state_dict())
    assert torch.isfinite(fresh.eval()(torch.randn(2, 3, 32, 32))).all()


def test_a_width_change_the_model_cannot_follow_is_refused_before_the_statistics(monkeypatch):
    """torchvision's ViT reshapes by its stored hidden width: reduce=0.4 at N = 2 widens the residual stream, and
    the merge must stop before the statistics pass, naming the module, instead of returning a broken model."""
    ms = _seeded(_tv_vit, 2)

    def no_stats(*args, **kwargs):
        raise AssertionError("the statistics pass started")

    monkeypatch.setattr(importlib.import_module("mudsc.methods.merge"), "collect_stats", no_stats)
    # (the reshape by the stored width is in VisionTransformer's own forward, outside any submodule)
    with pytest.raises(ValueError, match=r"reduce=0.4 changes merged widths \(conv_proj 32 -> 38, .* fails in the "
                                         r"forward of VisionTransformer itself: RuntimeError: shape"):
        mudsc.merge(ms, _loader(), method="zipit", reduce=0.4, progress=False)


def test_a_width_change_the_model_follows_is_allowed_with_a_warning():
    ms = _seeded(lambda: models.resnet20(width=1), 2)
    with pytest.warns(UserWarning, match="changes merged widths"):
        r = mudsc.merge(ms, _loader(), method="zipit", reduce=0.25, progress=False)
    assert any(g["num_outputs"] > g["size"] for g in r.report["groups"].values())
    assert r.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_run_named_names_the_failing_module():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))
            self.head = nn.Linear(2, 2)

        def forward(self, x):
            return self.head(self.body(x))

    with pytest.raises(ModelRunError, match=r"fails in module 'body.1' \(Linear\)") as info:
        run_named(Broken(), torch.randn(3, 4), "the merged model")
    assert info.value.module == "body.1"

    class ReshapeInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x).view(-1, 4)

    with pytest.raises(ModelRunError, match="the forward of ReshapeInForward itself"):
        run_named(ReshapeInForward(), torch.randn(3, 4))
    m = Broken()
    m.train()
    assert run_named(nn.Linear(4, 2), torch.randn(1, 4)).shape == (1, 2)
    assert m.training and not m.body[0]._forward_hooks


@pytest.mark.parametrize("method", sorted(mudsc.METHODS))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_before_any_work(method, value):
    ms = _seeded(lambda: models.mlp(in_features=3 * 32 * 32, hidden=(16,)), 2)
    name, p = list(ms[1].named_parameters())[2]
    with torch.no_grad():
        p.view(-1)[5] = value
    with pytest.raises(ValueError, match=rf"model 1: parameter/buffer '{name}' .* non-finite"):
        mudsc.merge(ms, _loader(), method=method, **FAST)


def test_mixed_dtypes_and_devices_are_named():
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    ms[1] = ms[1].double()
    with pytest.raises(ValueError, match="is torch.float64 in model 1 but torch.float32 in model 0"):
        mudsc.merge(ms, _loader(shape=(12,)), method="avg", progress=False)
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    ms[1] = ms[1].to("meta")
    with pytest.raises(ValueError, match="model 1 is on meta but model 0 is on cpu"):
        mudsc.merge(ms, _loader(shape=(12,)), method="avg", progress=False)


@pytest.mark.parametrize("device, message", [("bogus", "is not a device torch knows"),
                                             ("cuda:7" if torch.cuda.is_available() else "cuda", "CUDA")])
def test_a_device_that_does_not_exist_is_named(device, message):
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    with pytest.raises(ValueError, match=message):
        mudsc.merge(ms, _loader(shape=(12,)), method="zipit", device=device, progress=False)


def test_a_later_batch_of_the_wrong_shape_is_named():
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    loader = [torch.randn(8, 12), torch.randn(8, 12), torch.randn(8, 11)]
    with pytest.raises(ValueError, match=r"model 0 cannot run on batch 2 of shape \(8, 11\) \(the first batch had "
                                         r"shape \(8, 12\)\)"):
        mudsc.merge(ms, loader, method="zipit", progress=False)


def _failing_after(calls: int, exc: BaseException):
    """A replacement for CorrelationAccumulator.update that raises ``exc`` from its ``calls``-th call on."""
    original = mudsc.stats.CorrelationAccumulator.update
    count = [0]

    def update(self, *args, **kwargs):
        count[0] += 1
        if count[0] >= calls:
            raise exc
        return original(self, *args, **kwargs)

    return update


def test_out_of_memory_in_the_statistics_pass_is_named_with_the_estimate(monkeypatch):
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    loader = [torch.randn(8, 12) for _ in range(3)]
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
    monkeypatch.setattr(mudsc.stats.CorrelationAccumulator, "update", _failing_after(2, oom))
    with pytest.raises(MemoryError, match=r"out of memory in the statistics pass \(model 1, batch 1 .* GiB of "
                                          r"float64 moments \(largest: group"):
        mudsc.merge(ms, loader, method="zipit", progress=False)


def test_out_of_memory_allocating_the_statistics_is_named(monkeypatch):
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    original = mudsc.stats.CorrelationAccumulator.__init__

    def init(self, num_features, *args, **kwargs):
        if num_features >= 16:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB (simulated)")
        original(self, num_features, *args, **kwargs)

    monkeypatch.setattr(mudsc.stats.CorrelationAccumulator, "__init__", init)
    with pytest.raises(MemoryError, match="out of memory allocating the statistics on cpu"):
        mudsc.merge(ms, [torch.randn(8, 12)], method="zipit", progress=False)


def _distance(merged, model, x):
    with torch.no_grad():
        return float((merged.eval()(x) - model(x)).norm() / model(x).norm())


@pytest.mark.parametrize("method", ["zipit", "act-align"])
def test_self_merge_of_a_torchvision_resnet_is_exact(method):
    """On 16 images at 32x32 most layer-4 units of a random resnet18 are dead or fire on one or two samples: dead
    ones correlate 0 with their twins and sparse ones exactly 1 with other units. They are placed by their weights
    (the twin has the same weights), so merge([a, a]) gives a back (it gave 0.2-0.4 relative output distance)."""
    torch.manual_seed(0)
    a = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"has \d+ samples for its \d+ units .* pass more merge data"):
        r = mudsc.merge([a, a], [x[:8], x[8:]], method=method, progress=False, reset_bn_stats=False)
    assert _distance(r.model, a, x) < 1e-6


class _DeadUnits(nn.Module):
    """An MLP whose hidden units 0-3 never fire on inputs in [0, 1) (bias -100): zero variance on any data."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.bias[:4] = -100.0

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ["zipit", "act-align", "mudsc-zip"])
def test_dead_units_are_matched_by_their_weights(method):
    torch.manual_seed(3)
    a = _DeadUnits().eval()
    loader = [torch.rand(64, 12, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    spec = mudsc.trace(a, loader[0][:2])
    stats = mudsc.collect_stats([a, a], spec, loader, progress=False)
    (group,) = [g for g in spec.groups if g.size == 16]
    dead = set(stats.degenerate_units(group.name).tolist())
    assert {0, 1, 2, 3, 16, 17, 18, 19} <= dead and {u + 16 for u in dead if u < 16} == {u for u in dead if u >= 16}
    plan = mudsc.match([a, a], spec, method, stats=stats, tie_break=0.0, **FAST)
    labels = plan.maps[group.name].labels
    np.testing.assert_array_equal(labels[:16], labels[16:])  # every unit with its twin, the dead ones included
    assert _distance(plan.apply([a, a]), a, loader[0]) < 1e-6


class _SparseUnits(nn.Module):
    """An MLP whose hidden units 0-3 read input 0 only (weights 5, 3, 4, 2, bias -1): they fire on the one sample
    with ``x[:, 0] = 1`` and nowhere else, so they correlate exactly 1 with each other and with their twins."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.weight[:4] = 0.0
            self.fc1.weight[:4, 0] = torch.tensor([5.0, 3.0, 4.0, 2.0])
            self.fc1.bias[:4] = -1.0

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ["zipit", "act-align"])
def test_tied_sparse_units_are_matched_by_their_weights_with_plenty_of_samples(method):
    """128 samples for 32 units (not underdetermined), yet four units per model tie exactly: the tie-break by
    weights still applies (without it act-align rotates them and zipit pairs them within the model)."""
    torch.manual_seed(3)
    a = _SparseUnits().eval()
    gen = torch.Generator().manual_seed(0)
    loader = [torch.rand(64, 12, generator=gen) for _ in range(2)]
    for x in loader:
        x[:, 0] = 0.0
    loader[0][5, 0] = 1.0
    spec = mudsc.trace(a, loader[0][:2])
    stats = mudsc.collect_stats([a, a], spec, loader, progress=False)
    (group,) = [g for g in spec.groups if g.size == 16]
    assert not stats.underdetermined(group.name)
    for tie_break, exact in ((0.0, False), (1e-4, True)):
        plan = mudsc.match([a, a], spec, method, stats=stats, tie_break=tie_break, **FAST)
        labels = plan.maps[group.name].labels
        assert bool((labels[:16] == labels[16:]).all()) == exact, (tie_break, labels)


def test_has_tied_maxima():
    from mudsc.methods.descent import has_tied_maxima

    s = torch.tensor([[1.0, 1.0, 0.2], [1.0, 1.0, 0.3], [0.2, 0.3, 1.0]])
    assert not has_tied_maxima(s, 1e-6)  # the diagonal does not count
    s[0, 2] = s[2, 0] = 1.0  # row 0: 1 twice
    assert has_tied_maxima(s, 1e-6)
    s[0, 2] = s[2, 0] = 1.0 - 1e-4
    assert not has_tied_maxima(s, 1e-6) and has_tied_maxima(s, 1e-3)
    s[0, 1] = s[1, 0] = s[0, 2] = s[2, 0] = 0.9  # tied, but far from a correlation of 1
    assert not has_tied_maxima(s, 1e-6) and has_tied_maxima(s, 1e-6, floor=0.5)


def test_has_tied_maxima_matches_its_definition_row_by_row():
    """Against a brute-force reading of the docstring, on matrices whose diagonal is sometimes not the row maximum
    (a dead unit's row takes weight similarities) and whose rows hold exact ties at 1 with and without it."""
    from mudsc.methods.descent import has_tied_maxima

    gen = torch.Generator().manual_seed(5)

    def brute(s, tol, floor):
        for i in range(s.shape[0]):
            off = sorted((float(s[i, j]) for j in range(s.shape[0]) if j != i), reverse=True)
            if off[0] - off[1] <= tol and off[1] >= floor:
                return True
        return False

    seen = set()
    for trial in range(300):
        n = int(torch.randint(3, 9, (1,), generator=gen))
        s = torch.rand(n, n, generator=gen) * 0.998
        s = (s + s.T) / 2
        s.fill_diagonal_(1.0)
        for _ in range(int(torch.randint(0, 4, (1,), generator=gen))):  # exact ties at 1 (twins, sparse units)
            i, j = torch.randint(0, n, (2,), generator=gen).tolist()
            s[i, j] = s[j, i] = 1.0
        if trial % 3 == 0:  # a row whose diagonal is below some of its entries
            i = int(torch.randint(0, n, (1,), generator=gen))
            s[i, i] = 0.5
        expected = brute(s, 1e-6, 0.999)
        seen.add(expected)
        assert has_tied_maxima(s, 1e-6) == expected, s
    assert seen == {True, False}

def test_tie_break_is_checked():
    ms = _seeded(lambda: models.mlp(in_features=12, hidden=(8,)), 2)
    spec = mudsc.trace(ms[0], torch.randn(2, 12))
    with pytest.raises(ValueError, match="tie_break must be a number in"):
        mudsc.match(ms, spec, "rebasin", tie_break=0.5, progress=False)


def test_an_underdetermined_group_without_ties_gets_no_weight_similarity(monkeypatch):
    """Fewer samples than units makes correlations noisier, not tied: zipit then stays activation-only (no
    weight moments, which on a large model cost as much as the statistics), and the warning still comes."""
    from mudsc.methods.descent import Descent

    torch.manual_seed(0)
    a, b = (nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 3)).eval() for _ in range(2))
    loader = [torch.randn(20, 12, generator=torch.Generator().manual_seed(1))]
    spec = mudsc.trace(a, loader[0][:2])
    with pytest.warns(UserWarning, match="samples for its"):
        stats = mudsc.collect_stats([a, b], spec, loader, progress=False)
    (group,) = [g for g in spec.groups if g.size == 48]
    assert stats.underdetermined(group.name) and stats.degenerate_units(group.name).numel() == 0
    calls = []
    real = Descent.weight_part
    monkeypatch.setattr(Descent, "weight_part", lambda self, g: calls.append(g.name) or real(self, g))
    mudsc.match([a, b], spec, "zipit", stats=stats, progress=False)
    assert calls == []
    # a tie makes it ask for them: three units of model a that fire on sample 0 only (x0 = 10 there, below 9
    # elsewhere) correlate exactly 1 with each other
    loader[0][0, 0] = 10.0
    assert float(loader[0][1:, 0].max()) < 9.0
    with torch.no_grad():
        w = torch.tensor([5.0, 3.0, 4.0])
        a[0].weight[:3] = 0.0
        a[0].weight[:3, 0] = w
        a[0].bias[:3] = -9.0 * w
    with pytest.warns(UserWarning, match="samples for its"):
        stats = mudsc.collect_stats([a, b], spec, loader, progress=False)
    assert stats.degenerate_units(group.name).numel() == 0
    mudsc.match([a, b], spec, "zipit", stats=stats, progress=False)
    assert group.name in calls
