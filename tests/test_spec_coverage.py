"""Graph coverage of the tracer: models are traced in eval mode (train-only branches are not recorded, every
module's train flag comes back), torchvision's ``stochastic_depth``, and the ``nn.Transformer*`` containers that
torch.fx keeps as leaves.

The expected groups and shares are derived by hand from each architecture (which layer produces which units), not
read back from the tracer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mudsc import merge, trace
from mudsc.spec import SpecTraceError

torch.set_num_threads(2)


def _flags(model: nn.Module):
    return {name: m.training for name, m in model.named_modules()}


# -- eval-mode trace ---------------------------------------------------------------------------------------------
class _TrainOnlyNoise(nn.Module):
    """An MLP that multiplies its hidden units by Bernoulli noise in training only (``full_like``/``bernoulli``
    have no handler: recorded, they make a strict trace fail)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            h = h * torch.bernoulli(torch.full_like(h, 0.9))
        return self.b(h)


def test_train_only_branches_are_not_traced_and_flags_come_back():
    model = _TrainOnlyNoise().train()
    model.b.eval()  # a mixed model: each module's own flag must come back, not one flag for all
    before = _flags(model)
    assert before == {"": True, "a": True, "b": False}
    spec = trace(model, torch.randn(2, 4))
    assert [g.size for g in spec.groups] == [8]
    members = {(m.name, m.axis) for m in spec.groups[0].members}
    assert members == {("a.weight", 0), ("a.bias", 0), ("b.weight", 1)}
    assert _flags(model) == before


class _TrainOnlyRoll(nn.Module):
    """In training, a ``torch.roll`` (no handler) on the hidden units; in eval mode, a ``torch.roll`` too: the
    trace fails either way, and the flags must come back after the error."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, dims=1))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        return h if h.sum() > 0 else -h


@pytest.mark.parametrize("build,match", [(_TrainOnlyRoll, "roll"), (_DataDependent, "torch.fx could not trace")])
def test_flags_come_back_when_the_trace_fails(build, match):
    model = build().train()
    model.a.eval()
    before = _flags(model)
    with pytest.raises(SpecTraceError, match=match):
        trace(model, torch.randn(2, 4))
    assert _flags(model) == before


def _timm_vit_with_drop_path():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=48, num_heads=3, num_classes=5, drop_path_rate=0.1)


@pytest.mark.filterwarnings("ignore:.*rank-deficient")
def test_timm_vit_with_drop_path_traces_in_train_mode_and_merges():
    torch.manual_seed(0)
    a, b = _timm_vit_with_drop_path().train(), _timm_vit_with_drop_path().train()
    spec = trace(a, torch.randn(1, 3, 32, 32))
    assert a.training and all(m.training for m in a.modules())
    # the residual stream (48), per block: q/k and v/o (3 heads of 16, tied), the MLP hidden units (4 * 48)
    assert len(spec) == 1 + 3 * 2
    assert sorted((g.size, g.num_blocks) for g in spec.groups) == sorted([(48, 1)] + [(48, 3)] * 4 + [(192, 1)] * 2)
    gen = torch.Generator().manual_seed(1)
    loader = [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(2)]
    result = merge([a, b], loader, method="zipit", progress=False)
    fresh = _timm_vit_with_drop_path()
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        out = result.model.eval()(loader[0])
    assert out.shape == (4, 5) and torch.isfinite(out).all()


# -- torchvision's stochastic_depth ------------------------------------------------------------------------------
def _unpermuted_rows(model: nn.Module, spec):
    """Names of the parameters whose axis 0 is in no group, and the share of parameter entries whose axis 0 is."""
    rows = {m.name for g in spec.groups for m in g.members if m.axis == 0}
    params = dict(model.named_parameters())
    permuted = sum(p.numel() for name, p in params.items() if name in rows)
    return {name for name in params if name not in rows}, permuted / sum(p.numel() for p in params.values())


def _efficientnet_b0_sizes():
    """Group sizes of torchvision's efficientnet_b0, from its stage table (expand ratio, input and output channels,
    blocks): the stem (32), each stage's output stream, the head conv (1280); per block the expanded units (when
    the ratio is not 1) and the squeeze-excitation's max(1, input // 4) units."""
    stages = [(1, 32, 16, 1), (6, 16, 24, 2), (6, 24, 40, 2), (6, 40, 80, 3), (6, 80, 112, 3), (6, 112, 192, 4),
              (6, 192, 320, 1)]
    sizes = [32, 1280]
    for expand, cin, cout, blocks in stages:
        sizes.append(cout)
        for i in range(blocks):
            width = cin if i == 0 else cout
            sizes += ([width * expand] if expand != 1 else []) + [max(1, width // 4)]
    return sorted(sizes)


# convnext_tiny: 4 stage streams, and per block (3, 3, 9, 3 of them) the MLP's 4 x width hidden units
_CONVNEXT_TINY_SIZES = sorted([96, 192, 384, 768] + [384] * 3 + [768] * 3 + [1536] * 9 + [3072] * 3)


@pytest.mark.parametrize("name,sizes,head", [
    ("convnext_tiny", _CONVNEXT_TINY_SIZES, "classifier.2"),
    ("efficientnet_b0", _efficientnet_b0_sizes(), "classifier.1"),
])
def test_torchvision_stochastic_depth_models_trace_strictly(name, sizes, head):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None, num_classes=10).train()
    nodes = [n.target for n in torch.fx.symbolic_trace(model).graph.nodes if n.op == "call_function"]
    assert tv.ops.stochastic_depth in nodes  # the op this test is about is in the graph
    spec = trace(model, torch.randn(1, 3, 64, 64))  # strict, checked by random permutations
    assert sorted(g.size for g in spec.groups) == sizes
    unpermuted, share = _unpermuted_rows(model, spec)
    assert unpermuted == {head + ".weight", head + ".bias"}  # only the class logits keep their order
    assert share >= 0.95
