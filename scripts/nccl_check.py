"""NCCL check of merging over a process group, for `make gpu-check` (launched by torchrun, one rank per GPU).

With two or more ranks: every rank merges a random-weight ResNet-20x2 pair (models and data on its own GPU) on its
shard of 256 images over NCCL; rank 0 also merges all of them in one process, and the labels agreement and the
largest weight difference are recorded. With one rank (one GPU) the collective pieces run directly on a one-rank
NCCL group (``merge`` itself treats a one-rank group as one process): an accumulator's ``all_reduce``, the
collective step, the plan and weight broadcasts and the BatchNorm reduction. Rank 0 writes a JSON summary to
``--out``; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist


def _models(device):
    from mudsc.models import resnet20

    torch.manual_seed(11)
    return [resnet20(width=2).eval().to(device), resnet20(width=2).eval().to(device)]


def _batches(device):
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(32, 3, 32, 32, generator=gen).to(device) for _ in range(8)]


def _several_ranks(device, rank, world) -> dict:
    import mudsc

    models, batches = _models(device), _batches(device)
    out = {}
    for method in ("zipit", "mudsc-zip"):
        res = mudsc.merge(models, batches[rank::world], method=method, progress=False, device=device, max_sweeps=3)
        if rank == 0:
            alone = mudsc.merge(models, batches, method=method, progress=False, device=device, max_sweeps=3,
                                process_group=False, adaptive=False)
            same = sum(int((res.plan.maps[g].labels == alone.plan.maps[g].labels).sum()) for g in alone.plan.maps)
            total = sum(alone.plan.maps[g].labels.size for g in alone.plan.maps)
            diff = max(float((a.double() - b.double()).abs().max()) for a, b in
                       zip(res.model.state_dict().values(), alone.model.state_dict().values()))
            out[method] = {"labels_equal": same / total, "max_weight_difference": diff,
                           "seconds": res.report["timing"]["total"], "report": res.report["distributed"]}
    return out


def _one_rank(device) -> dict:
    from mudsc import CorrelationAccumulator
    from mudsc.distributed import Collective, all_reduce_bn, broadcast_model

    group = dist.group.WORLD
    x = torch.randn(64, 16, device=device, dtype=torch.float64)
    acc = CorrelationAccumulator(16, device=device)
    acc.update(x)
    before = acc.correlation(dtype=torch.float64).clone()
    acc.all_reduce(group)
    with Collective(group, "the smoke test") as step:
        step.share(value=1)
    model = _models(device)[0]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    total = all_reduce_bn(norms, 3, group)
    broadcast_model(model, group)
    return {"correlation_unchanged": bool(torch.allclose(before, acc.correlation(dtype=torch.float64))),
            "bn_batches": total}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="nccl", choices=("nccl", "gloo"),
                   help="gloo runs the same checks on the CPU (to try this script without a GPU)")
    args = p.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.backend == "nccl":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        summary = {"world_size": world, "backend": args.backend, "device": name}
        summary.update(_several_ranks(device, rank, world) if world > 1 else _one_rank(device))
        ok = (all(v["labels_equal"] >= 0.99 for k, v in summary.items() if isinstance(v, dict) and "labels_equal" in v)
              and summary.get("correlation_unchanged", True) and summary.get("bn_batches", 3) == 3)
        summary["ok"] = bool(ok)
        if rank == 0:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=2)
            print(json.dumps(summary))
    finally:
        dist.destroy_process_group()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
