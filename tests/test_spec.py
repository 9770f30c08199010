"""Permutation specs: tracing (group counts/sizes derived by hand from each architecture), the invariance check,
the dict round trip, permute_model and apply_maps (weight averaging, exact recovery, narrower merges)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mudsc
from mudsc import PermSpec, apply_maps, check_spec, models, permute_model, trace
from mudsc.spec import SpecCheckError, SpecTraceError

torch.set_num_threads(2)


def _sizes(spec):
    return sorted(g.size for g in spec.groups)


def _group_with(spec, name, axis, offset=0):
    for g in spec.groups:
        for m in g.members:
            if m.name == name and m.axis == axis and m.offset == offset:
                return g
    raise AssertionError(f"no group holds {name} axis {axis} offset {offset}")


def _has(group, name, axis, role, offset=0):
    return any(m.name == name and m.axis == axis and m.role == role and m.offset == offset for m in group.members)


# -- built-in models ---------------------------------------------------------------------------------------------
def test_mlp_groups_are_the_hidden_layers():
    spec = trace(models.mlp(hidden=(32, 16)), torch.randn(2, 1, 28, 28))
    assert [g.size for g in spec.groups] == [32, 16]
    hidden = _group_with(spec, "layers.0.weight", 0)
    assert _has(hidden, "layers.0.bias", 0, "output") and _has(hidden, "layers.2.weight", 1, "input")
    assert len(hidden.members) == 3


def test_resnet20_bn_groups():
    spec = trace(models.resnet20(width=1), torch.randn(2, 3, 32, 32))
    # 3 residual streams (stem+stage 1, stage 2, stage 3) + one internal group per block (9 blocks)
    assert len(spec) == 12
    assert _sizes(spec) == [16] * 4 + [32] * 4 + [64] * 4
    assert all(g.num_blocks == 1 for g in spec.groups)
    stream = _group_with(spec, "conv1.weight", 0)
    for b in range(3):
        assert _has(stream, f"layer1.{b}.conv2.weight", 0, "output")
        assert _has(stream, f"layer1.{b}.conv1.weight", 1, "input")
    assert _has(stream, "layer2.0.shortcut.0.weight", 1, "input")
    assert not _has(stream, "layer2.0.shortcut.0.weight", 0, "output")
    # stem conv + bn (4 tensors) + 3 x (conv2 + bn2) + 3 block inputs + next stage's conv1 and shortcut inputs
    assert len(stream.members) == 5 + 3 * 5 + 3 + 2
    last = _group_with(spec, "layer3.0.shortcut.0.weight", 0)
    assert _has(last, "linear.weight", 1, "input") and last is _group_with(spec, "layer3.2.bn2.bias", 0)
    running = [m for m in stream.members if m.name.endswith("running_var")]
    assert running and not any(m.similarity for m in running)
    internal = _group_with(spec, "layer1.0.conv1.weight", 0)
    assert internal.taps == [mudsc.spec.Tap("layer1.0.conv2", "input", 1)]
    # the downsampling block's conv1 and shortcut read one tensor: tapped once (not counted twice)
    taps = [t.module for t in stream.taps]
    assert "layer2.0.conv1" in taps and "layer2.0.shortcut.0" not in taps


class _SharedInput(torch.nn.Module):
    """Two convs read one tensor; with ``mutate`` an in-place op changes it between the reads."""

    def __init__(self, mutate: bool):
        super().__init__()
        self.mutate = mutate
        self.stem = torch.nn.Conv2d(3, 6, 1)
        self.a = torch.nn.Conv2d(6, 4, 1)
        self.b = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        y = self.a(h)
        if self.mutate:
            h.mul_(2.0)
        return y + self.b(h)


@pytest.mark.parametrize("mutate", [False, True])
def test_a_tensor_read_twice_is_tapped_once_unless_modified_in_place(mutate):
    spec = trace(_SharedInput(mutate), torch.randn(2, 3, 8, 8))
    stem = _group_with(spec, "stem.weight", 0)
    assert [t.module for t in stem.taps] == (["a", "b"] if mutate else ["a"])


def test_resnet20_gn_groups_have_group_blocks():
    spec = trace(models.resnet20(width=2, norm="gn"), torch.randn(2, 3, 32, 32))
    assert _sizes(spec) == [32] * 4 + [64] * 4 + [128] * 4
    assert [g.num_blocks for g in spec.groups] == [8] * 12


def test_vgg11_groups():
    spec = trace(models.vgg11(width=1, in_channels=1), torch.randn(2, 1, 32, 32))
    assert [g.size for g in spec.groups] == [8, 16, 32, 32, 64, 64, 64, 64]
    last = _group_with(spec, "features.25.weight", 0)
    assert _has(last, "classifier.weight", 1, "input")


def test_vit_groups_heads_and_tie():
    depth, dim, heads = 2, 96, 4
    spec = trace(models.vit(depth=depth, dim=dim, heads=heads), torch.randn(2, 3, 32, 32))
    assert len(spec) == 1 + 3 * depth
    residual = spec.groups[0]
    assert residual.size == dim and residual.num_blocks == 1
    for name, axis in (("cls_token", 2), ("pos_embed", 2), ("patch_embed.weight", 0), ("norm.weight", 0),
                       ("blocks.1.attn.proj.bias", 0), ("blocks.0.mlp.2.weight", 0)):
        assert _has(residual, name, axis, "output"), name
    assert _has(residual, "head.weight", 1, "input") and _has(residual, "blocks.0.attn.qkv.weight", 1, "input")
    for b in range(depth):
        qk = _group_with(spec, f"blocks.{b}.attn.qkv.weight", 0, offset=0)
        assert _group_with(spec, f"blocks.{b}.attn.qkv.weight", 0, offset=dim) is qk
        vo = _group_with(spec, f"blocks.{b}.attn.qkv.weight", 0, offset=2 * dim)
        assert vo is not qk and _has(vo, f"blocks.{b}.attn.proj.weight", 1, "input")
        assert (qk.size, qk.num_blocks, vo.size, vo.num_blocks) == (dim, heads, dim, heads)
        assert qk.block_tie is not None and qk.block_tie == vo.block_tie
        assert {t.channel_slice for t in qk.taps} == {(0, dim), (dim, 2 * dim)}
        assert vo.taps == [mudsc.spec.Tap(f"blocks.{b}.attn.proj", "input", -1)]
        hidden = _group_with(spec, f"blocks.{b}.mlp.0.weight", 0)
        assert hidden.size == 4 * dim and hidden.num_blocks == 1
    axes = spec.axes_of("blocks.0.attn.qkv.weight")
    assert [(a, r) for a, _, r in axes] == [(0, "output")] * 3 + [(1, "input")]
    assert axes[3][1] == residual.name


def test_share_heads_false_reproduces_the_original_untied_heads():
    spec = trace(models.vit(depth=1, dim=32, heads=2), torch.randn(1, 3, 32, 32), share_heads=False)
    assert [(g.num_blocks, g.block_tie) for g in spec.groups] == [(1, None), (2, None), (2, None), (1, None)]


def test_random_permutations_respect_blocks_and_ties():
    spec = trace(models.vit(depth=1, dim=64, heads=4), torch.randn(1, 3, 32, 32), check=False)
    perms = spec.random_permutations(seed=3)
    qk = _group_with(spec, "blocks.0.attn.qkv.weight", 0)
    vo = _group_with(spec, "blocks.0.attn.qkv.weight", 0, offset=128)
    heads_qk = perms[qk.name].view(4, 16) // 16
    heads_vo = perms[vo.name].view(4, 16) // 16
    assert (heads_qk == heads_qk[:, :1]).all() and torch.equal(heads_qk[:, 0], heads_vo[:, 0])
    assert sorted(perms[qk.name].tolist()) == list(range(64))


class _Zoo(nn.Module):
    """Depthwise conv, SE gate, channel concat, channels-last LayerNorm, GroupNorm, flatten into Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.ln = nn.LayerNorm(16)
        self.gn = nn.GroupNorm(4, 16)
        self.mix = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.dw(x)
        y = y * torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        z = torch.cat([y, self.branch(x)], dim=1)
        z = self.ln(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z = F.relu(self.mix(self.gn(z)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(z, 4), 1))


def test_zoo_of_constructs():
    spec = trace(_Zoo(), torch.randn(2, 3, 8, 8))
    # stem (= dw output = SE-gated y), SE hidden, branch, mix; GroupNorm(4, 16) over cat(8, 8): 2 groups each
    assert sorted((g.size, g.num_blocks) for g in spec.groups) == [(4, 1), (8, 2), (8, 2), (12, 1)]
    stem = _group_with(spec, "stem.weight", 0)
    assert _has(stem, "dw.weight", 0, "output") and _has(stem, "se_expand.weight", 0, "output")
    assert _has(stem, "ln.weight", 0, "output") and _has(stem, "gn.weight", 0, "output")
    assert _has(stem, "mix.weight", 1, "input") and _has(stem, "branch.weight", 1, "input")
    branch = _group_with(spec, "branch.weight", 0)
    assert any(m.name == "ln.weight" and m.offset == 8 for m in branch.members)
    fc = [m for m in _group_with(spec, "mix.weight", 0).members if m.name == "fc.weight"]
    assert fc == [mudsc.spec.Member("fc.weight", 1, "input", inner=16)]


def test_gn_split_across_concat_gets_blocks():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.gn = nn.GroupNorm(4, 8)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(self.gn(torch.cat([self.a(x), self.b(x)], 1)))

    spec = trace(Net(), torch.randn(2, 3, 4, 4))
    assert [(g.size, g.num_blocks) for g in spec.groups] == [(4, 2), (4, 2)]


def test_gn_groups_straddling_a_concat_are_reported():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)
            self.gn = nn.GroupNorm(2, 14)
            self.out = nn.Conv2d(14, 2, 1)

        def forward(self, x):
            return self.out(self.gn(torch.cat([self.a(x), self.b(x)], 1)))

    with pytest.raises(SpecTraceError, match="straddles blocks of 7"):
        trace(Net(), torch.randn(2, 3, 4, 4))
    with pytest.warns(UserWarning, match="straddles"):
        spec = trace(Net(), torch.randn(2, 3, 4, 4), strict=False)
    # a's 8 channels straddle GroupNorm groups [0, 7) | [7, 14) and are dropped; b's [8, 14) lie inside group 1
    assert [(g.name, g.size, g.num_blocks) for g in spec.groups] == [("b", 6, 1)]


def test_multihead_attention_module():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(5, 16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.embed(x)
            out, _ = self.attn(h, h, h)
            return self.head(h + out)

    spec = trace(Net(), torch.randn(2, 7, 5))
    assert len(spec) == 3
    qk = _group_with(spec, "attn.in_proj_weight", 0)
    vo = _group_with(spec, "attn.in_proj_weight", 0, offset=32)
    assert _group_with(spec, "attn.in_proj_weight", 0, offset=16) is qk
    assert qk.num_blocks == vo.num_blocks == 4 and qk.block_tie == vo.block_tie is not None
    assert _has(vo, "attn.out_proj.weight", 1, "input")
    assert qk.taps[0].linear == {"weight": "attn.in_proj_weight", "bias": "attn.in_proj_bias", "rows": (0, 16)}


def test_embedding_token_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 12)
            self.norm = nn.LayerNorm(12)
            self.fc = nn.Linear(12, 7)
            self.out = nn.Linear(7, 3)

        def forward(self, tokens):
            return self.out(F.gelu(self.fc(self.norm(self.embed(tokens))))).mean(1)

    spec = trace(Net(), torch.randint(0, 11, (2, 5)))
    assert [g.size for g in spec.groups] == [12, 7]
    embed = _group_with(spec, "embed.weight", 1)
    assert _has(embed, "norm.weight", 0, "output") and _has(embed, "fc.weight", 1, "input")
    assert spec.axes_of("embed.weight", ndim=2) == [(0, None, None), (1, embed.name, "output")]


# -- unsupported constructs --------------------------------------------------------------------------------------
class _Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.roll(torch.relu(self.a(x)), 1, dims=1))))


def test_unsupported_op_names_the_node():
    with pytest.raises(SpecTraceError, match="'roll'"):
        trace(_Rolled(), torch.randn(3, 4))


def test_non_strict_drops_groups_with_a_warning():
    with pytest.warns(UserWarning, match="roll"):
        spec = trace(_Rolled(), torch.randn(3, 4), strict=False)
    assert [g.name for g in spec.groups] == ["b"]


def test_grouped_convolution_ties_the_blocks_of_its_input_and_output():
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, groups=2), nn.Conv2d(6, 4, 1), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 2))
    spec = trace(net, torch.randn(1, 3, 4, 4))
    assert [(g.size, g.num_blocks) for g in spec.groups] == [(8, 2), (6, 2), (4, 1)]
    assert spec.groups[0].block_tie is not None and spec.groups[0].block_tie == spec.groups[1].block_tie
    assert _has(spec.groups[0], "1.weight", 1, "input")  # the dense form's columns
    assert spec.views["1.weight"].kind == "grouped" and spec.views["1.weight"].blocks == 2


class _ChannelShuffle(nn.Module):
    """A grouped convolution after a channel shuffle (ShuffleNet): its input channel axis is structured."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1, groups=2)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, _, h, w = y.shape
        y = y.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, 8, h, w)
        return self.c(self.b(y))


def test_grouped_convolution_over_a_shuffled_axis_is_left_unpermuted_with_a_warning():
    with pytest.warns(UserWarning, match="grouped convolution"):
        spec = trace(_ChannelShuffle(), torch.randn(1, 3, 4, 4))
    assert [g.name for g in spec.groups] == []


# -- hand-written specs and the check ----------------------------------------------------------------------------
def test_dict_round_trip_and_json():
    spec = trace(models.vit(depth=1, dim=32, heads=2), torch.randn(1, 3, 32, 32))
    text = json.dumps(spec.to_dict())
    again = PermSpec.from_dict(json.loads(text))
    assert again == spec and again.to_dict() == spec.to_dict()
    assert "blocks" in str(again).splitlines()[1] and len(str(again).splitlines()) == len(spec) + 2


def test_wrong_hand_written_spec_is_caught():
    model = models.resnet20()
    x = torch.randn(2, 3, 32, 32)
    data = trace(model, x).to_dict()
    stream = next(g for g in data["groups"] if any(m["name"] == "conv1.weight" for m in g["members"]))
    # the typo class the original's ResNet-50 spec shipped: one block's output BN missing from the stream
    stream["members"] = [m for m in stream["members"] if m["name"] != "layer1.1.bn2.weight"]
    with pytest.raises(SpecCheckError, match=stream["name"]):
        check_spec(model, PermSpec.from_dict(data), x)


def test_independent_head_permutations_are_caught():
    model = models.vit(depth=1, dim=32, heads=4)
    x = torch.randn(1, 3, 32, 32)
    data = trace(model, x).to_dict()
    for g in data["groups"]:
        if g["name"].endswith("[64:96]"):
            g["block_tie"] = None  # the original's behaviour: v/o heads matched independently of q/k
    untied = PermSpec.from_dict(data)
    perms = untied.random_permutations(0)
    qk, vo = [g for g in untied.groups if g.num_blocks > 1]
    assert not torch.equal(perms[qk.name].view(4, 8)[:, 0] // 8, perms[vo.name].view(4, 8)[:, 0] // 8)
    with pytest.raises(SpecCheckError):
        check_spec(model, untied, x)


def test_hand_written_minimal_dict():
    model = models.mlp(in_features=6, hidden=(5,), num_classes=2)
    spec = PermSpec.from_dict({"groups": [{"name": "h", "size": 5, "members": [
        ["layers.0.weight", 0, "output"], ["layers.0.bias", 0, "output"], ["layers.2.weight", 1, "input"]]}]})
    check_spec(model, spec, torch.randn(3, 6))
    with pytest.raises(ValueError, match="role"):
        PermSpec.from_dict({"groups": [{"name": "h", "size": 5, "members": [["layers.0.weight", 0, "out"]]}]})


# -- permute_model and apply_maps --------------------------------------------------------------------------------
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_permute_model_rejects_bad_permutations():
    model = models.mlp(in_features=6, hidden=(5,), num_classes=2)
    spec = trace(model, torch.randn(3, 6))
    with pytest.raises(ValueError, match="permutation"):
        permute_model(model, spec, {"layers.0": torch.tensor([0, 0, 1, 2, 3])})
    with pytest.raises(ValueError, match="not in the spec"):
        permute_model(model, spec, {"nope": torch.arange(5)})


def test_apply_identity_maps_is_weight_averaging():
    torch.manual_seed(0)
    a, b = models.resnet20(), models.resnet20()
    spec = trace(a, torch.randn(2, 3, 32, 32))
    merged = apply_maps([a, b], spec, {})
    sa, sb, sm = _state(a), _state(b), _state(merged)
    for k in sa:
        if torch.is_floating_point(sa[k]):
            torch.testing.assert_close(sm[k], (sa[k] + sb[k]) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("build,shape", [
    (lambda: models.resnet20(norm="bn"), (2, 3, 32, 32)),
    (lambda: models.resnet20(norm="gn"), (2, 3, 32, 32)),
    (lambda: models.vit(depth=2, dim=48, heads=3), (2, 3, 32, 32)),
    (lambda: models.vgg11(), (2, 3, 32, 32)),
])
def test_apply_inverse_permutation_recovers_model(build, shape):
    torch.manual_seed(1)
    model = build().eval()
    x = torch.randn(*shape)
    spec = trace(model, x)
    perms = spec.random_permutations(seed=5)
    other = permute_model(model, spec, perms)
    maps = {}
    for g in spec.groups:
        labels = np.concatenate([np.arange(g.size), perms[g.name].numpy()])
        maps[g.name] = mudsc.MatchResult(labels=labels, num_outputs=g.size, merge_value=0.0)
    merged = apply_maps([model, other], spec, maps).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(apply_maps([model, other], spec, {})(x), model(x), atol=1e-3)


class _Pairs:
    """A zip-like map: both models' units 2j and 2j+1 (within a block) all merge into unit j."""

    def __init__(self, group):
        bs = group.block_size
        u = np.arange(group.size)
        one = (u // bs) * (bs // 2) + (u % bs) // 2
        self.labels = np.concatenate([one, one])
        self.num_outputs = group.size // 2


def test_apply_narrower_merge_updates_attributes():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    a, b = models.vit(depth=1, dim=48, heads=3), models.vit(depth=1, dim=48, heads=3)
    spec = trace(a, x)
    merged = apply_maps([a, b], spec, {g.name: _Pairs(g) for g in spec.groups})
    assert merged(x).shape == (2, 10)
    assert merged.norm.normalized_shape == (24,) and merged.blocks[0].attn.qkv.out_features == 72
    assert merged.blocks[0].mlp[0].out_features == 96 and merged.cls_token.shape == (1, 1, 24)

    r1, r2 = models.resnet20(norm="gn"), models.resnet20(norm="gn")
    spec = trace(r1, x)
    merged = apply_maps([r1, r2], spec, {g.name: _Pairs(g) for g in spec.groups})
    assert merged(x).shape == (2, 10)
    assert merged.linear.in_features == 32 and merged.layer1[0].bn1.num_channels == 8
    assert merged.layer1[0].bn1.num_groups == 8 and merged.conv1.out_channels == 8


def test_apply_segment_means_match_dense_merge_matrices():
    torch.manual_seed(3)
    a, b = models.mlp(in_features=6, hidden=(4,), num_classes=3), models.mlp(in_features=6, hidden=(4,),
                                                                             num_classes=3)
    spec = trace(a, torch.randn(2, 6))
    match = mudsc.MatchResult(labels=np.array([0, 1, 1, 2, 0, 2, 1, 2]), num_outputs=3, merge_value=0.0)
    merged = apply_maps([a, b], spec, {"layers.0": match}, merge_eps=1e-5)
    u = torch.from_numpy(match.unmerge(np.float64))
    m = torch.from_numpy(match.merge(np.float64))
    w0 = [x.layers[0].weight.double() for x in (a, b)]
    w2 = [x.layers[2].weight.double() for x in (a, b)]
    expected0 = sum(m[4 * i:4 * i + 4].T @ w0[i] for i in range(2))
    expected2 = sum(w2[i] @ u[4 * i:4 * i + 4] for i in range(2)) / 2
    torch.testing.assert_close(merged.layers[0].weight.double(), expected0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(merged.layers[2].weight.double(), expected2, rtol=1e-6, atol=1e-7)


def test_apply_rejects_bad_maps():
    a = models.mlp(in_features=6, hidden=(4,), num_classes=3)
    spec = trace(a, torch.randn(2, 6))
    with pytest.raises(ValueError, match="shape"):
        apply_maps([a, a], spec, {"layers.0": mudsc.MatchResult(np.arange(4), 4, 0.0)})
    with pytest.raises(TypeError, match="labels"):
        apply_maps([a, a], spec, {"layers.0": np.arange(8)})


# -- torchvision and timm (random weights) -----------------------------------------------------------------------
def _torchvision(name):
    tv = pytest.importorskip("torchvision")
    return getattr(tv.models, name)(weights=None)


def _timm(name):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False)


def test_torchvision_resnet18():
    spec = trace(_torchvision("resnet18"), torch.randn(1, 3, 32, 32))
    # 4 streams (the stem joins layer1's identity stream) + 8 internal groups
    assert _sizes(spec) == sorted([64, 128, 256, 512] + [64, 64, 128, 128, 256, 256, 512, 512])


_RESNET50_SIZES = sorted([64, 256, 512, 1024, 2048] + [64] * 6 + [128] * 8 + [256] * 12 + [512] * 6)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_resnet50(source):
    model = _torchvision("resnet50") if source == "torchvision" else _timm("resnet50")
    spec = trace(model, torch.randn(1, 3, 64, 64))
    # stem (64, its own stream: layer1 starts with a projection) + 4 stage streams + 2 internal per bottleneck
    assert len(spec) == 37 and _sizes(spec) == _RESNET50_SIZES


@pytest.mark.slow
def test_timm_resnet50_gn():
    spec = trace(_timm("resnet50_gn"), torch.randn(1, 3, 64, 64))
    assert _sizes(spec) == _RESNET50_SIZES and all(g.num_blocks == 32 for g in spec.groups)


@pytest.mark.slow
def test_torchvision_vgg11_bn():
    spec = trace(_torchvision("vgg11_bn"), torch.randn(1, 3, 32, 32))
    assert [g.size for g in spec.groups] == [64, 128, 256, 256, 512, 512, 512, 512, 4096, 4096]
    last_conv = _group_with(spec, "features.25.weight", 0)
    assert [m for m in last_conv.members if m.name == "classifier.0.weight"] == [
        mudsc.spec.Member("classifier.0.weight", 1, "input", inner=49)]


def _check_vit(spec, depth, dim, heads):
    assert len(spec) == 1 + 3 * depth
    assert spec.groups[0].size == dim and spec.groups[0].num_blocks == 1
    structured = [g for g in spec.groups if g.num_blocks > 1]
    assert len(structured) == 2 * depth
    assert all((g.size, g.num_blocks, g.block_size) == (dim, heads, dim // heads) for g in structured)
    ties = {}
    for g in structured:
        ties.setdefault(g.block_tie, []).append(g)
    assert len(ties) == depth and all(len(v) == 2 for v in ties.values())
    assert sorted(g.size for g in spec.groups if g.num_blocks == 1) == [dim] + [4 * dim] * depth


@pytest.mark.slow
def test_torchvision_vit_b_16():
    spec = trace(_torchvision("vit_b_16"), torch.randn(1, 3, 224, 224))
    _check_vit(spec, 12, 768, 12)
    assert all(t.linear is not None for g in spec.groups if g.num_blocks > 1 for t in g.taps)


@pytest.mark.slow
def test_timm_vit_small_patch16_224():
    spec = trace(_timm("vit_small_patch16_224"), torch.randn(1, 3, 224, 224))
    _check_vit(spec, 12, 384, 6)


class _KeepsAReference(nn.Module):
    """Holds its first layer's weight also in a plain attribute (outside ``_parameters``)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 2)
        self.alias = self.fc1.weight  # an nn.Parameter assigned again: registered, so pop it to keep it plain
        del self._parameters["alias"]
        object.__setattr__(self, "alias", self.fc1.weight)

    def forward(self, x):
        return self.fc2(torch.relu(x @ self.alias.t() + self.fc1.bias))


def test_apply_maps_copies_fully_when_a_tensor_lives_in_a_plain_attribute():
    """apply_maps builds the result on a copy without the old values; a model that keeps a tensor in a plain
    attribute gets a full copy instead, so that attribute still holds a tensor of the right shape."""
    torch.manual_seed(0)
    ms = [_KeepsAReference() for _ in range(2)]
    merged = mudsc.apply_maps(ms, PermSpec([]), {})
    assert merged.alias.shape == (5, 6)
    x = torch.randn(3, 6)
    assert merged(x).shape == (3, 2)


def test_apply_maps_averages_in_float64_once():
    """Tensors in no group are the float64 mean rounded once, whatever N and dtype."""
    torch.manual_seed(1)
    for n in (2, 3):
        ms = [nn.Linear(7, 3).double() if n == 3 else nn.Linear(7, 3) for _ in range(n)]
        merged = mudsc.apply_maps(ms, mudsc.PermSpec([]), {})
        want = torch.stack([m.weight.detach().double() for m in ms]).mean(0).to(ms[0].weight.dtype)
        assert torch.equal(merged.weight.detach(), want)
        assert all(not torch.equal(m.weight, merged.weight) for m in ms)  # the inputs are untouched copies
