"""The memory plan (mudsc/memory.py) and merge's passes over the loader: sizes parsed, chunks fitted to the
budget, and chunked merges giving the plans of unchunked ones."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

import mudsc
from mudsc import models
from mudsc.memory import available_bytes, format_bytes, parse_bytes, plan_passes

FAST = dict(max_sweeps=2, patience=1, progress=False)


@pytest.mark.parametrize("text, want", [("16GB", 16 * 10**9), ("1.5 GiB", 3 * 2**29), ("512M", 512 * 2**20),
                                        ("100", 100), (4096, 4096), (2.5e9, 2_500_000_000), ("7 kib", 7168)])
def test_parse_bytes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("bad", ["", "GB", "-1GB", "16 parsecs", 0, -5, float("nan"), True, None, "1e3GB"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ValueError, match="max_memory"):
        parse_bytes(bad)


def test_available_bytes_is_positive_on_the_cpu():
    assert available_bytes(torch.device("cpu")) > 0


def test_plan_passes_fits_the_budget_and_keeps_coordinates_whole():
    # moment 8F², finalisation 20F², kept correlation 4F² (mudsc/memory.py)
    coords = [[("a", 10)], [("b", 20), ("c", 20)], [("d", 10)]]
    one = plan_passes(coords, keep_correlations=False, budget=10**9)
    assert one.chunks == [["a", "b", "c", "d"]] and one.passes == 1
    assert one.peaks == [8 * (100 + 400 + 400 + 100) + 20 * 400]
    budget = 8 * 800 + 20 * 400  # b and c together, nothing else
    split = plan_passes(coords, keep_correlations=False, budget=budget)
    assert split.chunks == [["a"], ["b", "c"], ["d"]]
    assert all(p <= budget for p in split.peaks)
    # a descent keeps the float32 correlations of earlier chunks: they count against later passes
    kept = plan_passes(coords, keep_correlations=True, budget=budget + 4 * 100 + 4 * 800)
    assert kept.chunks == [["a"], ["b", "c"], ["d"]] and max(kept.peaks) <= kept.budget


def test_plan_passes_names_a_group_that_cannot_fit():
    with pytest.raises(MemoryError, match=r"group\(s\) big need 2.73 KiB .* budget is 1000 bytes"):
        plan_passes([[("small", 2)], [("big", 10)]], keep_correlations=False, budget=1000, explicit=True)


def test_format_bytes():
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(1536) == "1.50 KiB" and format_bytes(7) == "7 bytes"


def _loader():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 3, 32, 32, generator=gen), torch.zeros(16)) for _ in range(2)]


ARCHS = {
    "resnet20-bn": lambda: models.resnet20(width=1),
    "resnet20-gn": lambda: models.resnet20(width=1, norm="gn"),
    "vit": lambda: models.vit(depth=2, dim=24, heads=3, patch=8, mlp_ratio=2.0),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", ["zipit", "act-align", "mudsc-zip"])
def test_chunked_merges_give_the_unchunked_plan(arch, method):
    torch.manual_seed(1)
    ms = [ARCHS[arch]() for _ in range(2)]
    loader = _loader()
    count = [0]
    ms[0].register_forward_pre_hook(lambda module, args: count.__setitem__(0, count[0] + 1))
    calls = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = mudsc.merge(ms, loader, method=method, **FAST)
        calls["whole"], count[0] = count[0], 0
        peak = whole.report["memory"]["estimated_peak_gib"][0] * 2**30
        for fraction in (0.7, 0.8, 0.9):  # the smallest budget under the single pass's peak that fits each group
            try:
                count[0] = 0
                chunked = mudsc.merge(ms, loader, method=method, max_memory=int(fraction * peak), **FAST)
                calls["chunked"] = count[0]
                break
            except MemoryError:
                continue
        else:
            pytest.fail(f"no budget below the single pass's {peak:.0f} bytes fits")
    assert whole.report["memory"]["passes"] == 1
    mem = chunked.report["memory"]
    assert mem["passes"] > 1 and sum(mem["groups_per_pass"]) == whole.report["memory"]["groups_per_pass"][0]
    assert all(p <= mem["budget_gib"] for p in mem["estimated_peak_gib"])
    for name in whole.plan.maps:
        np.testing.assert_array_equal(chunked.plan.maps[name].labels, whole.plan.maps[name].labels, err_msg=name)
    # more passes: more forward passes of the models (counted, not timed: wall clock is noisy on shared cores)
    assert calls["chunked"] > calls["whole"] and chunked.report["timing"]["forward"] > 0
    timing = dict(chunked.report["timing"])
    total = timing.pop("total")
    assert abs(sum(timing.values()) - total) <= 0.02 * total + 1e-3


def test_several_passes_need_a_reiterable_loader():
    torch.manual_seed(2)
    ms = [models.resnet20(width=1) for _ in range(2)]
    batches = _loader()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = mudsc.merge(ms, batches, method="zipit", **FAST).report["memory"]["estimated_peak_gib"][0] * 2**30
    with pytest.raises(ValueError, match="passes over the loader .* one-shot iterator"):
        mudsc.merge(ms, iter(batches), method="zipit", max_memory=int(0.8 * peak), **FAST)


def test_bad_max_memory_is_refused_before_any_work(monkeypatch):
    ms = [models.resnet20(width=1) for _ in range(2)]
    monkeypatch.setattr(sys.modules["mudsc.methods.merge"], "collect_stats", lambda *a, **k: pytest.fail("the pass ran"))
    with pytest.raises(ValueError, match="max_memory must be"):
        mudsc.merge(ms, _loader(), method="zipit", max_memory="lots", **FAST)


def test_a_budget_below_one_group_is_a_memory_error_before_the_pass(monkeypatch):
    ms = [models.resnet20(width=1) for _ in range(2)]
    monkeypatch.setattr(sys.modules["mudsc.methods.merge"], "collect_stats", lambda *a, **k: pytest.fail("the pass ran"))
    with pytest.raises(MemoryError, match="budget is 1.00 KiB; raise max_memory"):
        mudsc.merge(ms, _loader(), method="zipit", max_memory=1024, **FAST)


def test_collect_stats_of_some_groups():
    torch.manual_seed(3)
    ms = [models.resnet20(width=1) for _ in range(2)]
    loader = _loader()
    spec = mudsc.trace(ms[0], loader[0][0][:2])
    names = [g.name for g in spec.groups if g.taps][:2]
    part = mudsc.collect_stats(ms, spec, loader, groups=names, progress=False)
    full = mudsc.collect_stats(ms, spec, loader, progress=False)
    assert sorted(part.accumulators) == sorted(names)
    for n in names:
        assert torch.equal(part.correlation(n), full.correlation(n))
    with pytest.raises(ValueError, match=r"groups \['nope'\] are not in the spec"):
        mudsc.collect_stats(ms, spec, loader, groups=["nope"], progress=False)


def test_packed_moments_halve_the_planned_bytes():
    """On the CPU the moments are packed upper triangles (4·F(F+1) bytes) and finalising writes only the
    float32 correlation (4·F²): the plan counts what is allocated."""
    coords = [[("a", 100)], [("b", 300)]]
    full = plan_passes(coords, keep_correlations=False, budget=10**9)
    packed = plan_passes(coords, keep_correlations=False, budget=10**9, packed=True)
    assert full.group_bytes == {"a": 8 * 100**2, "b": 8 * 300**2}
    assert packed.group_bytes == {"a": 4 * 100 * 101, "b": 4 * 300 * 301}
    assert full.peaks == [8 * (100**2 + 300**2) + 20 * 300**2]
    assert packed.peaks == [4 * (100 * 101 + 300 * 301) + 4 * 300**2]


def test_the_report_gives_the_micro_batches_of_the_pass():
    torch.manual_seed(3)
    ms = [models.resnet20(width=1) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = mudsc.merge(ms, _loader(), method="zipit", **FAST).report["memory"]
    assert mem["micro_batches"] == 1  # 16 small images: far under the CPU's cap
    assert 0 < mem["kept_per_sample_mib"] < 1


def test_shard_groups_balances_the_moments_over_the_ranks_and_counts_what_every_rank_receives():
    from mudsc.memory import correlation_bytes, finalize_bytes, moment_bytes, shard_groups

    coords = [[("a", 100)], [("b", 100)], [("c", 50), ("d", 50)], [("e", 10)]]
    owners, peaks = shard_groups(coords, keep_correlations=False, budget=10**9, world=2)
    # in order, each coordinate to the rank with the fewest moment bytes so far (ties: the lower rank)
    assert owners == {"a": 0, "b": 1, "c": 0, "d": 0, "e": 1}
    m0 = moment_bytes(100) + 2 * moment_bytes(50)
    m1 = moment_bytes(100) + moment_bytes(10)
    assert peaks == [m0 + finalize_bytes(100), m1 + finalize_bytes(100)]
    corr = sum(correlation_bytes(f) for f in (100, 100, 50, 50, 10))
    _, kept = shard_groups(coords, keep_correlations=True, budget=10**9, world=2)
    assert kept == [p + corr for p in peaks]
    assert shard_groups(coords, False, budget=max(peaks) - 1, world=2) is None  # does not fit: no sharding
    assert shard_groups(coords, False, budget=10**9, world=1) is None
    assert shard_groups([[("a", 100)], [("b", 100)]], False, 10**9, world=3)[0] == {"a": 0, "b": 1}
