"""The adaptive sample count (mudsc/sampling.py): the pair value and the stopping rules, the statistics pass that
skips groups whose statistics are final, the BatchNorm reset that stops early, and merge's defaults around them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import mudsc
from mudsc import collect_stats, models, trace
from mudsc.norm import recompute_bn
from mudsc.sampling import MIN_SAMPLES, StableMatching, StableNorms, check_tolerance, checkpoint, pair_value

torch.set_num_threads(2)
FAST = dict(max_sweeps=2, patience=1, progress=False)


def _brute_pair_value(labels, sim):
    vals = [sim[u, v] for u in range(len(labels)) for v in range(u + 1, len(labels)) if labels[u] == labels[v]]
    return float(np.mean(vals)) if vals else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_pair_value_is_the_mean_similarity_of_merged_pairs(seed):
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.integers(0, 13, size=n)  # clusters of every size, singletons included
    sim = rng.standard_normal((n, n)).astype(np.float32)
    assert pair_value(labels, sim) == pytest.approx(_brute_pair_value(labels, sim), abs=1e-6)


def test_pair_value_without_pairs_is_zero():
    assert pair_value(np.arange(5), np.ones((5, 5))) == 0.0


def test_checkpoints_are_the_powers_of_two():
    assert [b for b in range(0, 40) if checkpoint(b)] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.1", None, True])
def test_bad_tolerances_are_refused(bad):
    with pytest.raises(ValueError, match="sample_tol must be a number >= 0"):
        check_tolerance(bad)


class _FakeAccumulator:
    """What StableMatching reads of an accumulator: its float32 correlation and its sample / unit counts."""

    def __init__(self, sim, samples=100):
        self.sim, self.num_positions, self.num_features = torch.as_tensor(sim), samples, sim.shape[0]

    def correlation(self, dtype=torch.float32):
        return self.sim.to(dtype)

    def clear_cache(self):
        pass


# 4 units of 2 models: pairing A = (0, 2), (1, 3) is worth 0.85, pairing B = (0, 3), (1, 2) 0.45
SIM = np.array([[1, 0, .9, .5], [0, 1, .4, .8], [.9, .4, 1, 0], [.5, .8, 0, 1]], dtype=np.float32)
A, B = np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0])


def _scripted(labels):
    calls = []

    def solve(name, sim):
        calls.append(name)
        return labels[len(calls) - 1]

    return solve, calls


def test_a_group_stops_once_the_earlier_map_is_as_good():
    solve, calls = _scripted([A, A])
    rule = StableMatching(solve, tol=0.01)
    acc = {"g": _FakeAccumulator(SIM)}
    assert rule.update(1, acc, total=None) == set()  # the first map: nothing to compare with
    assert rule.update(2, acc, total=None) == {"g"}
    assert rule.stopped_at == {"g": 2} and rule.history["g"] == [(2, 0.0)] and rule.checks == 2


def test_a_worse_earlier_map_keeps_the_group_collecting():
    solve, calls = _scripted([B, A, A])
    rule = StableMatching(solve, tol=0.39)  # B loses 0.40 against A
    acc = {"g": _FakeAccumulator(SIM)}
    assert rule.update(1, acc) == set() and rule.update(2, acc) == set()
    assert rule.history["g"][0][0] == 2 and rule.history["g"][0][1] == pytest.approx(0.40, abs=1e-6)
    assert rule.update(3, acc) == set() and len(calls) == 2  # off a checkpoint: no solve
    assert rule.update(4, acc) == {"g"} and rule.stopped_at == {"g": 4}
    assert StableMatching(_scripted([B, A])[0], tol=0.41).update(1, acc) == set()


def test_an_underdetermined_group_never_stops_early():
    solve, calls = _scripted([A, A, A])
    rule = StableMatching(solve, tol=math.inf)
    few = {"g": _FakeAccumulator(SIM, samples=3)}  # 3 samples for 4 units
    assert rule.update(1, few) == set() and rule.update(2, few) == set()
    assert rule.update(4, {"g": _FakeAccumulator(SIM, samples=4)}) == {"g"} and len(calls) == 3
    # a map is not even solved while twice the samples would still not determine the group
    solve, calls = _scripted([A, A])
    rule = StableMatching(solve, tol=math.inf)
    assert rule.update(1, {"g": _FakeAccumulator(SIM, samples=1)}) == set() and calls == []
    assert rule.update(2, {"g": _FakeAccumulator(SIM, samples=2)}) == set() and len(calls) == 1
    assert rule.update(4, {"g": _FakeAccumulator(SIM, samples=4)}) == {"g"}


def test_nothing_is_solved_where_nothing_can_be_saved():
    solve, calls = _scripted([A] * 10)
    rule = StableMatching(solve, tol=0.01)
    acc = {"g": _FakeAccumulator(SIM)}
    assert rule.update(1, acc, total=2) == set() and calls == []  # its comparison would come at the last batch
    assert rule.update(2, acc, total=2) == set() and calls == []  # the last batch
    rule = StableMatching(solve, tol=0.01)
    assert rule.update(1, acc, total=3) == set() and len(calls) == 1
    assert rule.update(2, acc, total=3) == {"g"} and len(calls) == 2  # saves the third batch


class _CountingLoader:
    """A re-iterable list of batches that counts the batches handed out."""

    def __init__(self, batches):
        self.batches, self.served = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.served += 1
            yield b


def _batches(count, size=32, shape=(3, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=gen), torch.zeros(size)) for _ in range(count)]


class _StopAt:
    """A scripted rule: group -> the batch after which its statistics are final."""

    def __init__(self, at):
        self.at, self.seen = at, []

    def update(self, batches, accumulators, total=None, samples=None):
        self.seen.append((batches, sorted(accumulators)))
        return {g for g in accumulators if self.at.get(g, math.inf) <= batches}


def test_stopped_groups_keep_the_statistics_of_their_batches_and_the_pass_ends_with_the_last():
    torch.manual_seed(0)
    ms = [models.resnet20(width=1) for _ in range(2)]
    spec = trace(ms[0], torch.randn(2, 3, 8, 8))
    names = [g.name for g in spec.groups if g.taps]
    at = {name: (2 if k % 2 else 3) for k, name in enumerate(names)}
    loader = _CountingLoader(_batches(8))
    rule = _StopAt(at)
    stats = collect_stats(ms, spec, loader, progress=False, stop=rule)
    assert stats.num_batches == 3 and loader.served == 3  # the fourth batch is never read
    assert stats.group_batches == at
    assert rule.seen[2][1] == sorted(n for n in names if at[n] == 3)  # stopped groups are not asked again
    for b in (2, 3):
        ref = collect_stats(ms, spec, loader.batches, progress=False, max_batches=b)
        for name in names:
            if at[name] == b:
                torch.testing.assert_close(stats.correlation(name), ref.correlation(name), rtol=0, atol=0,
                                           msg=name)


def test_merge_stops_the_passes_early_by_default_and_reads_everything_when_asked():
    torch.manual_seed(3)
    ms = [models.resnet20(width=1) for _ in range(2)]
    loader = _CountingLoader(_batches(16, size=MIN_SAMPLES // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = mudsc.merge(ms, loader, method="zipit", adaptive=False, **FAST)
        assert loader.served == 1 + 16 + 16  # the peek at the first batch, statistics, BatchNorm reset
        loader.served = 0
        fast = mudsc.merge(ms, loader, method="zipit", sample_tol=math.inf, **FAST)
    s = full.report["samples"]
    assert (s["adaptive"], s["loader_batches"], s["stats_batches"], s["bn_batches"], s["solves"]) == (
        False, 16, 16, 16, 0)
    s = fast.report["samples"]
    assert s["adaptive"] and s["stats_batches"] == 2 and set(s["stopped_early"].values()) == {2}
    assert 2 <= s["bn_batches"] <= 16 and loader.served == 1 + 2 + s["bn_batches"]
    assert s["group_batches"] == s["stopped_early"] and fast.report["num_batches"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = mudsc.merge(ms, loader.batches, method="zipit", adaptive=False, max_batches=2, **FAST)
    for name in two.plan.maps:  # every group stopped after 2 batches: the plan of the first 2 batches
        np.testing.assert_array_equal(fast.plan.maps[name].labels, two.plan.maps[name].labels, err_msg=name)
    for res in (full, fast):  # the merged models load into a fresh instance and run
        fresh = models.resnet20(width=1)
        fresh.load_state_dict(res.model.state_dict(), strict=True)
        assert torch.isfinite(fresh.eval()(loader.batches[0][0])).all()
    timing = dict(fast.report["timing"])
    total = timing.pop("total")
    assert abs(sum(timing.values()) - total) <= 0.02 * total + 1e-3


@pytest.mark.parametrize("method", ["zipit", "mudsc-align"])
def test_chunked_adaptive_merges_stop_every_group_where_the_single_pass_does(method):
    torch.manual_seed(4)
    ms = [models.resnet20(width=1) for _ in range(2)]
    loader = _batches(8, size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = mudsc.merge(ms, loader, method=method, **FAST)
        peak = whole.report["memory"]["estimated_peak_gib"][0] * 2**30
        chunked = None
        for fraction in (0.7, 0.8, 0.9):
            try:
                chunked = mudsc.merge(ms, loader, method=method, max_memory=int(fraction * peak), **FAST)
                break
            except MemoryError:
                continue
    assert chunked is not None and chunked.report["memory"]["passes"] > 1
    assert chunked.report["samples"]["group_batches"] == whole.report["samples"]["group_batches"]
    fresh = models.resnet20(width=1)
    fresh.load_state_dict(chunked.model.state_dict(), strict=True)
    assert torch.isfinite(fresh.eval()(loader[0][0])).all()
    for name in whole.plan.maps:
        np.testing.assert_array_equal(chunked.plan.maps[name].labels, whole.plan.maps[name].labels, err_msg=name)


def test_native_and_reference_stop_alike():
    torch.manual_seed(5)
    ms = [models.resnet20(width=1) for _ in range(2)]
    loader = _batches(8, size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = {b: mudsc.merge(ms, loader, method="zipit", backend=b, **FAST) for b in ("native", "reference")}
    assert res["native"].report["samples"]["group_batches"] == res["reference"].report["samples"]["group_batches"]
    for name in res["native"].plan.maps:
        np.testing.assert_array_equal(res["native"].plan.maps[name].labels, res["reference"].plan.maps[name].labels)


def test_neither_rule_stops_before_min_samples_items():
    """Batches of a sixteenth of MIN_SAMPLES (rounded up): the first comparison that may stop is after 16 batches,
    so a loader of 16 is read whole and one of 32 stops at 16, however lenient the tolerance."""
    torch.manual_seed(7)
    ms = [models.resnet20(width=1) for _ in range(2)]
    size = -(-MIN_SAMPLES // 16)
    small, large = _batches(16, size=size), _batches(32, size=size)
    assert recompute_bn(ms[0], small, tol=math.inf) == 16 and recompute_bn(ms[0], large, tol=math.inf) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = mudsc.merge(ms, small, method="zipit", sample_tol=math.inf, **FAST).report["samples"]
        half = mudsc.merge(ms, large, method="zipit", sample_tol=math.inf, **FAST).report["samples"]
    assert whole["stats_batches"] == 16 and whole["stopped_early"] == {} and whole["bn_batches"] == 16
    assert half["stats_batches"] == 16 and set(half["stopped_early"].values()) == {16}
    norms = [m for m in ms[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    rule = StableNorms(norms, tol=math.inf, min_samples=100)
    assert not rule.update(1, 40) and not rule.drift  # under half the floor: not even a snapshot
    assert not rule.update(2, 80) and rule.update(4, 160)  # a snapshot, then the first comparison that may stop


def test_bn_reset_stops_once_the_running_statistics_are_stable():
    torch.manual_seed(6)
    model = models.resnet20(width=1)
    batches = _batches(16, size=MIN_SAMPLES // 2)
    read = recompute_bn(model, batches, tol=math.inf)
    assert read == 2  # the first comparison: after 2 batches, MIN_SAMPLES items
    stopped = {k: v.clone() for k, v in model.state_dict().items()}
    mudsc.reset_bn(model, batches, max_batches=2)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(stopped[k], v, rtol=0, atol=0, msg=k)
    assert recompute_bn(model, batches) == 16 and recompute_bn(model, batches, tol=0.0) == 16
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    rule = StableNorms(norms, tol=0.05)
    assert not rule.update(1) and not rule.update(3)  # no earlier snapshot; off a checkpoint
    norms[0].running_mean += 0.2 * (norms[0].running_var + norms[0].eps).sqrt()
    assert not rule.update(2) and rule.drift[-1][1] == pytest.approx(0.2, rel=1e-4)
    assert rule.update(4)


def test_bn_reset_refuses_a_bad_tolerance():
    with pytest.raises(ValueError, match="tol must be a number >= 0"):
        mudsc.reset_bn(models.resnet20(width=1), _batches(1), tol=-1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(adaptive="yes"), TypeError, "adaptive must be True or False"),
    (dict(sample_tol=-0.5), ValueError, "sample_tol must be a number >= 0"),
    (dict(sample_tol=float("nan")), ValueError, "sample_tol must be a number >= 0"),
])
def test_merge_refuses_bad_sampling_arguments_before_any_pass(kwargs, error, match):
    loader = _CountingLoader(_batches(2))
    with pytest.raises(error, match=match):
        mudsc.merge([models.resnet20(width=1) for _ in range(2)], loader, method="zipit", **kwargs, **FAST)
    assert loader.served == 0
