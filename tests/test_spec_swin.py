"""Swin transformer constructs in the tracer: ``F.pad``, ``torch.roll``, indexing by one tensor (a relative
position table).

Every supported construct is traced strictly with ``check=True`` (random permutations of every group leave the
outputs unchanged); the expected groups and members are written down from what each module computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mudsc import trace
from mudsc.spec import SpecTraceError

torch.set_num_threads(2)


def _members(group):
    return {(m.name, m.axis, m.offset) for m in group.members}


def _only_group(spec):
    assert len(spec.groups) == 1, [g.name for g in spec.groups]
    return spec.groups[0]


# -- F.pad -------------------------------------------------------------------------------------------------------
class _PadConv(nn.Module):
    """Conv, a pad of the spatial axes (channels untouched), conv: the hidden 6 channels stay one group."""

    def __init__(self, **pad):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), nn.Linear(4, 2)
        self.pad = pad

    def forward(self, x):
        h = F.pad(torch.relu(self.a(x)), (1, 2, 0, 1), **self.pad)
        return self.head(self.b(h).mean((2, 3)))


@pytest.mark.parametrize("pad", [{}, {"value": 0.5}, {"mode": "reflect"}, {"mode": "replicate"}])
def test_padding_spatial_axes_keeps_the_channels(pad):
    spec = trace(_PadConv(**pad), torch.randn(2, 3, 5, 5))
    assert [g.size for g in spec.groups] == [6, 4]
    assert _members(spec.groups[0]) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("b.weight", 1, 0)}


class _PadLast(nn.Module):
    """Channel-last ``[B, H, W, C]``: ``pad`` with zero amounts on the channel axis (timm's window padding)."""

    def __init__(self, amounts):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.amounts = amounts

    def forward(self, x):
        return self.b(F.pad(self.a(x), self.amounts)).sum((1, 2))


def test_zero_pad_of_a_channel_axis_keeps_it():
    group = _only_group(trace(_PadLast((0, 0, 0, 1, 2, 0)), torch.randn(2, 3, 3, 4)))
    assert _members(group) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("b.weight", 1, 0)}


def test_padding_a_channel_axis_is_refused():
    with pytest.raises(SpecTraceError, match=r"F.pad pads axis 3, which holds channels, by \(0, 1\)"):
        trace(_PadLast((0, 1, 0, 1)), torch.randn(2, 3, 3, 4))


# -- torch.roll --------------------------------------------------------------------------------------------------
class _Rolled(nn.Module):
    """Channel-last hidden units rolled along H and W (function and method forms), or along ``dims``."""

    def __init__(self, dims=(1, 2), shifts=(1, -1)):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.dims, self.shifts = dims, shifts

    def forward(self, x):
        h = torch.roll(self.a(x), shifts=self.shifts, dims=self.dims)
        return self.b(h.roll(2, 1)).sum((1, 2))


def test_rolling_spatial_axes_keeps_the_channels():
    group = _only_group(trace(_Rolled(), torch.randn(2, 3, 4, 4)))
    assert _members(group) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("b.weight", 1, 0)}


def test_a_roll_by_a_multiple_of_the_length_is_the_identity():
    group = _only_group(trace(_Rolled(dims=3, shifts=12), torch.randn(2, 3, 4, 4)))
    assert group.size == 6


@pytest.mark.parametrize("dims", [(2, 3), None])
def test_rolling_a_channel_axis_is_refused(dims):
    # without dims the flattened tensor is rolled: every axis moves, the channel axis (3) among them
    with pytest.raises(SpecTraceError, match="torch.roll rolls axis 3, which holds channels"):
        trace(_Rolled(dims=dims, shifts=(1, 1) if dims else 1), torch.randn(2, 3, 4, 4))


# -- indexing by a tensor ----------------------------------------------------------------------------------------
class _Table(nn.Module):
    """A learned per-position table gathered by an index buffer (a relative position bias with channels): the
    gathered rows follow the index, the table's columns are the hidden units it is added to."""

    def __init__(self, index_shape=(5,)):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.table = nn.Parameter(torch.randn(7, 6))
        self.register_buffer("index", torch.randint(0, 7, index_shape))

    def forward(self, x):
        bias = self.table[self.index.view(-1)].view(*self.index.shape, 6)
        return self.b(self.a(x) + bias)


@pytest.mark.parametrize("index_shape,x_shape", [((5,), (2, 5, 4)), ((3, 5), (2, 3, 5, 4))])
def test_a_table_gathered_by_an_index_shares_its_columns(index_shape, x_shape):
    group = _only_group(trace(_Table(index_shape), torch.randn(*x_shape)))
    # the table's rows (gathered at fixed positions) and the index buffer are no members
    assert _members(group) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("table", 1, 0), ("b.weight", 1, 0)}


class _Gather(nn.Module):
    """``h[index]`` forms on ``[B, T, C]`` hidden units: tokens picked by an integer buffer, or a boolean mask,
    or channels picked by an integer buffer (those channels then keep the identity)."""

    def __init__(self, form):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.form = form
        self.register_buffer("tokens", torch.tensor([3, 0, 0, 2]))
        self.register_buffer("mask", torch.tensor([True, False, True, True, False]))
        self.register_buffer("channels", torch.tensor([5, 4, 3, 2, 1, 0]))

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.form == "tokens":
            h = h[:, self.tokens]
        elif self.form == "tokens...":
            h = h[:, self.tokens, ...]
        elif self.form == "mask":
            h = h[:, self.mask]
        elif self.form == "channels":
            h = h[..., self.channels]
        elif self.form == "channel mask":
            h = h[..., self.mask.repeat(2)[:6]]
        elif self.form == "two":
            h = h[:, self.tokens, self.channels[:4]].unsqueeze(-1).expand(-1, -1, 6)
        return self.b(h)


@pytest.mark.parametrize("form", ["tokens", "tokens...", "mask"])
def test_gathering_tokens_keeps_the_channels(form):
    group = _only_group(trace(_Gather(form), torch.randn(2, 5, 4)))
    assert _members(group) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("b.weight", 1, 0)}


def test_gathering_channels_fixes_them():
    assert trace(_Gather("channels"), torch.randn(2, 5, 4)).groups == []


@pytest.mark.parametrize("form,match", [("channel mask", "a boolean mask indexes axes 2..2"),
                                        ("two", "indexing with 2 tensor indices")])
def test_indexing_that_cannot_be_described_is_refused(form, match):
    with pytest.raises(SpecTraceError, match=match):
        trace(_Gather(form), torch.randn(2, 5, 4))
