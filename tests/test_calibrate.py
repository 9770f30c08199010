"""The calibrated BatchNorm reset (mudsc.calibrate): its formula on numbers worked by hand, the self-merge that
keeps the trained statistics exactly, full and partial merges of every method, and its refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc import models
from mudsc.calibrate import bn_statistics, calibrate_bn, check_reset_mode


def _loader(batches=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 16, 16, generator=gen) for _ in range(batches)]


def _trained_resnets(n, seed=0):
    """ResNet-20x1s whose BatchNorm statistics are not what the merge loader gives (shifted, scaled data)."""
    torch.manual_seed(seed)
    ms = [models.resnet20(width=1) for _ in range(n)]
    for i, m in enumerate(ms):
        mudsc.reset_bn(m, [2.0 * x + 1.0 + i for x in _loader(seed=10 + i)])
        m.eval()
    return ms


def _merge(ms, loader, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples per unit
        return mudsc.merge(ms, loader, progress=False, max_sweeps=2, patience=1, **kw)


def test_the_formula_on_numbers_worked_by_hand():
    bn = nn.BatchNorm1d(3)
    bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))  # what the reset gave
    bn.running_var.copy_(torch.tensor([4.0, 1.0, 9.0]))
    model = nn.Sequential(bn)
    trained = {"0": (torch.tensor([0.5, -1.0, 7.0]), torch.tensor([2.0, 3.0, 5.0]))}
    reference = {"0": (torch.tensor([1.5, 2.0, 1.0]), torch.tensor([8.0, 0.5, 0.0]))}
    assert calibrate_bn(model, trained, reference) == 1
    # mean: 0.5 + (1 - 1.5) = 0; -1 + (2 - 2) = -1; channel 2 has a zero reference variance: the reset's stays
    assert torch.allclose(bn.running_mean, torch.tensor([0.0, -1.0, 3.0]))
    # var: 2 * 4 / 8 = 1; 3 * 1 / 0.5 = 6; 9 (kept)
    assert torch.allclose(bn.running_var, torch.tensor([1.0, 6.0, 9.0]))


def test_layers_missing_or_of_another_size_are_left_alone():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2, track_running_stats=False))
    before = bn_statistics(model)
    assert list(before) == ["0"]  # the layer without running statistics is not listed
    assert calibrate_bn(model, {"0": (torch.zeros(3), torch.ones(3))}, {"0": (torch.zeros(3), torch.ones(3))}) == 0
    assert calibrate_bn(model, {}, {}) == 0
    assert torch.equal(model[0].running_mean, before["0"][0])


@pytest.mark.parametrize("method", ["avg", "zipit", "mudsc-zip"])
def test_a_self_merge_keeps_the_trained_statistics(method):
    """N copies of one model: merging changes no activation, so the calibrated reset gives back the model's own
    statistics (the plain reset gives the loader's)."""
    m = _trained_resnets(1)[0]
    loader = _loader()
    calibrated = _merge([m, copy.deepcopy(m)], loader, method=method, reset_bn_stats="calibrated").model
    plain = _merge([m, copy.deepcopy(m)], loader, method=method).model
    own, cal, pl = bn_statistics(m), bn_statistics(calibrated), bn_statistics(plain)
    assert own.keys() == cal.keys()
    for name, (mean, var) in own.items():
        assert torch.allclose(cal[name][0], mean, atol=1e-4), name
        assert torch.allclose(cal[name][1], var, rtol=1e-3, atol=1e-5), name
    assert not all(torch.allclose(pl[n][0], own[n][0], atol=1e-2) for n in own)  # the data are shifted


def test_a_self_merge_cut_anywhere_keeps_the_trained_statistics():
    m = _trained_resnets(1)[0]
    loader = _loader()
    res = _merge([m, copy.deepcopy(m)], loader, method="zipit", stop_at="layer2", reset_bn_stats="calibrated")
    own = bn_statistics(m)
    for part in [res.model.prefix, *res.model.branches]:
        for name, (mean, var) in bn_statistics(part).items():
            assert torch.allclose(mean, own[name][0], atol=1e-4) and torch.allclose(var, own[name][1], rtol=1e-3,
                                                                                     atol=1e-5), name
    with torch.no_grad():
        assert torch.allclose(res.model.eval()(loader[0]), m(loader[0]), atol=1e-3)


@pytest.mark.parametrize("method", sorted(mudsc.METHODS))
@pytest.mark.parametrize("stop_at", [None, "layer3"])
def test_every_method_with_three_models(method, stop_at):
    ms = _trained_resnets(3, seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in ms]
    loader = _loader()
    res = _merge(ms, loader, method=method, stop_at=stop_at, reset_bn_stats="calibrated")
    plain = _merge(ms, loader, method=method, stop_at=stop_at, reset_bn_stats=True)
    for i, m in enumerate(ms):  # the endpoints' resets ran on copies
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[i][k]), f"model {i} {k} changed"
    with torch.no_grad():
        out = res.model.eval()(loader[0])
    assert out.shape == (16, 10) and torch.isfinite(out).all()
    if stop_at is None:
        fresh = models.resnet20(width=1)
        fresh.load_state_dict(res.model.state_dict(), strict=True)
    # the same plan; only the statistics differ
    assert all((res.plan.maps[g].labels == plain.plan.maps[g].labels).all() for g in res.plan.maps)
    cal, pl = bn_statistics(res.model), bn_statistics(plain.model)
    assert cal.keys() == pl.keys() and any(not torch.allclose(cal[n][0], pl[n][0]) for n in cal)
    assert res.report["timing"]["reset_bn"] > 0


def test_bad_modes_are_refused_before_any_work():
    for bad in ("yes", 1, "auto", "Calibrated"):
        with pytest.raises(ValueError, match="reset_bn_stats must be"):
            check_reset_mode(bad)
    ms = _trained_resnets(2)
    with pytest.raises(ValueError, match="reset_bn_stats must be"):
        mudsc.merge(ms, _loader(), method="zipit", reset_bn_stats="calibrate", progress=False)
    for good in (None, True, False, "calibrated"):
        check_reset_mode(good)


def test_the_default_is_calibrated_for_a_partial_merge_and_plain_for_a_full_one():
    ms = _trained_resnets(2, seed=2)
    loader = _loader()
    for stop_at, same_as in ((None, True), ("layer3", "calibrated")):
        default = bn_statistics(_merge(ms, loader, method="zipit", stop_at=stop_at).model)
        chosen = bn_statistics(_merge(ms, loader, method="zipit", stop_at=stop_at, reset_bn_stats=same_as).model)
        other = bn_statistics(_merge(ms, loader, method="zipit", stop_at=stop_at,
                                     reset_bn_stats="calibrated" if same_as is True else True).model)
        assert all(torch.equal(default[n][0], chosen[n][0]) for n in default), stop_at
        assert not all(torch.allclose(default[n][0], other[n][0]) for n in default), stop_at
