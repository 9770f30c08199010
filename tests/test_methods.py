"""Merge methods: every method on tiny ResNet-20 (BN, GN), ViT (tied heads) and MLP; exact recovery of permuted
models; plain averaging; native == reference plans; the descent's stopping rule; BatchNorm reset; bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mudsc
from mudsc import METHODS, collect_stats, match, merge, models, permute_model, reset_bn, trace

torch.set_num_threads(2)

FAST = dict(max_sweeps=2, patience=1, progress=False)
ARCHS = {
    "resnet20-bn": lambda: models.resnet20(width=1),
    "resnet20-gn": lambda: models.resnet20(width=1, norm="gn"),
    "vit": lambda: models.vit(depth=2, dim=24, heads=3, patch=8, mlp_ratio=2.0),
    "mlp": lambda: models.mlp(in_features=3 * 32 * 32, hidden=(24, 16)),
}


def _loader(batches=2, size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=gen), torch.zeros(size, dtype=torch.long))
            for _ in range(batches)]


@pytest.fixture(scope="module")
def setups():
    """Per architecture: two random models, their spec, a loader and native activation statistics."""
    out = {}
    for k, (name, make) in enumerate(ARCHS.items()):
        torch.manual_seed(10 + k)
        ms = [make().eval(), make().eval()]
        loader = _loader(size=8)  # enough samples that no unit is constant (constant units make exact ties)
        spec = trace(ms[0], loader[0][0][:2])
        out[name] = (ms, spec, loader, collect_stats(ms, spec, loader, progress=False))
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs(setups, arch, method):
    ms, spec, loader, stats = setups[arch]
    plan = match(ms, spec, method, stats=stats, **FAST)
    merged = plan.apply(ms)
    x = loader[0][0]
    with torch.no_grad():
        out = merged.eval()(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert set(plan.maps) == {g.name for g in spec.groups}
    for g in spec.groups:  # N = 2, reduce 0.5: merged widths equal one model's
        assert plan.maps[g.name].num_outputs == g.size
    hist = plan.info["history"]
    if METHODS[method].descent:
        assert 1 <= len(hist) <= 2
        best = [h["best"] for h in hist]
        assert best == sorted(best) and hist[0]["improved"]
        assert plan.info["merge_value"] == pytest.approx(best[-1], abs=1e-6)
    else:
        assert hist == []


def test_merge_report_and_three_models():
    torch.manual_seed(3)
    ms = [models.mlp(in_features=3 * 32 * 32, hidden=(24, 16)) for _ in range(3)]
    r = merge(ms, _loader(), method="mudsc-zip", **FAST)
    assert set(r.report["timing"]) >= {"forward", "stats", "similarity", "solve", "apply"}
    assert r.report["num_models"] == 3 and r.report["num_batches"] == 2
    for name, g in r.report["groups"].items():  # reduce defaults to 1 - 1/N: K = Om
        assert g["num_outputs"] == g["size"]
    assert r.model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    r3 = merge(ms, _loader(), method="act-align", progress=False)  # alignment keeps Om for any N
    assert all(g["num_outputs"] == g["size"] for g in r3.report["groups"].values())


@pytest.mark.parametrize("method", ["mudsc-zip", "avg"])
def test_report_stages_add_up_to_the_total(method):
    """Every second of merge is in one named stage (the BN reset included): their sum is the total."""
    torch.manual_seed(6)
    ms = [models.resnet20(width=1) for _ in range(2)]
    r = merge(ms, _loader(), method=method, **FAST)
    timing = dict(r.report["timing"])
    total = timing.pop("total")
    assert {"checks", "trace", "width_probe", "forward", "stats", "similarity", "solve", "matching_other", "apply",
            "final_check", "reset_bn", "repair"} == set(timing)
    assert all(v >= 0 for v in timing.values()), timing
    assert abs(sum(timing.values()) - total) <= 0.02 * total + 1e-3, (sum(timing.values()), total)


def test_vit_three_models_group_zip():
    torch.manual_seed(4)
    ms = [ARCHS["vit"]() for _ in range(3)]
    r = merge(ms, _loader(), method="zipit", progress=False)
    heads = {g.name: g for g in r.plan.spec.groups if g.num_blocks > 1}
    assert heads and all(r.plan.maps[n].num_outputs % g.num_blocks == 0 for n, g in heads.items())
    assert torch.isfinite(r.model(torch.randn(2, 3, 32, 32))).all()


def test_avg_is_plain_averaging():
    torch.manual_seed(5)
    ms = [models.resnet20(width=1) for _ in range(2)]
    r = merge(ms, None, method="avg", example_inputs=torch.randn(2, 3, 32, 32), progress=False)
    sa, sb, sm = ms[0].state_dict(), ms[1].state_dict(), r.model.state_dict()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sm[k], (sa[k] + sb[k]) / 2, rtol=1e-6, atol=1e-7)
    assert r.report["sweeps"] == 0 and r.report["merge_value"] == 1.0


@pytest.mark.parametrize("arch", ["resnet20-bn", "vit"])
@pytest.mark.parametrize("method", ["act-align", "rebasin"])
def test_alignment_recovers_a_permuted_model(arch, method):
    torch.manual_seed(6)
    a = ARCHS[arch]().eval()
    loader = _loader()
    spec = trace(a, loader[0][0][:2])
    b = permute_model(a, spec, spec.random_permutations(seed=3)).eval()
    x = loader[1][0]
    with torch.no_grad():
        assert not torch.allclose(b.state_dict()[spec.groups[0].members[0].name],
                                  a.state_dict()[spec.groups[0].members[0].name])
        r = merge([a, b], loader, method=method, spec=spec, reset_bn_stats=False, max_sweeps=10, patience=2,
                  progress=False)
        torch.testing.assert_close(r.model.eval()(x), a(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["zipit", "mudsc-zip", "act-align"])
def test_group_norm_model_and_its_permuted_copy_merge_back_to_the_model(method):
    """GroupNorm groups go through the group solvers (groups matched first, units inside); a model merged with a
    function-preserving permutation of itself (channels and whole GN groups shuffled) must come back unchanged.
    Needs a model without dead units on the data: those correlate 0 with everything, their twin included, so
    activation-only zip pairs them arbitrarily (seed 12 has two; MuDSC's weight term still finds the twins)."""
    torch.manual_seed(13)
    a = ARCHS["resnet20-gn"]().eval()
    loader = _loader(size=8)
    spec = trace(a, loader[0][0][:2])
    assert any(g.num_blocks > 1 for g in spec.groups)
    stats = collect_stats([a, a], spec, loader, progress=False)
    assert not any(len(stats.accumulators[g.name].zero_variance_units) for g in spec.groups)
    b = permute_model(a, spec, spec.random_permutations(seed=4)).eval()
    x = loader[1][0]
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
        r = merge([a, b], loader, method=method, spec=spec, max_sweeps=3, patience=1, progress=False)
        torch.testing.assert_close(r.model.eval()(x), a(x), rtol=1e-4, atol=1e-4)


def test_tied_heads_share_one_head_pairing():
    torch.manual_seed(7)
    ms = [ARCHS["vit"]() for _ in range(2)]
    loader = _loader()
    spec = trace(ms[0], loader[0][0][:2])
    for method in ("mudsc-align", "mudsc-zip"):
        r = merge(ms, loader, method=method, spec=spec, **FAST)
        ties = {}
        for g in spec.groups:
            if g.block_tie is not None:
                ties.setdefault(g.block_tie, []).append(g)
        assert ties and all(len(v) == 2 for v in ties.values())
        for groups in ties.values():
            heads = []
            for g in groups:
                lab = np.asarray(r.plan.maps[g.name].labels)
                og = g.block_size
                # merged head of each of model 1's heads (every unit of one head lands in one merged head)
                per_head = (lab[g.size:] // og).reshape(g.num_blocks, og)
                assert (per_head == per_head[:, :1]).all()
                heads.append(per_head[:, 0])
            np.testing.assert_array_equal(heads[0], heads[1])
    untied = trace(ms[0], loader[0][0][:2], share_heads=False)  # the original's independent head matching
    assert all(g.block_tie is None for g in untied.groups)
    merge(ms, loader, method="mudsc-align", spec=untied, **FAST)


@pytest.mark.parametrize("arch, method", [("mlp", "avg"), ("mlp", "rebasin"), ("mlp", "wzip"), ("vit", "rebasin"),
                                          ("resnet20-gn", "rebasin")])
def test_native_and_reference_give_the_same_plan_weight_methods(setups, arch, method):
    if "native" not in mudsc.available_backends():
        pytest.skip("the native core did not load")
    ms, spec, loader, _ = setups[arch]
    plans = [match(ms, spec, method, backend=b, **FAST) for b in ("native", "reference")]
    for g in spec.groups:
        np.testing.assert_array_equal(plans[0].maps[g.name].labels, plans[1].maps[g.name].labels, err_msg=g.name)
    assert plans[0].info["sweeps"] == plans[1].info["sweeps"]


@pytest.mark.parametrize("arch, method", [("mlp", "act-align"), ("mlp", "zipit"), ("mlp", "mudsc-align"),
                                          ("mlp", "mudsc-zip"), ("vit", "act-align"), ("vit", "zipit"),
                                          ("vit", "mudsc-align")])
def test_native_and_reference_give_the_same_plan_activation_methods(setups, arch, method):
    """Same statistics in, same plan out: weight similarity and every solver agree across backends."""
    if "native" not in mudsc.available_backends():
        pytest.skip("the native core did not load")
    ms, spec, loader, stats = setups[arch]
    plans = [match(ms, spec, method, stats=stats, backend=b, **FAST) for b in ("native", "reference")]
    for g in spec.groups:
        np.testing.assert_array_equal(plans[0].maps[g.name].labels, plans[1].maps[g.name].labels, err_msg=g.name)


def test_reference_statistics_agree_on_single_tap_groups(setups):
    """The reference accumulator (the original's per-batch float32 moments) agrees with the native one where the
    formulations coincide: one tap per group, equal batches (it weights each update by batch count), and units
    that are not constant (a dead unit gets a diagonal of 0 there, 1 here)."""
    ms, spec, loader, stats = setups["mlp"]
    ref = collect_stats(ms, spec, loader, backend="reference", progress=False)
    for g in spec.groups:
        assert len(g.taps) == 1
        live = torch.ones(2 * g.size, dtype=torch.bool)
        live[stats.accumulators[g.name].zero_variance_units] = False
        a, b = ref.correlation(g.name)[live][:, live], stats.correlation(g.name)[live][:, live]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_stats_are_cached_and_reused_for_a_balance_sweep(setups):
    ms, spec, loader, stats = setups["mlp"]
    name = spec.groups[0].name
    assert stats.correlation(name) is stats.correlation(name)
    values = [match(ms, spec, "mudsc-zip", stats=stats, balance=b, **FAST).info["merge_value"] for b in (0.2, 0.8)]
    assert values[0] != values[1]


def test_descent_stops_after_patience_and_returns_best():
    torch.manual_seed(8)
    ms = [models.mlp(in_features=3 * 32 * 32, hidden=(16, 16)) for _ in range(2)]
    spec = trace(ms[0], torch.randn(2, 3, 32, 32))
    plan = match(ms, spec, "wzip", max_sweeps=100, patience=2, progress=False)
    hist = plan.info["history"]
    assert len(hist) < 100
    assert not hist[-1]["improved"] and not hist[-2]["improved"]  # stopped by patience
    best = max(h["value"] for h in hist)
    assert plan.info["merge_value"] == pytest.approx(best)
    assert [h["best"] for h in hist] == sorted(h["best"] for h in hist)


@pytest.mark.parametrize("arch", ["resnet20-bn", "vit"])
def test_similarity_cache_gives_the_same_plan_as_recomputing(setups, arch):
    """The native descent reuses a piece's weight moments while the maps on its other axes are unchanged: the
    plan and the sweep history must equal those of a descent that recomputes every piece."""
    ms, spec, _, stats = setups[arch]
    kw = dict(stats=stats, max_sweeps=8, patience=3, progress=False, backend="native")
    # small_work=0: the test models are tiny, cache their pieces anyway
    updated = match(ms, spec, "mudsc-zip", piece_cache=mudsc.PieceCache(small_work=0), **kw)
    cached = match(ms, spec, "mudsc-zip", piece_cache=mudsc.PieceCache(small_work=0, incremental=False), **kw)
    fresh = match(ms, spec, "mudsc-zip", piece_cache=mudsc.PieceCache(small_work=0, reuse=False), **kw)
    counts, total = cached.info["weight_pieces"], fresh.info["weight_pieces"]["computed"]
    assert counts["reused"] > 0 and fresh.info["weight_pieces"]["reused"] == 0
    assert counts["computed"] + counts["reused"] == total and counts["updated"] == 0
    # Reuse alone is exact: the same accumulators, the same arithmetic.
    assert cached.info["history"] == fresh.info["history"]
    # Incremental updates (remove the samples of changed slots, add the new ones) change only the rounding.
    inc = updated.info["weight_pieces"]
    assert inc["updated"] > 0 and inc["computed"] + inc["reused"] + inc["updated"] == total
    assert len(updated.info["history"]) == len(fresh.info["history"])
    for a, b in zip(updated.info["history"], fresh.info["history"]):
        assert a["improved"] == b["improved"] and a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-9)
    for plan in (cached, updated):
        for name in fresh.maps:
            np.testing.assert_array_equal(plan.maps[name].labels, fresh.maps[name].labels)


def test_merged_model_can_be_merged_again():
    torch.manual_seed(9)
    ms = [ARCHS["resnet20-gn"]() for _ in range(3)]
    loader = _loader()
    first = merge(ms[:2], loader, method="zipit", progress=False).model
    again = merge([first, ms[2]], loader, method="mudsc-zip", **FAST)
    assert torch.isfinite(again.model(loader[0][0])).all()


# -- reset_bn ------------------------------------------------------------------------------------------------------
def test_reset_bn_matches_cumulative_statistics():
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.ReLU())
    model.eval()
    before = model[1].running_mean.clone()
    loader = _loader(batches=3)
    reset_bn(model, loader)
    assert not model.training and model[1].momentum == 0.3
    with torch.no_grad():
        feats = [model[0](x) for x, _ in loader]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, model[1].running_mean)
    with pytest.raises(ValueError, match="no batches"):
        reset_bn(model, [])


# -- bad inputs ----------------------------------------------------------------------------------------------------
def test_bad_inputs_fail_early_with_clear_errors():
    torch.manual_seed(12)
    a, b = ARCHS["mlp"](), ARCHS["mlp"]()
    loader = _loader()
    with pytest.raises(ValueError, match="at least two models"):
        merge([a], loader)
    with pytest.raises(ValueError, match="unknown method 'zap'"):
        merge([a, b], loader, method="zap")
    with pytest.raises(ValueError, match="model 1 is a ResNet20"):
        merge([a, models.resnet20(width=1)], loader)
    with pytest.raises(ValueError, match="layers.0.weight"):
        merge([a, models.mlp(in_features=3 * 32 * 32, hidden=(20, 16))], loader)
    with pytest.raises(ValueError, match="no batches"):
        merge([a, b], [])
    with pytest.raises(ValueError, match=r"first batch of shape \(8, 5\)"):
        merge([a, b], [torch.randn(8, 5)])
    with pytest.raises(ValueError, match="pass a loader"):
        merge([a, b], None, method="zipit")
    with pytest.raises(ValueError, match="balance"):
        merge([a, b], loader, balance=1.5)
    with pytest.raises(ValueError, match="stats=collect_stats"):
        match([a, b], trace(a, loader[0][0][:2]), "zipit")
    with pytest.raises(TypeError, match="loader must yield tensors"):
        merge([a, b], [{"x": 1}])


@pytest.mark.parametrize("dev", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("arch, method", [("resnet20-bn", "act-align"), ("resnet20-bn", "mudsc-zip"),
                                          ("vit", "act-align"), ("vit", "mudsc-zip")])
def test_merge_on_a_device_recovers_a_permuted_model(dev, arch, method):
    """The whole pipeline on one device (statistics through the device's kernels, similarity, solve, apply,
    BN reset): a model merged with a function-preserving permutation of itself comes back. The cpu case checks
    the test itself on every machine; the cuda case runs where a GPU is."""
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(6)
    a = ARCHS[arch]().eval().to(dev)
    loader = _loader()
    spec = trace(a, loader[0][0][:2].to(dev))
    b = permute_model(a, spec, spec.random_permutations(seed=3)).eval()
    x = loader[1][0].to(dev)
    with torch.no_grad():
        r = merge([a, b], loader, method=method, spec=spec, reset_bn_stats=False, max_sweeps=10, patience=2,
                  progress=False)
        merged = r.model.eval()
        assert next(merged.parameters()).device.type == dev
        torch.testing.assert_close(merged(x), a(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,dead", [("resnet20-bn", False), ("vit", False), ("mlp", False), ("mlp", True)])
@pytest.mark.parametrize("method", ["zipit", "act-align"])
def test_concurrent_solves_give_the_sequential_plan(arch, method, dead, monkeypatch):
    """Solves of the activation-only matching run two at a time by default; the plan equals one solve at a
    time, also when dead units make some similarities read the maps of earlier groups (those wait)."""
    import sys

    torch.manual_seed(7)
    ms = [ARCHS[arch]().eval() for _ in range(2)]
    if dead:  # hidden unit 0 constant (0) on every input: its similarity comes from weights, under earlier maps
        first = next(m for m in ms[0].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        with torch.no_grad():
            first.weight[0].zero_()
            if first.bias is not None:
                first.bias[0] = 0.0
    loader = _loader(size=8)
    plans = {}
    descent = sys.modules["mudsc.methods.descent"]
    reads, orig = [], descent.Descent._reads_maps
    monkeypatch.setattr(descent.Descent, "_reads_maps", lambda self, g: reads.append(orig(self, g)) or reads[-1])
    for workers in (1, 2):
        monkeypatch.setattr(sys.modules["mudsc.methods.merge"], "SOLVE_WORKERS", workers)
        plans[workers] = merge(ms, loader, method=method, **FAST).plan
    assert reads and (any(reads) or not dead)  # with a dead unit, some group had to wait for earlier maps
    assert plans[1].maps.keys() == plans[2].maps.keys()
    for name in plans[1].maps:
        np.testing.assert_array_equal(plans[2].maps[name].labels, plans[1].maps[name].labels, err_msg=name)
