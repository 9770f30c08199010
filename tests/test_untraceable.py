"""Models torch.fx cannot trace (data-dependent control flow): ``avg`` merges them without a trace; the other
methods fail with an error naming the construct and saying how to pass a spec, and a hand-written spec works."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mudsc import PermSpec, SpecTraceError, check_spec, merge, reset_bn, trace
from mudsc.spec import Group, Member, Tap

torch.set_num_threads(2)

FAST = dict(max_sweeps=2, patience=1, progress=False)


class DataDependent(nn.Module):
    """A BatchNorm MLP whose forward branches on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.bn(self.a(x))
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def _loader(batches=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 4, generator=gen) for _ in range(batches)]


def _models(seed=0):
    torch.manual_seed(seed)
    return [DataDependent().eval(), DataDependent().eval()]


def test_trace_error_names_the_construct():
    with pytest.raises(SpecTraceError) as info:
        trace(DataDependent(), _loader()[0])
    message = str(info.value)
    assert "torch.fx could not trace DataDependent" in message and "control flow" in message
    assert "test_untraceable.py" in message and "if h.sum() > 0:" in message
    assert "spec=" in message


def test_avg_merges_an_untraceable_model_without_a_trace():
    ms = _models(1)
    loader = _loader()
    result = merge(ms, loader, method="avg", progress=False)
    assert result.plan.spec.groups == [] and result.report["groups"] == {}
    assert result.report["merge_value"] == 1.0 and result.report["sweeps"] == 0
    expected = copy.deepcopy(ms[0])
    with torch.no_grad():
        for (name, t), u in zip(expected.state_dict().items(), ms[1].state_dict().values()):
            if t.is_floating_point():
                t.copy_((t + u) / 2)
    reset_bn(expected, loader)  # BatchNorm statistics are recomputed as usual
    for name, t in expected.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[name], t, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.allclose(result.model.bn.running_mean, (ms[0].bn.running_mean + ms[1].bn.running_mean) / 2)
    with torch.no_grad():
        assert torch.isfinite(result.model.eval()(loader[1])).all()


def test_avg_needs_neither_a_loader_nor_example_inputs():
    ms = _models(2)
    merged = merge(ms, None, method="avg", progress=False).model
    torch.testing.assert_close(merged.a.weight, (ms[0].a.weight + ms[1].a.weight) / 2)
    torch.testing.assert_close(merged.bn.running_var, (ms[0].bn.running_var + ms[1].bn.running_var) / 2)


def test_avg_self_merge_of_an_untraceable_model_is_exact():
    a = _models(3)[0]
    merged = merge([a, a], _loader(), method="avg", reset_bn_stats=False, progress=False).model
    for name, t in a.state_dict().items():
        assert torch.equal(merged.state_dict()[name], t), name


def test_avg_plan_without_groups_applies_again():
    ms = _models(4)
    result = merge(ms, None, method="avg", progress=False)
    again = result.plan.apply(ms)
    for name, t in result.model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name


@pytest.mark.parametrize("method", ["zipit", "rebasin", "mudsc-zip"])
def test_other_methods_say_how_to_pass_a_spec(method):
    with pytest.raises(SpecTraceError) as info:
        merge(_models(5), _loader(), method=method, **FAST)
    message = str(info.value)
    assert "if h.sum() > 0:" in message and "control flow" in message
    assert "merge(..., spec=spec)" in message and "PermSpec" in message and "'avg' needs none" in message


def _hand_written_spec() -> PermSpec:
    members = [Member("a.weight", 0, "output"), Member("a.bias", 0, "output"), Member("bn.weight", 0, "output"),
               Member("bn.bias", 0, "output"), Member("bn.running_mean", 0, "output", similarity=False),
               Member("bn.running_var", 0, "output", similarity=False), Member("b.weight", 1, "input")]
    return PermSpec([Group("hidden", 8, members, taps=[Tap("b", "input", -1)])])


@pytest.mark.parametrize("method", ["zipit", "mudsc-zip"])
def test_a_hand_written_spec_merges_an_untraceable_model(method):
    ms = _models(6)
    loader = _loader()
    spec = _hand_written_spec()
    check_spec(ms[0], spec, loader[0])
    result = merge(ms, loader, method=method, spec=spec, **FAST)
    assert result.plan.maps["hidden"].num_outputs == 8
    with torch.no_grad():
        assert torch.isfinite(result.model.eval()(loader[1])).all()
