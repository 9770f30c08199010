"""Partial zipping (mudsc/partial.py, mudsc/spec/cut.py): merged up to a module, each model's own layers after it.

Oracles: the model's forward written out by hand (merged layers, then each model's own layers on the merged
features gathered by its labels), self-merges (N copies of one model must give the model's outputs), and the
models' own tensors (the branches hold copies of them)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mudsc
from mudsc import models
from mudsc.partial import PartialMerge, partial_merge
from mudsc.spec.cut import CutError


def _loader(batches=2, size=16, shape=(3, 16, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=gen) for _ in range(batches)]


def _resnets(n, norm="bn", seed=0):
    torch.manual_seed(seed)
    ms = [models.resnet20(width=1, norm=norm) for _ in range(n)]
    for m in ms:
        m.eval()
    return ms


def _group_with(spec, member_name):
    return next(g for g in spec.groups if any(m.name == member_name and m.axis == 0 for m in g.members))


def test_resnet_cut_at_layer3_matches_the_forward_written_out():
    ms = _resnets(2)
    x = _loader(1)[0]
    plan = mudsc.merge(ms, _loader(), method="zipit", progress=False, reset_bn_stats=False).plan
    partial = partial_merge(ms, plan, "layer3", x[:2]).eval()
    merged = plan.apply(ms).eval()
    group = _group_with(plan.spec, "layer2.0.shortcut.0.weight")  # the residual stream entering layer3
    labels = torch.as_tensor(plan.maps[group.name].labels).long()
    with torch.no_grad():
        h = F.relu(merged.bn1(merged.conv1(x)))
        h = merged.layer2(merged.layer1(h))
        expected = []
        for i, m in enumerate(ms):
            hi = h[:, labels[i * group.size:(i + 1) * group.size]]
            expected.append(m.linear(torch.flatten(m.avgpool(m.layer3(hi)), 1)))
        got = partial.branch_outputs(x)
        combined = partial(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(combined, (expected[0] + expected[1]) / 2, rtol=1e-5, atol=1e-5)
    counts = partial.parameter_counts()
    per_model = sum(p.numel() for p in ms[0].parameters())
    layer3_and_head = sum(p.numel() for n, p in ms[0].named_parameters() if n.startswith(("layer3.", "linear.")))
    assert counts["branches"] == [layer3_and_head] * 2
    assert counts["prefix"] == per_model - layer3_and_head  # N = 2 and the default reduce keep the widths


@pytest.mark.parametrize("build,stops", [
    (lambda: models.resnet20(width=1, norm="gn"), ["layer2", "layer3.1", "linear"]),
    (lambda: models.vgg11(width=1), ["features.8", "classifier"]),
    (lambda: models.vit(depth=2, dim=48, heads=3, patch=8), ["blocks.1", "blocks.1.mlp", "norm", "head"]),
])
def test_a_self_merge_cut_anywhere_is_the_model(build, stops):
    torch.manual_seed(3)
    model = build().eval()
    x = _loader(1, size=8, shape=(3, 32, 32))[0]
    plan = mudsc.merge([model] * 3, [x], method="zipit", progress=False, reset_bn_stats=False, repair=False).plan
    with torch.no_grad():
        want = model(x)
        for stop in stops:
            got = partial_merge([model] * 3, plan, stop, x[:2]).eval()(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"stop_at={stop}")


@pytest.mark.parametrize("method", sorted(mudsc.METHODS))
def test_every_method_with_three_models(method):
    ms = _resnets(3, seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in ms]
    loader = _loader()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples per unit
        res = mudsc.merge(ms, loader, method=method, progress=False, stop_at="layer3", max_sweeps=2, patience=1)
    partial = res.model
    assert isinstance(partial, PartialMerge) and len(partial.branches) == 3
    with torch.no_grad():
        out = partial.eval()(loader[0])
    assert out.shape == (16, 10) and torch.isfinite(out).all()
    report = res.report["partial"]
    assert report["stop_at"] == "layer3"
    assert report["parameters"]["total"] < report["models_parameters"] == 3 * sum(p.numel() for p in ms[0].parameters())
    for i, m in enumerate(ms):  # the inputs are untouched (the BN reset ran on copies)
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[i][k]), f"model {i} {k} changed"
        branch = dict(partial.branches[i].named_parameters())
        for k, v in m.named_parameters():
            if k.startswith("layer3."):
                assert torch.equal(branch[k], v) and branch[k].data_ptr() != v.data_ptr()
    merged = dict(res.plan.apply(ms).named_parameters())
    for k, v in partial.prefix.named_parameters():
        assert torch.equal(v, merged[k]), k


def test_state_dict_reloads_into_a_partial_rebuilt_from_the_plan():
    ms = _resnets(2, seed=2)
    loader = _loader()
    res = mudsc.merge(ms, loader, method="mudsc-zip", progress=False, stop_at="layer2", max_sweeps=2)
    rebuilt = partial_merge(ms, res.plan, "layer2", loader[0][:2])
    rebuilt.load_state_dict(res.model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(loader[1]), res.model.eval()(loader[1]))


class _ShapeNet(nn.Module):
    """Reads a width in the prefix and uses it after the cut: each branch must recompute it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        n = h.shape[-1]
        h = F.relu(self.fc2(h))
        return self.fc3(h.reshape(-1, n))


def test_sizes_read_before_the_cut_are_each_models_own():
    torch.manual_seed(4)
    ms = [_ShapeNet().eval() for _ in range(2)]
    x = torch.randn(64, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reduce=0.25 changes the merged widths
        res = mudsc.merge(ms, [x], method="zipit", reduce=0.25, progress=False, stop_at="fc2")
    group = _group_with(res.plan.spec, "fc1.weight")
    k = int(res.plan.maps[group.name].num_outputs)
    assert k != 16  # the merged prefix is wider than each model
    labels = torch.as_tensor(res.plan.maps[group.name].labels).long()
    merged = res.plan.apply(ms)
    with torch.no_grad():
        h = F.relu(merged.fc1(x))
        want = [m.fc3(F.relu(m.fc2(h[:, labels[i * 16:(i + 1) * 16]]))) for i, m in enumerate(ms)]
        got = res.model.branch_outputs(x)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)


class _Head(nn.Module):
    def forward(self, t):
        return t[0].mean(1)


class _AttnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.attn = nn.MultiheadAttention(12, 2, batch_first=True)
        self.head = _Head()

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.attn(h, h, h))


def test_a_tuple_crossing_the_cut_is_refused_naming_the_node():
    model = _AttnNet().eval()
    with pytest.raises(CutError, match="attn.*tuple"):
        mudsc.spec.cut.find_cut(model, torch.randn(2, 5, 6), "head")


class _Counting:
    def __init__(self, batches):
        self.batches, self.reads = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.reads += 1
            yield b


@pytest.mark.parametrize("stop_at,match", [("layer9", "not a submodule"), ("conv1", "first module"),
                                           ("", "name of a submodule")])
def test_a_bad_stop_at_is_refused_before_the_statistics_pass(stop_at, match):
    ms = _resnets(2)
    loader = _Counting(_loader(4))
    with pytest.raises(CutError, match=match):
        mudsc.merge(ms, loader, method="zipit", progress=False, stop_at=stop_at)
    assert loader.reads <= 1  # only the peek at the first batch


def test_bad_combine_and_missing_inputs_are_refused():
    ms = _resnets(2)
    with pytest.raises(ValueError, match="combine"):
        mudsc.merge(ms, _loader(), method="zipit", progress=False, stop_at="layer3", combine="max")
    with pytest.raises(ValueError, match="example inputs"):
        mudsc.merge(ms, None, method="avg", progress=False, stop_at="layer3")


def test_combine_options():
    ms = _resnets(2, seed=5)
    x = _loader(1)[0]
    plan = mudsc.merge(ms, _loader(), method="zipit", progress=False, reset_bn_stats=False).plan
    outs = partial_merge(ms, plan, "layer3", x[:2]).eval().branch_outputs(x)
    for combine, want in [("sum", outs[0] + outs[1]), ("cat", torch.cat(outs, -1)),
                          (lambda o: torch.stack(o).amax(0), torch.maximum(outs[0], outs[1]))]:
        got = partial_merge(ms, plan, "layer3", x[:2], combine=combine).eval()(x)
        torch.testing.assert_close(got, want)
