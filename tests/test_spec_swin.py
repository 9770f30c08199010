"""Swin transformer constructs in the tracer: ``F.pad``, ``torch.roll``, indexing by one tensor (a relative
position table), and the torchvision functions wrapped with ``torch.fx.wrap`` (``_patch_merging_pad``,
``_get_relative_position_bias``, ``shifted_window_attention``; ``mudsc/spec/handlers/swin.py``).

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

try:  # called from this module, torchvision's function must be wrapped here too to stay a leaf of the graph
    from torchvision.models.swin_transformer import _get_relative_position_bias
    torch.fx.wrap("_get_relative_position_bias")
except ImportError:
    _get_relative_position_bias = None


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


# -- torchvision's wrapped Swin functions ------------------------------------------------------------------------
class _PatchMerge(nn.Module):
    """Linear, torchvision's ``PatchMerging`` (``_patch_merging_pad``: odd H/W padded, 2x2 neighbours side by side;
    LayerNorm(4C); Linear 4C -> 2C), Linear: the hidden 4 units appear four times along the merged axis."""

    def __init__(self, transpose=False):
        super().__init__()
        from torchvision.models.swin_transformer import PatchMerging
        self.a, self.merge, self.b = nn.Linear(3, 4), PatchMerging(4), nn.Linear(8, 2)
        self.transpose = transpose

    def forward(self, x):
        h = self.a(x)
        if self.transpose:
            h = h.transpose(-1, -2)
        return self.b(self.merge(h))


def test_patch_merging_pad_repeats_the_channels_four_times():
    pytest.importorskip("torchvision")
    spec = trace(_PatchMerge(), torch.randn(2, 3, 3, 3))
    assert [g.size for g in spec.groups] == [4, 8]
    quarters = (0, 4, 8, 12)
    assert _members(spec.groups[0]) == {("a.weight", 0, 0), ("a.bias", 0, 0)} | {
        (name, axis, q) for q in quarters
        for name, axis in (("merge.norm.weight", 0), ("merge.norm.bias", 0), ("merge.reduction.weight", 1))}
    assert _members(spec.groups[1]) == {("merge.reduction.weight", 0, 0), ("b.weight", 1, 0)}


def test_patch_merging_pad_of_a_channel_axis_is_refused():
    pytest.importorskip("torchvision")
    # [B, H, C, W]: the pad and the 2x2 subsampling would act on the channel axis
    with pytest.raises(SpecTraceError, match="_patch_merging_pad pads and subsamples axes -3 and -2"):
        trace(_PatchMerge(transpose=True), torch.randn(2, 4, 4, 3))


class _BiasedConv(nn.Module):
    """Conv, plus torchvision's relative position bias ``[1, 6, 4, 4]`` of a 2x2 window (a 9x6 table gathered by
    16 relative positions), conv: the table's columns are the 6 hidden channels."""

    def __init__(self):
        super().__init__()
        from torchvision.models.swin_transformer import ShiftedWindowAttention
        index = ShiftedWindowAttention(8, [2, 2], [0, 0], 1).relative_position_index
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)
        self.table = nn.Parameter(torch.randn(9, 6))
        self.register_buffer("index", index)

    def forward(self, x):
        return self.b(self.a(x) + _get_relative_position_bias(self.table, self.index, [2, 2]))


def test_relative_position_bias_columns_follow_the_tensor_they_meet():
    pytest.importorskip("torchvision")
    calls = [n for n in torch.fx.symbolic_trace(_BiasedConv()).graph.nodes if n.op == "call_function"]
    assert _get_relative_position_bias in [n.target for n in calls]  # a leaf, not its traced body
    group = _only_group(trace(_BiasedConv(), torch.randn(2, 3, 4, 4)))
    assert _members(group) == {("a.weight", 0, 0), ("a.bias", 0, 0), ("table", 1, 0), ("b.weight", 1, 0)}


class _WindowBlock(nn.Module):
    """Linear, a torchvision (shifted) window attention with a residual, Linear, on ``[B, H, W, C]``."""

    def __init__(self, heads=1, v2=False, shift=1):
        super().__init__()
        from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
        attention = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
        self.a, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.attn = attention(8, [2, 2], [shift, shift], heads)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.attn(h)).mean((1, 2))


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("shift", [0, 1])
def test_shifted_window_attention_one_head(v2, shift):
    pytest.importorskip("torchvision")
    # 3x3 tokens: padded to 4x4 windows of 2x2, rolled by one with shift 1 (all inside the wrapped function)
    spec = trace(_WindowBlock(v2=v2, shift=shift), torch.randn(2, 3, 3, 4))
    by_name = {g.name: g for g in spec.groups}
    w, b = "attn.qkv.weight", "attn.qkv.bias"
    assert _members(by_name["a"]) == {("a.weight", 0, 0), ("a.bias", 0, 0), (w, 1, 0), ("attn.proj.weight", 0, 0),
                                      ("attn.proj.bias", 0, 0), ("head.weight", 1, 0)}
    assert _members(by_name["attn.qkv[0:8]"]) == {(w, 0, 0), (w, 0, 8), (b, 0, 0), (b, 0, 8)}  # q ∪ k
    assert _members(by_name["attn.qkv[16:24]"]) == {(w, 0, 16), (b, 0, 16), ("attn.proj.weight", 1, 0)}  # v
    assert all(g.num_blocks == 1 for g in spec.groups)
    taps = [t.linear for t in by_name["attn.qkv[0:8]"].taps]
    assert {t.module for t in by_name["attn.qkv[0:8]"].taps} == {"attn"}
    assert taps == [{"weight": w, "bias": b, "rows": (0, 8)}, {"weight": w, "bias": b, "rows": (8, 16)}]
    # v2 computes its bias table with an MLP (cpb_mlp: 2 -> 512 -> heads), whose hidden units are a group
    assert set(by_name) - {"a", "attn.qkv[0:8]", "attn.qkv[16:24]"} == (
        {"attn.cpb_mlp.0", "attn"} if v2 else set())


def test_shifted_window_attention_input_with_channels_on_a_spatial_axis_is_refused():
    pytest.importorskip("torchvision")

    class Net(_WindowBlock):
        def forward(self, x):
            return self.attn(self.a(x).transpose(-1, -2)).sum()  # [B, H, C, W] with W = C = 8

    with pytest.raises(SpecTraceError, match="shifted_window_attention pads, rolls and windows axes 0-2"):
        trace(Net(), torch.randn(2, 3, 8, 4))


@pytest.mark.parametrize("v2", [False, True])
def test_shifted_window_attention_two_heads(v2):
    pytest.importorskip("torchvision")
    spec = trace(_WindowBlock(heads=2, v2=v2), torch.randn(2, 3, 3, 4))  # strict, check=True
    qkv = [g for g in spec.groups if g.name.startswith("attn.qkv")]  # q∪k (rows 0:8 and 8:16) and v (16:24)
    assert [g.name for g in qkv] == ["attn.qkv[0:8]", "attn.qkv[16:24]"]
    assert [g.num_blocks for g in qkv] == [2, 2] and qkv[0].block_tie == qkv[1].block_tie
    # the bias table's heads (and v2's logit_scale) are read per head, as a repeat view of q/k's units
    tables = {name: view.kind for name, view in spec.views.items()}
    assert set(tables.values()) == {"repeat"} and any("logit_scale" in n for n in tables) == v2


# -- whole Swin models -----------------------------------------------------------------------
def _tiny_swin(source, seed=0, heads=1, depths=(1, 1)):
    """A tiny Swin (8x8 images, 2x2 patches and windows, widths 8 and 16) of ``source``: "tv", "tv_v2" or "timm"."""
    torch.manual_seed(seed)
    if source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=8, patch_size=2,
                                 embed_dim=8, depths=depths, num_heads=(heads, heads), window_size=2, num_classes=3)
    tv = pytest.importorskip("torchvision")
    from torchvision.models import swin_transformer as st
    kw = dict(block=st.SwinTransformerBlockV2, downsample_layer=st.PatchMergingV2) if source == "tv_v2" else {}
    return tv.models.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=list(depths), num_heads=[heads, heads],
                                     window_size=[2, 2], num_classes=3, **kw)


@pytest.mark.parametrize("source", ["tv", "tv_v2", "timm"])
def test_tiny_swin_models_trace_strictly(source):
    spec = trace(_tiny_swin(source).eval(), torch.randn(1, 3, 8, 8))
    sizes = sorted(g.size for g in spec.groups if ".qkv" not in g.name and "cpb_mlp" not in g.name)
    # per stage: the residual stream (8, then 16 after the merge) and the MLP hidden units (4x); q∪k and v per block
    assert sizes[-4:] == [8, 16, 32, 64]
    assert sorted(g.size for g in spec.groups if ".qkv" in g.name) == [8, 8, 16, 16]


@pytest.mark.parametrize("source", ["tv", "tv_v2", "timm"])
def test_tiny_two_head_swin_merges_into_a_loadable_model(source):
    import mudsc

    def build(seed):
        # torchvision gets a second block in stage 1, whose windows are shifted
        return _tiny_swin(source, seed, heads=2, depths=(1, 1) if source == "timm" else (2, 1))

    a, b = build(0).eval(), build(1).eval()
    x = torch.randn(16, 3, 8, 8)
    spec = trace(a, x[:2])
    assert mudsc.spec.permuted_share(a, spec) > 0.97
    assert any(g.num_blocks == 2 for g in spec.groups) and spec.views
    # a permuted copy (heads moved with their tables) is recovered exactly; a second model merges and reloads.
    # Not v2: its cpb_mlp hidden units only ever see the (2w-1)^2 positions of a fixed coordinate table (9 samples
    # for 512 units here), which activations cannot pin down (merge warns that the group is rank-deficient)
    if source != "tv_v2":
        other = mudsc.permute_model(a, spec, spec.random_permutations(seed=1))
        res = mudsc.merge([a, other], [(x,)], method="zipit", progress=False)
        assert torch.allclose(res.plan.apply([a, other])(x), a(x), atol=1e-4)
    merged = mudsc.merge([a, b], [(x,)], method="zipit", progress=False).model
    fresh = build(2)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert torch.isfinite(fresh.eval()(x)).all()
