"""The statistics pass (mudsc.collect): the collector's hooks and flags, kept activations with and without copies,
errors that name the model, group and tap."""

from __future__ import annotations

import pytest
import torch

import mudsc
from mudsc import collect_stats, trace
from mudsc.collect import StatsCollector

torch.set_num_threads(2)


class _MLP(torch.nn.Module):
    """Two hidden layers. ``mutate="always"`` doubles the first hidden activation (fc2's input, a tapped tensor)
    in place after fc2 has read it, on every call; ``"late"`` only from the second call on. The outputs do not
    change either way."""

    def __init__(self, mutate=None):
        super().__init__()
        self.fc1, self.fc2, self.out = torch.nn.Linear(12, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 3)
        self.act1, self.act2 = torch.nn.ReLU(), torch.nn.ReLU()
        self.mutate = mutate
        self.calls = 0

    def forward(self, x):
        a = self.act1(self.fc1(x))
        y = self.out(self.act2(self.fc2(a)))
        if self.mutate == "always" or (self.mutate == "late" and self.calls > 0):
            a.mul_(2.0)
        return y


def _count_calls(module, args, output):
    module.calls += 1


def _mlp_pair(mutate):
    ms = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        ms.append(_MLP(mutate).eval())
    return ms


def test_tapped_tensors_kept_without_a_copy_give_the_same_statistics():
    """Model 0's activations are kept until model 1 has run: copied where an in-place op changes them later
    (learnt on the first batch from the tensor's version counter), kept as they are elsewhere. Either way the
    statistics equal those of the same models without the in-place op."""
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(8, 12, generator=gen) for _ in range(4)]
    spec = trace(_mlp_pair(None)[0], loader[0][:2])
    assert any(t.module == "fc2" and t.kind == "input" for g in spec.groups for t in g.taps)
    stats = {mutate: collect_stats(_mlp_pair(mutate), spec, loader, progress=False) for mutate in (None, "always")}
    for name, acc in stats[None].accumulators.items():
        assert torch.equal(stats["always"].accumulators[name].covariance(), acc.covariance()), name


@pytest.mark.parametrize("mutate,forwards", [(None, 4), ("always", 5)])
def test_the_first_batch_is_rerun_only_when_a_kept_tensor_changed_in_place(mutate, forwards):
    """Nothing is copied on the first batch; a kept tensor found changed makes that batch run once more (with
    copies) for the updates it spoiled, and never again."""
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(8, 12, generator=gen) for _ in range(4)]
    spec = trace(_mlp_pair(None)[0], loader[0][:2])
    ms = _mlp_pair(mutate)
    for m in ms:
        m.register_forward_hook(_count_calls)
    stats = collect_stats(ms, spec, loader, progress=False)
    assert [m.calls for m in ms] == [forwards, forwards]
    assert all(acc.num_samples == 32 for acc in stats.accumulators.values())


def test_a_tapped_tensor_modified_in_place_only_later_is_an_error():
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(8, 12, generator=gen) for _ in range(3)]
    spec = trace(_mlp_pair(None)[0], loader[0][:2])
    ms = _mlp_pair("late")
    for m in ms:
        m.register_forward_hook(_count_calls)
    with pytest.raises(RuntimeError, match="modified in place after it was observed"):
        collect_stats(ms, spec, loader, progress=False)


def test_collector_removes_its_hooks_and_restores_the_flags_also_on_error():
    """Inside the context every model is in eval mode with one hook per tap; on exit (also after an exception in
    a forward pass) the hooks are gone and every module's train/eval flag is as before."""
    ms = _mlp_pair(None)
    ms[0].train()
    ms[1].fc2.train()
    before = [{n: m.training for n, m in model.named_modules()} for model in ms]
    spec = trace(ms[0], torch.randn(2, 12))
    taps = sum(len(g.taps) for g in spec.groups)
    collector = StatsCollector(ms, spec, torch.device("cpu"))
    with pytest.raises(ValueError, match="model 0 cannot run on the loader's first batch"):
        with collector:
            assert not any(m.training for model in ms for m in model.modules())
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in ms[0].modules())
            assert hooks == taps
            collector.run_batch(torch.randn(4, 7), index=0)  # wrong width: model 0 fails
    assert [{n: m.training for n, m in model.named_modules()} for model in ms] == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for model in ms for m in model.modules())


def test_collector_feeds_each_group_the_n_models_features():
    """The accumulator of a group sees model 0's then model 1's channels of the same samples: its statistics
    equal an accumulator fed by hand with the two models' tapped activations."""
    ms = _mlp_pair(None)
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(3))
    spec = trace(ms[0], x[:2])
    with StatsCollector(ms, spec, torch.device("cpu")) as collector:
        forward = collector.run_batch(x, index=0)
    assert forward > 0
    group = next(g for g in spec.groups if any(t.module == "fc2" and t.kind == "input" for t in g.taps))
    want = mudsc.CorrelationAccumulator(2 * group.size)
    want.update([torch.relu(m.fc1(x)).detach() for m in ms], channel_dim=1)
    got = collector.accumulators[group.name]
    assert got.num_samples == want.num_samples == 16
    torch.testing.assert_close(got.covariance(), want.covariance(), rtol=1e-6, atol=1e-7)


def test_a_group_whose_taps_never_fire_is_named():
    ms = _mlp_pair(None)
    spec = trace(ms[0], torch.randn(2, 12))
    collector = StatsCollector(ms, spec, torch.device("cpu"))
    with pytest.raises(ValueError, match="never fired during the data pass"):
        collector.check_fired()  # no batch was run


@pytest.mark.filterwarnings("ignore:group .* samples for its")
def test_batches_over_the_kept_activation_cap_run_in_micro_batches():
    """keep_bytes caps model 0's tapped tensors waiting for model 1: a batch over it runs in equal micro-batches
    (the same samples, so the same statistics up to float rounding); under it nothing changes, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(8, 12, generator=gen) for _ in range(3)]
    spec = trace(_mlp_pair(None)[0], loader[0][:2])
    whole = collect_stats(_mlp_pair(None), spec, loader, progress=False)
    roomy = collect_stats(_mlp_pair(None), spec, loader, progress=False, keep_bytes=2**30)
    tight = collect_stats(_mlp_pair(None), spec, loader, progress=False, keep_bytes=1)
    assert whole.micro_batches == roomy.micro_batches == 1 and tight.micro_batches == 8
    assert roomy.kept_per_sample > 0 and whole.kept_per_sample is None
    # fc1's output (16 floats) and fc2's (16 floats) of one sample, each its own storage
    assert roomy.kept_per_sample == tight.kept_per_sample == 2 * 16 * 4
    for name, acc in whole.accumulators.items():
        assert torch.equal(roomy.accumulators[name].covariance(), acc.covariance()), name
        assert tight.accumulators[name].num_samples == acc.num_samples == 24
        # (the shift is the first micro-batch's mean, so the float32 products round differently)
        torch.testing.assert_close(tight.accumulators[name].covariance(), acc.covariance(), rtol=1e-5, atol=1e-7)


def test_underdetermined_counts_sample_positions_on_both_backends():
    # 4 images of 8x8: every tap of the first conv group gives 4 * 64 = 256 positions for its 2 * 16 units, but
    # only 4 batch rows (what the reference accumulator's num_samples counts)
    import warnings

    torch.manual_seed(0)
    ms = [mudsc.models.resnet20(width=1) for _ in range(2)]
    spec = trace(ms[0], torch.randn(2, 3, 8, 8))
    batch = [torch.randn(4, 3, 8, 8)]
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fewer samples than units" warning: the group is determined
        for backend in ("native", "reference"):
            stats[backend] = collect_stats(ms, spec, batch, progress=False, backend=backend, groups=["conv1"])
    native, reference = (stats[b].accumulators["conv1"] for b in ("native", "reference"))
    assert reference.num_samples < 32 <= native.num_samples  # the two counts differ ...
    assert reference.num_positions == native.num_positions == native.num_samples  # ... the positions do not
    assert native.num_positions % 256 == 0
    assert not stats["native"].underdetermined("conv1") and not stats["reference"].underdetermined("conv1")
