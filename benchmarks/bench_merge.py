"""End-to-end merge benchmark: ``mudsc.merge`` with ``backend="native"`` vs ``backend="reference"``, stage by stage.

The same merge (same models, data, spec, method and hyperparameters) runs once with every solver, statistic and
similarity on the native backend and once on the reference backend (the original algorithm's pure torch/scipy
loops). The stages come from ``MergeResult.report["timing"]``: ``forward`` (the models' own forward passes
over the data), ``stats`` (activation correlation accumulation), ``similarity`` (weight-vector similarity of
the descent), ``solve`` (zip / LAP solvers), ``apply`` (building the merged model). The spec is traced once
beforehand and the BatchNorm reset is off, so ``total`` is the sum of these stages plus glue.

Cases (N = 2 models from different seeds, random weights, Gaussian 32x32 images, batch 64):

- ``resnet20x8``: ResNet-20x8 (BN), 256 images, method mudsc-zip (``--quick``: ResNet-20x1, 64 images);
- ``vit-s``: a ViT at ViT-S width (dim 384, 6 heads, patch 4, 32x32 images), depth 6, 256 images, mudsc-zip
  (``--quick``: dim 96, 3 heads, depth 1, 32 images).

``--max-sweeps`` caps the coordinate descent (default: the method's 100; ``--quick``: 3). Both backends run
the same sweeps when their plans agree, so the cap shortens the run without changing the per-sweep ratio.

Correctness first: the native plan of a case must equal the reference plan (labels of every group); any
difference is printed and makes the script exit 1 (timings are still reported). The reference run doubles as
the reference timing (it is minutes long); the native merge runs once untimed (checked against the reference,
warms caches) and once timed. Acceptance (issue #6) on resnet20x8: (total - forward) reference / native >= 10x,
total reference / native >= 3x; printed as met / not met, never asserted.

    python benchmarks/bench_merge.py [--quick] [--cases resnet20x8 vit-s] [--out path.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from common import RESULTS, ROOT, device_name, write_json

import mudsc
from mudsc.demo import differing_groups

STAGES = ("forward", "stats", "similarity", "solve", "apply")


def make_case(name: str, quick: bool):
    """``(models, loader, spec, description)`` of one benchmark case."""
    if name == "resnet20x8":
        width, images = (1, 64) if quick else (8, 256)
        build = lambda: mudsc.models.resnet20(width=width, num_classes=10)  # noqa: E731
        desc = f"ResNet-20x{width} (BN), {images} images"
    elif name == "vit-s":
        # quick: the reference zip of a dim-384 ViT's MLP group (O = 2 x 1536) alone takes minutes on 2 cores
        depth, dim, heads, images = (1, 96, 3, 32) if quick else (6, 384, 6, 256)
        build = lambda: mudsc.models.vit(depth=depth, dim=dim, heads=heads, patch=4, image_size=32)  # noqa: E731
        desc = f"ViT dim {dim} / {heads} heads / depth {depth}, {images} images"
    else:
        raise ValueError(f"unknown case {name!r}")
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(build().eval())
    x = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64, shuffle=False)
    spec = mudsc.trace(models[0], x[:2])
    return models, loader, spec, desc


def run_merge(models, loader, spec, method: str, backend: str, max_sweeps: int):
    """``(MergeResult, seconds per stage + "wall")`` of one merge without the BatchNorm reset."""
    t0 = time.perf_counter()
    res = mudsc.merge(models, loader, method=method, spec=spec, backend=backend, progress=False,
                      reset_bn_stats=False, max_sweeps=max_sweeps)
    wall = time.perf_counter() - t0
    timing = {k: float(v) for k, v in res.report["timing"].items()}
    timing["wall"] = wall
    return res, timing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--cases", nargs="*", default=["resnet20x8", "vit-s"])
    parser.add_argument("--method", default="mudsc-zip", choices=list(mudsc.METHODS))
    parser.add_argument("--max-sweeps", type=int, default=None, help="descent cap (default 100; --quick: 3)")
    parser.add_argument("--out", default=str(RESULTS / "merge.json"))
    args = parser.parse_args(argv)
    sweeps = args.max_sweeps if args.max_sweeps is not None else (3 if args.quick else 100)

    threads = torch.get_num_threads()
    cpu = device_name()
    print(f"bench_merge: mudsc {mudsc.__version__}, method {args.method} (max {sweeps} sweeps), N = 2, "
          f"CPU {cpu}, torch threads {threads}, "
          f"native core {'loaded' if mudsc.build_info().get('core') else 'NOT loaded'}")
    results, ok = [], True
    for case in args.cases:
        models, loader, spec, desc = make_case(case, args.quick)
        print(f"\n== {case}: {desc}, {len(spec.groups)} groups", flush=True)
        ref, t_ref = run_merge(models, loader, spec, args.method, "reference", sweeps)
        nat_check, _ = run_merge(models, loader, spec, args.method, "native", sweeps)
        diff = differing_groups(nat_check.plan, ref.plan)
        if diff:
            ok = False
            print(f"  PLANS DIFFER (native vs reference) in {len(diff)} group(s): {', '.join(diff[:10])}")
        else:
            print("  plans identical (labels of every group), native vs reference")
        _, t_nat = run_merge(models, loader, spec, args.method, "native", sweeps)
        rows = []
        print(f"| stage | reference s | native s | reference / native |")
        print("|---|---:|---:|---:|")
        for s in STAGES + ("total",):
            r, n = t_ref.get(s, 0.0), t_nat.get(s, 0.0)
            rows.append((s, r, n))
            print(f"| {s} | {r:.3f} | {n:.3f} | {r / n:.1f}x |" if n > 0 else f"| {s} | {r:.3f} | {n:.3f} | |")
        merge_ref = t_ref["total"] - t_ref.get("forward", 0.0)
        merge_nat = t_nat["total"] - t_nat.get("forward", 0.0)
        print(f"| total - forward | {merge_ref:.3f} | {merge_nat:.3f} | {merge_ref / merge_nat:.1f}x |")
        entry = {"case": case, "description": desc, "groups": len(spec.groups), "plans_identical": not diff,
                 "differing_groups": diff, "reference": t_ref, "native": t_nat,
                 "ratio_total": t_ref["total"] / t_nat["total"], "ratio_without_forward": merge_ref / merge_nat,
                 "sweeps_native": nat_check.report.get("sweeps"), "sweeps_reference": ref.report.get("sweeps")}
        if case == "resnet20x8" and not args.quick:
            met = entry["ratio_without_forward"] >= 10 and entry["ratio_total"] >= 3
            entry["acceptance_met"] = met
            print(f"acceptance (merge without forward >= 10x: {entry['ratio_without_forward']:.1f}x; end to end "
                  f">= 3x: {entry['ratio_total']:.1f}x): {'met' if met else 'NOT met'}")
        results.append(entry)
    out = write_json(Path(args.out), {"cpu": cpu, "threads": threads, "quick": args.quick, "method": args.method,
                                      "max_sweeps": sweeps, "torch": torch.__version__, "results": results}, indent=1)
    print(f"\nwrote {os.path.relpath(out, ROOT) if str(out).startswith(str(ROOT)) else out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
