"""Graph coverage of the tracer: models are traced in eval mode (train-only branches are not recorded, every
module's train flag comes back), torchvision's ``stochastic_depth``, the ``nn.Transformer*`` modules that torch.fx
keeps as leaves; and ``permuted_share`` (``mudsc/spec/coverage.py``).

The expected groups and shares are derived by hand from each architecture (which layer produces which units), not
read back from the tracer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mudsc import merge, trace
from mudsc.spec import Group, Member, PermSpec, SpecTraceError, permuted_share

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
    """In training, a ``torch.roll`` of the hidden units (a channel axis: refused); in eval mode, the same roll:
    the trace fails either way, and the flags must come back after the error."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, dims=1))


class _DataDependent(nn.Module):
    """``if h.sum() > 0``: torch.fx builds no graph (strict=False cannot help either)."""

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
    assert share >= 0.95 and permuted_share(model, spec) == pytest.approx(share)


# -- torch.nn transformer modules --------------------------------------------------------------------------------
def _causal(n: int) -> torch.Tensor:
    return torch.triu(torch.full((n, n), float("-inf")), diagonal=1)


def _transformer_cases():
    """(name, module, inputs) for every class SpecTracer opens, post- and pre-norm, with and without masks."""
    torch.manual_seed(0)
    pad = torch.zeros(3, 7)
    pad[0, 5:] = float("-inf")  # the last two source tokens of the first sequence are padding
    src, tgt = torch.randn(3, 7, 16), torch.randn(3, 5, 16)

    def enc_layer(norm_first, **kw):
        return nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first, **kw)

    def dec_layer(norm_first, **kw):
        return nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first, **kw)

    return [
        ("encoder-layer", enc_layer(False), (src,), {}),
        ("encoder-layer-prenorm-gelu", enc_layer(True, activation="gelu"), (src,), {"src_mask": _causal(7)}),
        ("encoder-masks", nn.TransformerEncoder(enc_layer(False), 2, norm=nn.LayerNorm(16),
                                                enable_nested_tensor=False),
         (src,), {"mask": _causal(7), "src_key_padding_mask": pad}),
        ("decoder-layer", dec_layer(False), (tgt, src), {"tgt_mask": _causal(5), "tgt_is_causal": True}),
        ("decoder-prenorm", nn.TransformerDecoder(dec_layer(True, activation=nn.GELU()), 2),
         (tgt, src), {"memory_key_padding_mask": pad}),
        ("transformer", nn.Transformer(16, 4, 2, 1, 32, dropout=0.0, batch_first=True),
         (src, tgt), {"tgt_mask": _causal(5)}),
    ]


class _Apply(nn.Module):
    """``module(*inputs, **options)`` as a model: SpecTracer opens submodules (the root's forward is traced as it
    is), and the tensor options are buffers, so that the graph reads them."""

    def __init__(self, module: nn.Module, num_inputs: int, options: dict):
        super().__init__()
        self.module, self.num_inputs = module, num_inputs
        self.flags = {k: v for k, v in options.items() if not torch.is_tensor(v)}
        self.keys = [k for k, v in options.items() if torch.is_tensor(v)]
        for k in self.keys:
            self.register_buffer(k, options[k])

    def forward(self, a, b=None):
        inputs = (a,) if self.num_inputs == 1 else (a, b)
        return self.module(*inputs, **{k: getattr(self, k) for k in self.keys}, **self.flags)


@pytest.mark.parametrize("case", _transformer_cases(), ids=lambda case: case[0])
def test_spec_tracer_graphs_compute_what_the_modules_compute(case):
    """The graph SpecTracer records computes torch's own forward: in training mode (dropout 0, no fast path) and
    in eval mode (where the layers may take the fused fast path)."""
    from mudsc.spec import SpecTracer

    _, module, args, kwargs = case
    model = _Apply(module, len(args), kwargs)
    gm = torch.fx.GraphModule(model, SpecTracer().trace(model))
    targets = {type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}
    assert nn.MultiheadAttention in targets and nn.Linear in targets  # opened up, not a leaf
    assert not targets & {nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder}
    with torch.no_grad():
        for mode in (True, False):
            model.train(mode)
            gm.train(mode)
            torch.testing.assert_close(gm(*args), module(*args, **kwargs), rtol=1e-5, atol=1e-5)


class _TextClassifier(nn.Module):
    """Token ids -> embedding -> 2-layer transformer encoder -> mean over tokens -> class logits."""

    def __init__(self, vocab=50, width=32, classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def test_text_transformer_encoder_traces_strictly_and_merges():
    torch.manual_seed(0)
    a, b = _TextClassifier().eval(), _TextClassifier().eval()
    spec = trace(a, torch.randint(0, 50, (2, 7)))
    # the residual stream, then per layer q/k and v/o (4 heads of 8, tied to each other) and the 64 hidden units
    assert [(g.size, g.num_blocks) for g in spec.groups] == [(32, 1)] + [(32, 4), (32, 4), (64, 1)] * 2
    stream = spec.groups[0]
    assert ("embed.weight", 1) in {(m.name, m.axis) for m in stream.members}
    unpermuted, share = _unpermuted_rows(a, spec)
    assert unpermuted == {"embed.weight", "head.weight", "head.bias"}  # token rows and class rows
    # per layer: in_proj 3*32*32+96, out_proj 32*32+32, linear1 32*64+64, linear2 64*32+32, two norms 4*32
    layer = 3 * 32 * 32 + 96 + 32 * 32 + 32 + 32 * 64 + 64 + 64 * 32 + 32 + 4 * 32
    total = 2 * layer + 50 * 32 + 32 * 5 + 5
    assert share == pytest.approx(2 * layer / total)  # ~0.906 counting rows: the embedding's channels are its axis 1
    # permuted_share counts the embedding table by its channel axis (its unit axis), which the stream permutes
    assert permuted_share(a, spec) == pytest.approx((2 * layer + 50 * 32) / total)
    assert permuted_share(a, spec) >= 0.95
    gen = torch.Generator().manual_seed(1)
    loader = [torch.randint(0, 50, (8, 7), generator=gen) for _ in range(3)]
    result = merge([a, b], loader, method="zipit", progress=False)
    fresh = _TextClassifier()
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        out = result.model.eval()(loader[0])
        assert out.shape == (8, 5) and torch.isfinite(out).all()
        torch.testing.assert_close(fresh.eval()(loader[0]), out)


class _Seq2Seq(nn.Module):
    """Token ids -> a shared embedding -> nn.Transformer (2 encoder layers, 1 decoder layer) -> vocabulary logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.transformer = nn.Transformer(16, 2, 2, 1, 24, batch_first=True)
        self.head = nn.Linear(16, 40)

    def forward(self, src, tgt, tgt_mask):
        return self.head(self.transformer(self.embed(src), self.embed(tgt), tgt_mask=tgt_mask))


def test_seq2seq_transformer_groups():
    """One stream (the decoder's cross-attention reads the encoder's output with the same projection columns),
    3 groups per encoder layer, 5 per decoder layer (self- and cross-attention q/k and v/o, hidden units)."""
    spec = trace(_Seq2Seq().eval(), (torch.randint(0, 40, (2, 6)), torch.randint(0, 40, (2, 4)), _causal(4)))
    encoder = [(16, 2), (16, 2), (24, 1)]
    decoder = [(16, 2)] * 4 + [(24, 1)]
    assert [(g.size, g.num_blocks) for g in spec.groups] == [(16, 1)] + encoder * 2 + decoder


def test_only_the_exact_torch_classes_are_opened():
    """A subclass may have its own forward: it is traced like any module of its own (here torch's fast-path test
    stops torch.fx), and a tracer= that is a plain fx.Tracer keeps the torch classes as leaves."""
    from mudsc.spec.traceable import traceable_forward

    class MyLayer(nn.TransformerEncoderLayer):
        pass

    assert traceable_forward(MyLayer(8, 2, 16)) is None
    assert traceable_forward(nn.TransformerEncoderLayer(8, 2, 16)) is not None
    x = torch.randn(2, 3, 8)
    with pytest.raises(SpecTraceError, match="torch.fx could not trace"):
        trace(nn.Sequential(MyLayer(8, 2, 16, batch_first=True)), x)
    with pytest.raises(SpecTraceError, match="no handler for leaf module type TransformerEncoderLayer"):
        trace(nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)), x, tracer=torch.fx.Tracer())


# -- permuted_share ----------------------------------------------------------------------------------------------
def test_permuted_share_of_an_mlp_counts_produced_rows():
    model = _TrainOnlyNoise()  # Linear(4, 8) -> Linear(8, 3): the 8 hidden units are the only group
    spec = trace(model, torch.randn(2, 4))
    assert permuted_share(model, spec) == pytest.approx((8 * 4 + 8) / (8 * 4 + 8 + 3 * 8 + 3))
    assert permuted_share(model, PermSpec([])) == 0.0


def test_permuted_share_counts_the_rows_a_member_covers():
    """A hand-written group that holds rows 2..5 of a Linear(4, 6) (a fused slice) covers 4 of its 6 rows."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    members = [Member("0.weight", 0, "output", offset=2), Member("0.bias", 0, "output", offset=2),
               Member("1.weight", 1, "input", offset=2)]
    spec = PermSpec([Group("part", 4, members)])
    assert permuted_share(model, spec) == pytest.approx((24 + 6) * 4 / 6 / (24 + 6 + 12 + 2))


def test_permuted_share_refuses_a_spec_of_another_model():
    spec = PermSpec([Group("h", 8, [Member("fc.weight", 0, "output")])])
    with pytest.raises(ValueError, match="'fc.weight'.*not a parameter or buffer of Linear"):
        permuted_share(nn.Linear(4, 8), spec)
    too_long = PermSpec([Group("h", 9, [Member("weight", 0, "output")])])
    with pytest.raises(ValueError, match="reaches index 8.*8 entries"):
        permuted_share(nn.Linear(4, 8), too_long)
    with pytest.raises(ValueError, match="no parameter entries"):
        permuted_share(nn.ReLU(), PermSpec([]))
