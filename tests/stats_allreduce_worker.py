"""One gloo rank of tests/test_stats.py::test_all_reduce_two_gloo_ranks (not a test module itself).

Usage: ``python stats_allreduce_worker.py RANK WORLD_SIZE STORE_FILE OUT_FILE``. Rank 0 updates the first two
batches, rank 1 the next four (so the ranks start from different shifts and sample counts), every accumulator in
CONFIGS is ``all_reduce``d, then both ranks update the last batch (the reduced state must be a sound state to
keep streaming into, e.g. its shift must be the global mean) and the results are saved to OUT_FILE.
``make_batches`` is imported by the test to build the one-process reference.
"""

from __future__ import annotations

import sys

import torch

F = 6
NUM_NONFINITE = 2
# name: (accumulator arguments, offset added to every batch)
CONFIGS = {
    "float64": (dict(dtype=torch.float64), 0.0),
    "float32": (dict(dtype=torch.float32, block_size=4, fold_samples=50), 0.0),
    "float32_large_mean": (dict(dtype=torch.float32), 1e4),  # the common shift must be the global mean
    "reference": (dict(backend="reference"), 0.0),
    "empty_rank1": (dict(dtype=torch.float64), 0.0),  # rank 1 sees no sample
}


def make_batches(offset: float = 0.0) -> list[torch.Tensor]:
    """Seven [4, F, 3, 5] float32 batches with different means per batch and two non-finite values."""
    gen = torch.Generator().manual_seed(1234)
    mix = torch.eye(F) + 0.5 * torch.randn(F, F, generator=gen)
    out = []
    for k in range(7):
        rows = torch.randn(4 * 15, F, generator=gen) @ mix + 10.0 * k + offset
        out.append(rows.reshape(4, 3, 5, F).permute(0, 3, 1, 2).contiguous())
    out[1][0, 2, 0, 0] = float("nan")
    out[4][3, 5, 2, 4] = float("inf")
    return out


def results(acc) -> dict:
    out = {"num_samples": acc.num_samples, "num_positions": acc.num_positions, "nonfinite": acc.nonfinite_count}
    for key in ("mean", "covariance", "correlation", "cosine_similarity"):
        out[key] = getattr(acc, key)(dtype=torch.float64) if acc.backend == "native" else getattr(acc, key)().double()
    out["zero_variance_units"] = acc.zero_variance_units
    return out


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    import mudsc

    rank, world, store, out_path = int(argv[1]), int(argv[2]), argv[3], argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        out = {}
        for name, (kwargs, offset) in CONFIGS.items():
            batches = make_batches(offset)
            if name == "empty_rank1":
                mine = batches[:6] if rank == 0 else []
            else:
                mine = batches[:2] if rank == 0 else batches[2:6]
            acc = mudsc.CorrelationAccumulator(F, **kwargs)
            for t in mine:
                acc.update(t, channel_dim=1)
            assert acc.all_reduce() is acc
            acc.update(batches[6], channel_dim=1)
            out[name] = results(acc)
        torch.save(out, out_path)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
