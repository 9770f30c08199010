"""Tied parameters: one tensor reached under two names (an embedding tied to the output projection of a small
language model, a tied linear autoencoder) is one member per axis, traced strictly with the constraints of both
uses, merged once, and still one tensor in the merged and permuted models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mudsc import check_spec, merge, permute_model, trace

torch.set_num_threads(2)

VOCAB, WIDTH, FEATURES, HIDDEN = 13, 8, 10, 6
FAST = dict(max_sweeps=2, patience=1, progress=False)


class TiedLM(nn.Module):
    """Token embedding -> Linear -> ReLU -> LayerNorm -> output projection tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.dec = nn.Linear(WIDTH, VOCAB, bias=False)
        self.dec.weight = self.emb.weight

    def forward(self, tokens):
        return self.dec(self.norm(torch.relu(self.fc(self.emb(tokens)))))


class ReversedTiedLM(nn.Module):
    """The tie declared the other way round: the model's first name of the tensor is ``dec.weight``, although
    the graph meets it as ``emb.weight`` first."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(WIDTH, VOCAB, bias=False)
        self.fc = nn.Linear(WIDTH, WIDTH)
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.emb.weight = self.dec.weight

    def forward(self, tokens):
        return self.dec(torch.relu(self.fc(self.emb(tokens))))


class TiedDecoder(nn.Module):
    """The decoder of a tied autoencoder: the encoder's weight, transposed, with its own bias."""

    def __init__(self, weight: nn.Parameter, out_features: int):
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h):
        return F.linear(h, self.weight.t(), self.bias)


class TiedAE(nn.Module):
    """x -> W x + b -> ReLU -> Wᵀ h + c."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(FEATURES, HIDDEN)
        self.dec = TiedDecoder(self.enc.weight, FEATURES)

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


def _tokens(batches=2, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (size, 5), generator=gen) for _ in range(batches)]


def _features(batches=2, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, FEATURES, generator=gen) for _ in range(batches)]


CASES = {
    "lm": (TiedLM, _tokens, ("dec", "emb")),
    "ae": (TiedAE, _features, ("dec", "enc")),
}


def _tied(model, names):
    first, second = names
    return getattr(model, first).weight is getattr(model, second).weight


def test_tied_embedding_traces_strictly_as_one_member_per_axis():
    torch.manual_seed(0)
    model = TiedLM()
    assert "dec.weight" not in dict(model.named_parameters())
    x = _tokens()[0]
    spec = trace(model, x)  # strict
    assert check_spec(model, spec, x) <= 1e-5
    members = [(m.name, m.axis) for g in spec.groups for m in g.members]
    assert not any(name == "dec.weight" for name, _ in members)
    assert members.count(("emb.weight", 1)) == 1  # the shared hidden axis: one member
    assert ("emb.weight", 0) not in members  # rows: the vocabulary of both uses (token ids and logits)
    hidden = next(g for g in spec.groups if any(m.name == "emb.weight" for m in g.members))
    # the decoder reads the LayerNorm's output, so the embedding's columns, fc's rows and columns and the norm
    # are one space
    assert {(m.name, m.axis) for m in hidden.members} == {
        ("emb.weight", 1), ("fc.weight", 0), ("fc.weight", 1), ("fc.bias", 0), ("norm.weight", 0),
        ("norm.bias", 0)}


def test_tied_tensor_is_named_as_the_model_names_it():
    torch.manual_seed(1)
    model = ReversedTiedLM()
    x = _tokens()[0]
    spec = trace(model, x)
    names = {m.name for g in spec.groups for m in g.members}
    assert "dec.weight" in names and "emb.weight" not in names
    permuted = permute_model(model, spec, spec.random_permutations(seed=2))
    assert permuted.emb.weight is permuted.dec.weight
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_permuted_tied_model_keeps_the_tie_and_its_function(case):
    build, data, names = CASES[case]
    torch.manual_seed(2)
    model = build().eval()
    x = data()[0]
    spec = trace(model, x)
    assert spec.groups
    permuted = permute_model(model, spec, spec.random_permutations(seed=3))
    assert _tied(permuted, names)
    assert not torch.equal(getattr(permuted, names[1]).weight, getattr(model, names[1]).weight)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["avg", "zipit", "mudsc-zip"])
@pytest.mark.parametrize("case", list(CASES))
def test_merged_tied_model_keeps_the_tie(case, method):
    build, data, names = CASES[case]
    torch.manual_seed(4)
    a, b = build().eval(), build().eval()
    loader = data()
    result = merge([a, b], loader, method=method, **FAST)
    merged = result.model
    assert _tied(merged, names)
    assert len(list(merged.parameters())) == len(list(a.parameters()))
    with torch.no_grad():
        out = merged.eval()(loader[1])
    assert out.shape == a(loader[1]).shape and torch.isfinite(out).all()
    assert _tied(a, names) and _tied(b, names)  # the inputs are not modified


@pytest.mark.parametrize("case", list(CASES))
def test_self_merge_with_avg_reproduces_the_model(case):
    build, data, names = CASES[case]
    torch.manual_seed(5)
    a = build().eval()
    loader = data()
    merged = merge([a, a], loader, method="avg", progress=False).model.eval()
    assert _tied(merged, names)
    sa, sm = a.state_dict(), merged.state_dict()
    assert sa.keys() == sm.keys()
    for k in sa:
        assert torch.equal(sa[k], sm[k]), k
    with torch.no_grad():
        assert torch.equal(merged(loader[1]), a(loader[1]))


def test_traced_avg_merge_of_tied_models_is_the_average():
    torch.manual_seed(6)
    a, b = TiedLM().eval(), TiedLM().eval()
    loader = _tokens()
    spec = trace(a, loader[0])
    merged = merge([a, b], loader, method="avg", spec=spec, progress=False).model
    assert merged.dec.weight is merged.emb.weight
    torch.testing.assert_close(merged.emb.weight, (a.emb.weight + b.emb.weight) / 2)


def test_weight_matching_recovers_a_permuted_tied_model():
    torch.manual_seed(7)
    a = TiedLM().eval()
    loader = _tokens()
    spec = trace(a, loader[0])
    b = permute_model(a, spec, spec.random_permutations(seed=8)).eval()
    result = merge([a, b], loader, method="rebasin", spec=spec, max_sweeps=5, patience=2, progress=False)
    merged = result.model.eval()
    assert merged.dec.weight is merged.emb.weight
    with torch.no_grad():
        torch.testing.assert_close(merged(loader[1]), a(loader[1]), rtol=1e-5, atol=1e-5)


def test_apply_maps_keeps_a_tie_when_widths_change():
    torch.manual_seed(9)
    a, b = TiedAE().eval(), TiedAE().eval()
    loader = _features()
    result = merge([a, b], loader, method="zipit", reduce=0.25, progress=False)
    merged = result.model
    assert merged.dec.weight is merged.enc.weight
    width = result.plan.maps["enc"].num_outputs
    assert width != HIDDEN and merged.enc.weight.shape == (width, FEATURES)
    assert merged.enc.out_features == width
    assert merged(loader[0]).shape == (8, FEATURES)
