"""The tracer's op registries (mudsc.spec.handlers): lookups by function, method name and module type, and the
tap-choice helpers (mudsc.spec.taps)."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from mudsc.spec.handlers import FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS, module_handler
from mudsc.spec.handlers import attention, layers, shape
from mudsc.spec.handlers.dispatch import _table
from mudsc.spec.taps import mutated_in_place, unique
from mudsc.spec import Tap


def test_registries_map_ops_to_their_handlers():
    assert FUNCTION_HANDLERS[torch.cat] is shape.cat and FUNCTION_HANDLERS[operator.add] is shape.elementwise
    assert FUNCTION_HANDLERS[F.linear] is layers.linear_function
    assert FUNCTION_HANDLERS[F.scaled_dot_product_attention] is attention.scaled_dot_product_attention
    assert METHOD_HANDLERS["view"] is shape.reshape and METHOD_HANDLERS["unbind"] is shape.unbind
    assert METHOD_HANDLERS["size"] is shape.no_info
    assert MODULE_HANDLERS[nn.Linear] is layers.linear and MODULE_HANDLERS[nn.Conv2d] is layers.conv


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
    for table in (FUNCTION_HANDLERS, METHOD_HANDLERS, MODULE_HANDLERS):
        for op, handler in table.items():
            doc = (handler.__doc__ or "").strip()
            assert doc and "\n" not in doc, (op, handler)


def test_an_op_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        _table({torch.cat: shape.cat}, {torch.cat: shape.stack})


def test_unknown_ops_are_unsupported():
    assert torch.roll not in FUNCTION_HANDLERS and "roll" not in METHOD_HANDLERS


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
