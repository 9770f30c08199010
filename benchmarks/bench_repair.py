"""REPAIR on trained pairs without BatchNorm: joint accuracy of every method with and without it, and its cost.

Pairs: the demo's GroupNorm ResNet-20x4 and its LayerNorm ViT (trained here on MNIST digits 0-4 and 5-9 with the
demo's settings, cached in the demo's cache; no downloads), merged on the demo's merge loader (512 images in
batches of 64). For every method: ``mudsc.merge(models, loader, method=m, repair=r)`` for ``r`` in (False, True)
(``True`` is what the default does for these models), the joint accuracy (argmax over the 10 classes) on 1,000
held-out digits, the merge's wall time and the ``repair`` stage's seconds; every merged model is loaded strictly
into a fresh instance of its architecture and run.

    python benchmarks/bench_repair.py [--archs gn vit] [--methods ...] [--threads 2] [--out path.json]
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
from mudsc.demo.endpoints import cache_root, cached_digits, default_archs, load_or_train  # noqa: E402
from mudsc.demo.evaluation import accuracies, predict  # noqa: E402

TASK_SEEDS = ((0, 1), (1, 2))  # (task, seed) of model A and model B, as the demo
ARCHS = {"gn": 1, "vit": 3}  # index into the demo's default_archs()


def _pair(arch, cache):
    images, labels = cached_digits(cache, arch.image_size)
    train_idx, test_idx = mnist.stratified_split(labels, test_per_class=100)
    task_idx = [mnist.task_subset(labels, train_idx, t) for t in range(2)]
    ends = [load_or_train(arch, images[task_idx[t]], labels[task_idx[t]], s, t, cache, print)[0]
            for t, s in TASK_SEEDS]
    mix = np.random.default_rng(0).permutation(np.concatenate(task_idx))[:512]
    loader = [images[mix[i:i + 64]] for i in range(0, len(mix), 64)]
    return ends, loader, images[test_idx], labels[test_idx]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--methods", nargs="+", default=sorted(mudsc.METHODS), choices=sorted(mudsc.METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "repair_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = cache_root()
    rows = []
    for key in args.archs:
        arch = default_archs()[ARCHS[key]]
        ends, loader, x_test, y_test = _pair(arch, cache)
        t0 = time.perf_counter()
        with torch.no_grad():
            for m in ends:
                for x in loader:
                    m.eval()(x)
        forward = time.perf_counter() - t0
        for method in args.methods:
            row = {"arch": arch.name, "method": method, "forward_two_models_s": forward}
            for repair in (False, True):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = mudsc.merge(ends, loader, method=method, progress=False, repair=repair)
                wall = time.perf_counter() - t0
                fresh = arch.build()
                fresh.load_state_dict(res.model.state_dict(), strict=True)
                joint = accuracies(predict(fresh, x_test), y_test)["joint"]
                row["repair" if repair else "plain"] = {"joint": joint, "wall_s": wall,
                                                         "repair_s": res.report["timing"]["repair"]}
            row["gain_points"] = 100 * (row["repair"]["joint"] - row["plain"]["joint"])
            rows.append(row)
            print(f"{arch.name:20s} {method:12s} joint {100 * row['plain']['joint']:5.1f} -> "
                  f"{100 * row['repair']['joint']:5.1f} ({row['gain_points']:+.1f}); repair "
                  f"{row['repair']['repair_s']:.2f} s of {row['repair']['wall_s']:.1f} s (two forwards "
                  f"{forward:.2f} s)", flush=True)
        gains = [r["gain_points"] for r in rows if r["arch"] == arch.name]
        print(f"{arch.name}: mean gain over methods {statistics.mean(gains):+.2f} points", flush=True)
    common.write_json(args.out, {"device": common.device_name("cpu"), "threads": args.threads,
                                 "torch": torch.__version__, "mudsc": mudsc.__version__, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
