"""``merge(..., strict=...)`` and ``report["coverage"]`` (issue 18): a strict merge of a model with a construct the
tracer cannot follow raises naming the fx node and offering ``strict=False``; ``strict=False`` merges with those
channels unpermuted; the report always gives the share of parameters permuted.

The expected shares are counted by hand from the layers' parameter sizes (which layer produces which units), not
read back from the code under test."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc.spec import SpecTraceError
from test_spec_coverage import _DataDependent  # ``if h.sum() > 0``: torch.fx builds no graph

torch.set_num_threads(2)
FAST = dict(max_sweeps=1, patience=1, progress=False)

# Linear(4, 8) -> Linear(8, 6) -> Linear(6, 3): weights and biases of 40, 54 and 21 entries
A, B, C = 8 * 4 + 8, 6 * 8 + 6, 3 * 6 + 3


class _MLP(nn.Module):
    """4 -> 8 -> 6 -> 3; with ``roll``, a ``torch.roll`` (no handler) over the 8 hidden units of ``a``."""

    def __init__(self, roll: bool = False):
        super().__init__()
        self.roll = roll
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        if self.roll:
            h = torch.roll(h, 1, dims=1)
        return self.c(torch.relu(self.b(torch.relu(h))))


def _models(roll: bool):
    out = []
    for seed in range(2):
        torch.manual_seed(seed)
        out.append(_MLP(roll).eval())
    return out


def _loader():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(8, 4, generator=gen) for _ in range(2)]


def test_a_strict_merge_names_the_node_and_offers_strict_false():
    with pytest.raises(SpecTraceError, match=r"(?s)fx node 'roll'.*merge\(\.\.\., strict=False\) merges anyway"):
        mudsc.merge(_models(roll=True), _loader(), method="zipit", **FAST)


def test_a_non_strict_merge_leaves_the_channels_unpermuted_and_reports_its_coverage():
    ms = _models(roll=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = mudsc.merge(ms, _loader(), method="zipit", strict=False, **FAST)
    assert any("fx node 'roll'" in str(w.message) and "unpermuted" in str(w.message) for w in caught)
    # the roll fixes a's 8 units (a's rows stay in place); b's 6 units are the one group, c's 3 logits are outputs
    assert result.report["coverage"] == {"permuted_share": pytest.approx(B / (A + B + C)), "groups": 1,
                                         "strict": False, "traced": True}
    assert list(result.report["groups"].values())[0]["size"] == 6
    fresh = _MLP(roll=True)
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    x = _loader()[0]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), result.model(x))


def test_the_report_gives_the_share_of_a_traced_model():
    result = mudsc.merge(_models(roll=False), _loader(), method="zipit", **FAST)
    # the 8 and 6 hidden units are permuted; only the 3 class logits keep their order
    assert result.report["coverage"] == {"permuted_share": pytest.approx((A + B) / (A + B + C)), "groups": 2,
                                         "strict": True, "traced": True}


def test_with_a_spec_passed_nothing_is_traced_and_strict_is_unused():
    ms = _models(roll=True)
    with pytest.warns(UserWarning, match="fx node 'roll'"):
        spec = mudsc.trace(ms[0], torch.randn(2, 4), strict=False)
    result = mudsc.merge(ms, _loader(), method="zipit", spec=spec, **FAST)  # strict=True by default: not used
    assert result.report["coverage"] == {"permuted_share": pytest.approx(B / (A + B + C)), "groups": 1,
                                         "strict": True, "traced": False}


def test_avg_permutes_nothing():
    result = mudsc.merge(_models(roll=True), _loader(), method="avg", **FAST)
    assert result.report["coverage"] == {"permuted_share": 0.0, "groups": 0, "strict": True, "traced": False}


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match="strict must be True or False, got 'no'"):
        mudsc.merge(_models(roll=False), _loader(), method="zipit", strict="no", **FAST)


def test_a_model_torch_fx_cannot_trace_is_not_offered_strict_false():
    ms = [_DataDependent(), _DataDependent()]
    with pytest.raises(SpecTraceError, match="torch.fx could not trace") as info:
        mudsc.merge(ms, _loader(), method="zipit", **FAST)
    assert "strict=False) merges anyway" not in str(info.value) and "merge(..., spec=spec)" in str(info.value)
