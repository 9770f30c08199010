"""The tracer's op registries (mudsc.spec.handlers): lookups by function, method name and module type, and the
tap-choice helpers (mudsc.spec.taps)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from mudsc.spec.handlers import FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS, NAMED_FUNCTION_HANDLERS, \
    module_handler
from mudsc.spec.handlers import attention, layers, shape
from mudsc.spec.handlers.dispatch import _table, qualified_name
from mudsc.spec.taps import mutated_in_place, unique
from mudsc.spec import Tap


def test_registries_map_ops_to_their_handlers():
    assert FUNCTION_HANDLERS[torch.cat] is shape.cat and FUNCTION_HANDLERS[operator.add] is shape.elementwise
    assert FUNCTION_HANDLERS[F.linear] is layers.linear_function
    assert FUNCTION_HANDLERS[F.scaled_dot_product_attention] is attention.scaled_dot_product_attention
    assert METHOD_HANDLERS["view"] is shape.reshape and METHOD_HANDLERS["unbind"] is shape.unbind
    assert METHOD_HANDLERS["size"] is shape.no_info
    assert MODULE_HANDLERS[nn.Linear] is layers.linear and MODULE_HANDLERS[nn.Conv2d] is layers.conv


def test_optional_library_functions_are_found_by_name():
    tv = pytest.importorskip("torchvision")
    assert NAMED_FUNCTION_HANDLERS[qualified_name(tv.ops.stochastic_depth)] is shape.stochastic_depth
    assert qualified_name(torch.roll) not in NAMED_FUNCTION_HANDLERS


def test_stochastic_depth_in_training_keeps_the_channels():
    tv = pytest.importorskip("torchvision")
    from mudsc import trace

    class AlwaysTraining(tv.ops.StochasticDepth):
        """Stays in training mode (ignores ``eval()``), so the graph holds ``stochastic_depth(..., True)``."""

        def train(self, mode=True):
            return self

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), AlwaysTraining(0.5, "row"), nn.Linear(8, 3))
    calls = [n for n in fx.symbolic_trace(net.eval()).graph.nodes if n.target is tv.ops.stochastic_depth]
    assert len(calls) == 1 and calls[0].args[-1] is True
    # check=False: the op is random here, so two forward passes differ whatever the permutation
    spec = trace(net, torch.randn(6, 4), check=False)
    assert [g.size for g in spec.groups] == [8]
    assert {(m.name, m.axis) for m in spec.groups[0].members} == {("0.weight", 0), ("0.bias", 0), ("3.weight", 1)}


def test_module_lookup_follows_the_mro():
    class MyLinear(nn.Linear):
        pass

    assert module_handler(nn.BatchNorm2d(3)) is layers.batch_norm  # registered as _BatchNorm
    assert module_handler(MyLinear(2, 2)) is layers.linear
    # UpsamplingNearest2d subclasses Upsample but is registered as a 2-d pool itself
    assert module_handler(nn.UpsamplingNearest2d(scale_factor=2)) is MODULE_HANDLERS[nn.MaxPool2d]
    assert module_handler(nn.Upsample(scale_factor=2)) is layers.upsample
    assert module_handler(nn.LSTM(2, 2)) is None


def test_every_handler_has_a_one_line_docstring():
    for table in (FUNCTION_HANDLERS, NAMED_FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS):
        for op, handler in table.items():
            doc = (handler.__doc__ or "").strip()
            assert doc and "\n" not in doc, (op, handler)


def test_an_op_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        _table({torch.cat: shape.cat}, {torch.cat: shape.stack})


def test_unknown_ops_are_unsupported():
    assert torch.cumsum not in FUNCTION_HANDLERS and "cumsum" not in METHOD_HANDLERS


def test_swin_ops_are_registered():
    assert FUNCTION_HANDLERS[torch.roll] is shape.roll and METHOD_HANDLERS["roll"] is shape.roll
    assert FUNCTION_HANDLERS[F.pad] is shape.pad
    tv = pytest.importorskip("torchvision")
    st = tv.models.swin_transformer
    for fn in (st._patch_merging_pad, st._get_relative_position_bias, st.shifted_window_attention):
        assert NAMED_FUNCTION_HANDLERS[qualified_name(fn)].__module__ == "mudsc.spec.handlers.swin"


class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = x + 1
        g = h * 2
        g.mul_(3)
        k = self.act(h - 1)
        return g + k + torch.relu_(h)


def test_mutated_in_place_names_the_modified_tensors():
    gm = fx.symbolic_trace(_InPlace())
    mutated = mutated_in_place(gm)
    users = {n.name: n for n in gm.graph.nodes}
    assert "mul" in mutated and "add" in mutated and "sub" in mutated  # g.mul_, relu_(h), ReLU(inplace) on h - 1
    assert all(name in users for name in mutated)


def test_unique_keeps_first_seen_order():
    a, b = Tap("a", "input", 1), Tap("b", "output", -1)
    assert unique([a, b, a, b]) == [a, b]
