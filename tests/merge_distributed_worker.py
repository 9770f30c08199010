"""One gloo rank of tests/test_distributed.py (not a test module itself).

Usage: ``python merge_distributed_worker.py RANK WORLD_SIZE STORE_FILE OUT_FILE``. Every rank builds the same two
random-weight ResNet-20x2 models and the same 256 images (8 batches of 32), takes its shard of the batches and
runs the scenarios of SCENARIOS with ``mudsc.merge`` over the default process group; rank 0 also merges the whole
data in one process (``process_group=False``) as the reference. What each scenario returned (labels, merged
state dict, report entries) or raised (its message) goes to OUT_FILE.
"""

from __future__ import annotations

import sys

import torch

NUM_BATCHES = 8
# name: (method, merge keyword arguments, batches of rank 0 (rank 1 gets the rest))
SCENARIOS = {
    "zipit": ("zipit", {}, 4),
    "mudsc-zip": ("mudsc-zip", {"max_sweeps": 3}, 4),
    "zipit-uneven-chunked": ("zipit", {"max_memory": "700KB"}, 3),  # several passes over the shards
    "mudsc-zip-uneven": ("mudsc-zip", {"max_sweeps": 3}, 6),
    # budgets one process would need several passes for, but one pass fits with the groups sharded over 2 ranks
    "zipit-sharded": ("zipit", {"max_memory": "1MB"}, 3),
    "mudsc-zip-sharded": ("mudsc-zip", {"max_sweeps": 3, "max_memory": "2600KB"}, 5),
}


def make_models():
    from mudsc.models import resnet20

    torch.manual_seed(11)
    return [resnet20(width=2).eval(), resnet20(width=2).eval()]


def make_batches() -> list:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(32, 3, 32, 32, generator=gen) for _ in range(NUM_BATCHES)]


def outcome(result) -> dict:
    return {"labels": {k: torch.as_tensor(v.labels) for k, v in result.plan.maps.items()},
            "state": {k: v.clone() for k, v in result.model.state_dict().items()},
            "num_batches": result.report["num_batches"], "bn_batches": result.report["samples"]["bn_batches"],
            "distributed": result.report["distributed"], "passes": result.report["memory"]["passes"],
            "memory": result.report["memory"]}


def main(argv: list) -> int:
    import torch.distributed as dist

    import mudsc

    rank, world, store, out_path = int(argv[1]), int(argv[2]), argv[3], argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    models, batches = make_models(), make_batches()
    out = {}
    try:
        for name, (method, kwargs, split) in SCENARIOS.items():
            mine = batches[:split] if rank == 0 else batches[split:]
            result = mudsc.merge(models, mine, method=method, progress=False, **kwargs)
            out[name] = outcome(result)
            if rank == 0:
                alone = mudsc.merge(models, batches, method=method, progress=False, process_group=False,
                                    adaptive=False, **kwargs)
                out[name + "/one-process"] = outcome(alone)
        # failures: rank 1 has no data; rank 1 merges different models; rank 1's second batch cannot run while
        # rank 0 waits in the activation exchange of sharded statistics
        bad = batches[4:5] + [torch.randn(32, 5, 32, 32)] + batches[5:]
        failures = {"empty-shard": (batches[:4] if rank == 0 else [], models, {}),
                    "different-models": (batches[:4] if rank == 0 else batches[4:], models if rank == 0 else
                                         models[::-1], {}),
                    "sharded-bad-batch": (batches[:4] if rank == 0 else bad, models, {"max_memory": "1MB"})}
        for name, (mine, mods, kwargs) in failures.items():
            try:
                mudsc.merge(mods, mine, method="zipit", progress=False, **kwargs)
                out[name] = "no error"
            except (ValueError, RuntimeError) as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        dist.barrier()
    finally:
        torch.save(out, out_path)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
