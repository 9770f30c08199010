"""Real architectures at real size: the user's call ``mudsc.merge(models, loader, method=...)`` with defaults,
stage by stage, with peak memory and the floors measured in the same run.

Cases (N = 2 models with random weights from seeds 0 and 1, Gaussian 224x224 images, no hub downloads):

- timm ``vit_small_patch16_224`` (``vit-s16``), ``vit_base_patch16_224`` (``vit-b16``), ``vit_large_patch16_224``
  (``vit-l16``), ``vit_huge_patch14_224`` (``vit-h14``);
- torchvision ``resnet50`` and ``vgg16_bn`` (``resnet50``, ``vgg16``), and ``vgg11_bn`` (``vgg11``, for ``avg``);
- the package's own ResNet-20x8 (BN, 32x32 images, ``resnet20x8``: the trace of a small model inside its merge).

Every case runs in a subprocess of its own, so that its peak RSS (``resource.getrusage``, the whole process:
models, data and merge) is its own. In that process, in this order:

1. the floors: the two models' forward passes over the loader (eval, no grad; what the statistics pass cannot
   go below), and a state-dict average of the two models (what ``avg`` cannot go below); after the merge, the
   statistics' products at bare-GEMM speed (``stats_gemm_floor_s``, :func:`gemm_floor`: what the statistics
   stage cannot go below);
2. the merge: ``mudsc.merge(models, loader, method=method, progress=False)`` with every other argument at its
   default (trace, statistics, solve, apply, final check, BatchNorm reset: everything the user waits for). The
   report's stages and their sum are recorded next to the wall time; ``unaccounted`` is the part of the total in
   no stage.

On ``--device cuda`` the models and the data live on the GPU and ``torch.cuda.max_memory_allocated`` during the
merge is recorded too. Output: one JSON file (default ``benchmarks/results/scale_<device>.json``) and a table.

    python benchmarks/bench_scale.py [--cases vit-b16 vgg11] [--method zipit] [--images 32] [--batch 16]
                                     [--device cpu|cuda] [--threads 2] [--out path.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = {
    # name: (library, constructor name, image size)
    "vit-s16": ("timm", "vit_small_patch16_224", 224),
    "vit-b16": ("timm", "vit_base_patch16_224", 224),
    "vit-l16": ("timm", "vit_large_patch16_224", 224),
    "vit-h14": ("timm", "vit_huge_patch14_224", 224),
    "resnet50": ("torchvision", "resnet50", 224),
    "vgg16": ("torchvision", "vgg16_bn", 224),
    "vgg11": ("torchvision", "vgg11_bn", 224),
    "resnet20x8": ("mudsc", "resnet20", 32),
}


def build(case: str, seed: int):
    """One model of ``case`` with random weights (seeded), in eval mode."""
    import torch

    library, name, _ = CASES[case]
    torch.manual_seed(seed)
    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    elif library == "mudsc":
        import mudsc

        model = mudsc.models.resnet20(width=8, num_classes=10)
    else:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
    return model.eval()


def rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(args) -> dict:
    """Run one case in this process; returns its record."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    import common  # noqa: F401  (puts the source checkout first on sys.path)
    import mudsc

    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    size = CASES[args.case][2]
    models = [build(args.case, seed).to(device) for seed in range(2)]
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(min(args.batch, args.images - b), 3, size, size, generator=gen).to(device)
              for b in range(0, args.images, args.batch)]
    params = sum(p.numel() for p in models[0].parameters())
    rss_models = rss_gib()

    with torch.no_grad():  # warm-up: one small forward each (first-call allocations, lazy init)
        for m in models:
            m(loader[0][:1])
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            for m in models:
                m(x)
    sync()
    forward_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sds = [m.state_dict() for m in models]
    with torch.no_grad():
        avg = {k: (v + sds[1][k]) / 2 if v.is_floating_point() else v.clone() for k, v in sds[0].items()}
    sync()
    sd_avg_s = time.perf_counter() - t0
    del avg, sds

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    sync()
    t0 = time.perf_counter()
    result = mudsc.merge(models, loader, method=args.method, progress=False)
    sync()
    total_s = time.perf_counter() - t0
    peak_rss = rss_gib()
    timing = {k: float(v) for k, v in result.report["timing"].items()}
    stages = {k: v for k, v in timing.items() if k != "total"}
    with torch.no_grad():
        out = result.model.eval()(loader[0][:2])
    fresh = build(args.case, 2).to(device)
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    record = {
        "case": args.case, "model": CASES[args.case][1], "method": args.method, "device": args.device,
        "device_name": common.device_name(device), "threads": torch.get_num_threads(), "images": args.images,
        "batch": args.batch, "params_per_model": params,
        "forward_two_models_s": forward_s, "state_dict_average_s": sd_avg_s,
        "merge_total_s": total_s, "merge_over_forward": total_s / forward_s,
        "stages": stages, "stages_sum_s": sum(stages.values()), "unaccounted_s": total_s - sum(stages.values()),
        "peak_rss_gib": peak_rss, "rss_after_models_gib": rss_models,
        "stats_gemm_floor_s": gemm_floor(result.report, len(models), device, sync),
        "memory_plan": result.report.get("memory"),
        "merged_runs": bool(torch.isfinite(out).all()), "loads_into_fresh_instance": True,
        "mudsc_version": mudsc.__version__,
    }
    if device.type == "cuda":
        record["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        record["cuda_allocated_before_gib"] = base_cuda / 2**30
    return record


def gemm_floor(report: dict, num_models: int, device, sync) -> float:
    """Seconds the statistics' products would take at bare-GEMM speed: per group, the block upper triangle's
    ``2 · positions · area`` FLOPs (the blocks :class:`mudsc.CorrelationAccumulator` multiplies, over the sample
    positions the merge read) at the rate of one block row's product ``[bs, 4096] x [4096, F]``, timed here
    (median of 3 after a warm-up). Measured after the merge, so it does not touch the peak RSS above."""
    import statistics

    import torch
    from mudsc.stats import _default_block_size

    rates, total = {}, 0.0
    for g in report["groups"].values():
        positions = g.get("positions")
        if not positions:
            continue
        f = num_models * g["size"]
        bs = _default_block_size(f, device.type)
        area = sum(min(bs, f - i0) * (f - i0) for i0 in range(0, f, bs))
        if (bs, f) not in rates:
            a, b = torch.randn(bs, 4096, device=device), torch.randn(4096, f, device=device)
            times = []
            for _ in range(4):
                sync()
                t0 = time.perf_counter()
                a @ b
                sync()
                times.append(time.perf_counter() - t0)
            rates[(bs, f)] = 2 * bs * 4096 * f / statistics.median(times[1:])
        total += 2 * positions * area / rates[(bs, f)]
    return total


def run_case(case: str, args) -> dict:
    """Run ``case`` in a fresh subprocess (its own peak RSS); the record, or the error it ended with."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--method", args.method,
           "--images", str(args.images), "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"case": case, "method": args.method, "error": " | ".join(tail), "returncode": proc.returncode,
                "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1])


def print_table(records) -> None:
    head = (f"{'case':9} {'method':10} {'imgs':>4} {'forward':>8} {'sd-avg':>7} {'merge':>8} {'x fwd':>6} "
            f"{'unacc.':>7} {'RSS GiB':>8} {'gemm':>6}  stages")
    print(head)
    for r in records:
        if "error" in r:
            print(f"{r['case']:9} {r['method']:10} failed: {r['error']}")
            continue
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items() if v >= 0.05)
        print(f"{r['case']:9} {r['method']:10} {r['images']:>4} {r['forward_two_models_s']:8.1f} "
              f"{r['state_dict_average_s']:7.2f} {r['merge_total_s']:8.1f} {r['merge_over_forward']:6.2f} "
              f"{r['unaccounted_s']:7.2f} {r['peak_rss_gib']:8.2f} {r.get('stats_gemm_floor_s', 0.0):6.1f}  {stages}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["vit-s16", "vit-b16"], choices=sorted(CASES))
    p.add_argument("--method", default="zipit")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.case = args.worker
        print(json.dumps(worker(args)))
        return 0
    records = []
    for case in args.cases:
        records.append(run_case(case, args))
        print_table(records[-1:])
    print()
    print_table(records)
    sys.path.insert(0, str(HERE))
    import common

    out = Path(args.out) if args.out else common.RESULTS / f"scale_{args.device.split(':')[0]}.json"
    common.write_json(out, {"records": records})
    print(f"wrote {out}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
