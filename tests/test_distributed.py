"""mudsc.distributed: merging over a torch.distributed process group.

The two-rank tests run ``tests/merge_distributed_worker.py`` as two gloo processes on 127.0.0.1 once for the
module (each rank merges with its own shard of 256 images; rank 0 also merges all of them in one process) and
check what the issue asks: identical plans and merged weights on both ranks, equal to the one-process merge, for
zipit and mudsc-zip, with even and uneven shards and with a memory plan of several passes; a failure on one rank
raises on every rank instead of hanging."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mudsc
from mudsc.distributed import Collective, resolve_group

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _load_worker():
    spec = importlib.util.spec_from_file_location("merge_distributed_worker", HERE / "merge_distributed_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKER = _load_worker()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two gloo ranks saved: ``[rank 0's results, rank 1's]``."""
    tmp = tmp_path_factory.mktemp("gloo")
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(HERE / "merge_distributed_worker.py"), str(r), "2",
                               str(tmp / "store"), str(tmp / f"r{r}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    logs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the gloo workers did not finish in {TIMEOUT_S} s (a rank waiting for another?)")
        logs.append(out.decode(errors="replace"))
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return [torch.load(tmp / f"r{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(WORKER.SCENARIOS))
def test_both_ranks_get_the_same_plan_and_weights(ranks, name):
    r0, r1 = ranks[0][name], ranks[1][name]
    assert r0["labels"].keys() == r1["labels"].keys() and r0["labels"]
    for group in r0["labels"]:
        assert torch.equal(r0["labels"][group], r1["labels"][group]), group
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    assert {k: r0["distributed"][k] for k in ("world_size", "rank", "backend")} == {
        "world_size": 2, "rank": 0, "backend": "gloo"}
    assert r1["distributed"]["rank"] == 1


@pytest.mark.parametrize("name", list(WORKER.SCENARIOS))
def test_the_plan_is_the_one_process_plan(ranks, name):
    """Labels of the two-rank merge equal those of one process over all 8 batches (>= 99%: float rounding of the
    sums in another order may flip an exact tie); the merged weights and the BatchNorm statistics too (an
    unreduced BN reset on uneven shards would differ by far more)."""
    got, alone = ranks[0][name], ranks[0][name + "/one-process"]
    same = sum(int((got["labels"][g] == alone["labels"][g]).sum()) for g in alone["labels"])
    total = sum(t.numel() for t in alone["labels"].values())
    assert same >= 0.99 * total, (same, total)
    if same == total:
        for key, want in alone["state"].items():
            if want.is_floating_point():
                torch.testing.assert_close(got["state"][key], want, rtol=1e-5, atol=1e-5, msg=key)
            else:
                assert torch.equal(got["state"][key], want), key
    assert got["num_batches"] == alone["num_batches"] == WORKER.NUM_BATCHES
    assert got["bn_batches"] == alone["bn_batches"] == WORKER.NUM_BATCHES


def test_a_memory_plan_of_several_passes_runs_on_every_rank(ranks):
    assert ranks[0]["zipit-uneven-chunked"]["passes"] > 1
    assert ranks[1]["zipit-uneven-chunked"]["passes"] == ranks[0]["zipit-uneven-chunked"]["passes"]


@pytest.mark.parametrize("name", ["zipit-sharded", "mudsc-zip-sharded"])
def test_groups_sharded_over_the_ranks_when_one_pass_fits_only_so(ranks, name):
    """A budget one process needs several passes for: each rank accumulates half of the groups in one pass
    (its peak is reported by every rank); the plan is the one-process plan (checked above)."""
    for r in range(2):
        memory = ranks[r][name]["memory"]
        assert memory["sharded"] and memory["passes"] == 1 and memory["groups_per_rank"] == [6, 6]
        peaks = ranks[r][name]["distributed"]["rank_peaks"]
        assert len(peaks) == 2 and all(p["peak_rss_gib"] > 0 for p in peaks)
    assert ranks[0][name + "/one-process"]["passes"] > 1


def test_a_rank_failing_in_the_activation_exchange_fails_every_rank(ranks):
    assert ranks[1]["sharded-bad-batch"].startswith("ValueError: model 0 cannot run on batch 1")
    assert ranks[0]["sharded-bad-batch"].startswith("RankFailure: rank 1 failed in the statistics pass")


def test_a_rank_without_data_fails_every_rank(ranks):
    assert ranks[0]["empty-shard"].startswith("RankFailure: rank 1 failed in the checks")
    assert "yielded no batches" in ranks[0]["empty-shard"]
    assert ranks[1]["empty-shard"] == "ValueError: the loader yielded no batches"


def test_ranks_with_different_models_are_refused(ranks):
    for r in range(2):
        assert ranks[r]["different-models"].startswith("ValueError: rank 1 differs from rank 0 in models")


def test_without_torch_distributed_a_merge_is_one_process():
    assert not torch.distributed.is_initialized()
    assert resolve_group(None) is None and resolve_group(False) is None
    with pytest.raises(ValueError, match="needs an initialized"):
        resolve_group(True)
    with pytest.raises(ValueError, match="not initialized"):
        mudsc.merge([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], method="avg", process_group=object())
    with Collective(None, "nothing") as step:
        step.share(anything=[1, 2])  # no group: nothing is exchanged


def test_a_group_of_one_rank_is_one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert resolve_group(None) is None and resolve_group(dist.group.WORLD) is None
        with pytest.raises(TypeError, match="ProcessGroup"):
            resolve_group("world")
        result = mudsc.merge([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], method="avg")
        assert result.report["distributed"] is None
    finally:
        dist.destroy_process_group()


def test_the_cli_under_torchrun_writes_the_one_process_plan_from_rank_0(tmp_path):
    """``torchrun --nproc-per-node 2 -m mudsc merge``: each rank merges every other batch, rank 0 writes; the plan
    and weights equal those of one process over all batches (``--full-pass``, what the ranks read)."""
    from mudsc.models import resnet20

    for i, name in enumerate("ab"):
        torch.manual_seed(i)
        torch.save(resnet20(width=2).state_dict(), tmp_path / f"{name}.pt")
    common = ["merge", "--arch", "resnet20", "--arch-kwargs", '{"width": 2}', "--checkpoints", "a.pt", "b.pt",
              "--data", "random", "--num-samples", "160", "--batch-size", "32", "--method", "zipit", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    runs = {"two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                    "mudsc", *common, "--out", "m2.pt", "--plan", "p2.safetensors"],
            "one": [sys.executable, "-m", "mudsc", *common, "--full-pass", "--out", "m1.pt", "--plan", "p1.safetensors"]}
    for name, cmd in runs.items():
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, (name, done.stdout, done.stderr)
        assert done.stdout.count("merged 2 models") == 1, done.stdout  # rank 0 alone reports
    one, two = (mudsc.MergePlan.load(tmp_path / f"p{k}.safetensors") for k in (1, 2))
    assert one.maps.keys() == two.maps.keys()
    for group in one.maps:
        assert (one.maps[group].labels == two.maps[group].labels).all(), group
    s1, s2 = (torch.load(tmp_path / f"m{k}.pt") for k in (1, 2))
    for key in s1:
        torch.testing.assert_close(s2[key], s1[key], rtol=1e-5, atol=1e-5, msg=key)


def test_a_shard_is_every_kth_batch(monkeypatch):
    from mudsc.cli.launch import Shard, launched_ranks, shard, takes_shard

    items = list(range(7))
    assert [list(Shard(items, r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(Shard(items, r, 3)) for r in range(3)] == [3, 2, 2]
    assert len(Shard(items, 2, 9)) == 1 and len(Shard(items, 8, 9)) == 0
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_ranks() is None and shard(items) is items
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_ranks() == (1, 1, 2) and list(shard(items)) == [1, 3, 5]
    assert takes_shard(lambda rank, world_size: None) and not takes_shard(lambda: None)
