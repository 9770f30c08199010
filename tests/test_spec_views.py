"""Dense views of compactly stored tensors (mudsc/spec/views.py) and the grouped convolutions that use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import mudsc
from mudsc import PermSpec, permute_model, trace
from mudsc.spec.views import View, compact, dense_shape, dense_tensors, expand


# -- the layouts, written out by hand ------------------------------------------------------------------------------
def test_grouped_expand_is_block_diagonal():
    t = torch.arange(1.0, 9.0).view(4, 2, 1)  # 4 output channels, 2 groups of 2 input channels
    dense = expand(t, View("grouped", 1, 2))
    expected = torch.tensor([[1.0, 2.0, 0.0, 0.0],
                             [3.0, 4.0, 0.0, 0.0],
                             [0.0, 0.0, 5.0, 6.0],
                             [0.0, 0.0, 7.0, 8.0]]).view(4, 4, 1)
    assert torch.equal(dense, expected)
    assert dense_shape((4, 2, 1), View("grouped", 1, 2)) == (4, 4, 1)
    assert torch.equal(compact(dense, View("grouped", 1, 2)), t)


def test_grouped_compact_refuses_weights_outside_the_blocks():
    dense = expand(torch.ones(4, 2, 3, 3), View("grouped", 1, 2))
    dense[0, 3] = 0.5  # output channel 0 (group 0) reads input channel 3 (group 1)
    with pytest.raises(ValueError, match="outside its 2 diagonal blocks"):
        compact(dense, View("grouped", 1, 2), "conv.weight")


def test_repeat_expand_and_the_mean_of_a_merged_block():
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # 3 positions x 2 heads
    view = View("repeat", 1, 2, repeats=3)
    assert torch.equal(expand(t, view), torch.tensor([[1.0] * 3 + [2.0] * 3, [3.0] * 3 + [4.0] * 3,
                                                      [5.0] * 3 + [6.0] * 3]))
    assert torch.equal(compact(expand(t, view), view), t)
    merged = torch.tensor([[1.0, 2.0, 6.0, 0.0]])  # blocks of 2 units after a zip that halved the heads' width
    assert torch.allclose(compact(merged, view), torch.tensor([[1.5, 3.0]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="tiled", axis=1, blocks=2), "kind"),
    (dict(kind="grouped", axis=0, blocks=2), "axis 1"),
    (dict(kind="repeat", axis=0, blocks=0), "positive"),
])
def test_view_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        View(**kwargs)


def test_shapes_that_do_not_fit_a_view_are_named():
    with pytest.raises(ValueError, match="5 rows do not split into 2"):
        expand(torch.ones(5, 2, 1), View("grouped", 1, 2), "conv.weight")
    with pytest.raises(ValueError, match="axis 1 has 3 entries"):
        expand(torch.ones(4, 3), View("repeat", 1, 2, 4))


def test_dense_tensors_replaces_only_viewed_tensors():
    a, b = torch.ones(4, 2, 1), torch.ones(3)
    out = dense_tensors({"a": a, "b": b}, {"a": View("grouped", 1, 2)})
    assert out["b"] is b and out["a"].shape == (4, 4, 1)


# -- grouped convolutions in a model -----------------------------------------------------------------------------
class _Grouped(nn.Module):
    """A ResNeXt-like block: dense 1x1, grouped 3x3 (4 groups), dense 1x1, with BatchNorm, and a head."""

    def __init__(self, width=16, groups=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(8, width, 1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1, groups=groups), nn.BatchNorm2d(width)
        self.c3 = nn.Conv2d(width, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        x = x + self.c3(y)
        return self.head(x.mean((2, 3)))


def _grouped(seed):
    torch.manual_seed(seed)
    model = _Grouped()
    for bn in (model.b1, model.b2):  # non-trivial statistics, so that the BN members matter
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return model.eval()


def test_grouped_spec_is_invariant_and_serialises_its_views():
    model = _grouped(0)
    spec = trace(model, torch.randn(2, 3, 8, 8))  # check=True: random block-respecting permutations
    c1 = next(g for g in spec.groups if g.name == "c1")
    c2 = next(g for g in spec.groups if g.name == "c2")
    assert (c1.num_blocks, c2.num_blocks) == (4, 4) and c1.block_tie == c2.block_tie
    assert set(spec.views) == {"c2.weight"}
    again = PermSpec.from_json(spec.to_json())
    assert again == spec and again.views == spec.views
    assert "views" not in trace(mudsc.models.mlp(), torch.randn(2, 1, 28, 28)).to_dict()


def test_permuting_a_grouped_model_moves_whole_groups():
    model = _grouped(0)
    x = torch.randn(4, 3, 8, 8)
    spec = trace(model, x[:2])
    perms = spec.random_permutations(seed=1)
    permuted = permute_model(model, spec, perms)
    assert not torch.equal(permuted.c2.weight, model.c2.weight)
    assert torch.allclose(permuted(x), model(x), atol=1e-5)
    # the rows of output group b of c2 read input group perm_blocks[b]: check one row by hand
    bs = 4
    new_row = 5  # block 1
    old_row = int(perms["c2"][new_row])
    old_block, new_block = old_row // bs, new_row // bs
    cols = perms["c1"][new_block * bs:(new_block + 1) * bs] - old_block * bs
    assert torch.equal(permuted.c2.weight[new_row], model.c2.weight[old_row][cols])


@pytest.mark.parametrize("method", ["rebasin", "zipit", "mudsc-zip"])
def test_merging_a_permuted_copy_recovers_the_grouped_model(method):
    model = _grouped(0)
    x = torch.randn(64, 3, 8, 8)
    spec = trace(model, x[:2])
    other = permute_model(model, spec, spec.random_permutations(seed=2))
    loader = [(x[i:i + 32],) for i in (0, 32)]
    result = mudsc.merge([model, other], loader, method=method, progress=False)
    merged = result.plan.apply([model, other])
    assert torch.allclose(merged(x), model(x), atol=1e-4)


def test_every_method_merges_three_grouped_models_into_a_loadable_model():
    models = [_grouped(s) for s in range(3)]
    x = torch.randn(64, 3, 8, 8)
    loader = [(x[i:i + 32],) for i in (0, 32)]
    for method in mudsc.METHODS:
        merged = mudsc.merge(models, loader, method=method, progress=False).model
        fresh = _Grouped()
        fresh.load_state_dict(merged.state_dict(), strict=True)
        assert torch.isfinite(fresh.eval()(x[:4])).all(), method


# -- per-head tables (repeat views) ---------------------------------------------------------------------------------
class _HeadTables(nn.Module):
    """Attention whose logits get a per-head scale ``[heads, 1, 1]`` and a per-head bias ``[heads, N, N]`` (the
    tables of Swin v2 / Swin's relative-position bias, without the index)."""

    def __init__(self, dim=8, heads=2, tokens=4):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 3)
        self.scale = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.bias
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.out(self.proj(y).mean(1))


def test_per_head_tables_follow_the_head_permutation():
    torch.manual_seed(0)
    model = _HeadTables().eval()
    x = torch.randn(16, 4, 8)
    spec = trace(model, x[:2])
    assert spec.views == {"scale": View("repeat", 0, 2, 4), "bias": View("repeat", 0, 2, 4)}
    qk = spec.groups[0]
    assert qk.num_blocks == 2 and {m.name for m in qk.members} >= {"scale", "bias"}
    perms = spec.random_permutations(seed=1)
    permuted = permute_model(model, spec, perms)
    heads = perms[qk.name].view(2, 4)[:, 0] // 4  # the old head each new head comes from
    assert torch.equal(permuted.bias, model.bias[heads]) and torch.equal(permuted.scale, model.scale[heads])
    assert torch.allclose(permuted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("method", ["rebasin", "act-align", "zipit", "mudsc-zip"])
def test_merging_a_head_permuted_copy_recovers_the_model(method):
    torch.manual_seed(0)
    model = _HeadTables().eval()
    x = torch.randn(16, 4, 8)
    spec = trace(model, x[:2])
    other = permute_model(model, spec, spec.random_permutations(seed=3))
    result = mudsc.merge([model, other], [(x,)], method=method, progress=False)
    assert torch.allclose(result.plan.apply([model, other])(x), model(x), atol=1e-5)


def test_permuted_share_counts_the_stored_rows_of_a_per_head_table():
    model = _HeadTables()
    spec = trace(model, torch.randn(2, 4, 8))
    # every parameter but the classifier ``out`` (3x8 + 3, its rows are the model's outputs) is permuted on axis 0:
    # qkv 24x8 + 24, proj 8x8 + 8, scale 2, bias 2x4x4
    permuted = 24 * 8 + 24 + 8 * 8 + 8 + 2 + 32
    assert mudsc.spec.permuted_share(model, spec) == pytest.approx(permuted / (permuted + 3 * 8 + 3))
