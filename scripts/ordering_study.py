"""Why the demo's method ordering (MuDSC >= ZipIt >= Re-Basin >= avg) fails for some architectures.

Loads (or trains) the demo's cached endpoints and, per architecture:

- sweeps MuDSC-zip's ``balance`` (0 = activation only, as ZipIt but with the descent; 1 = weights only) and
  prints joint / per-task accuracy and the descent's merge value (the objective it maximises);
- repeats zipit and mudsc-zip with different merge-data subsets (4 disjoint sets of 512 images) to show how
  much the joint accuracy moves with the data alone.

    python scripts/ordering_study.py [--archs resnet vit vgg] [--balances 0 0.1 0.3 0.5 0.7 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mudsc  # noqa: E402
from mudsc import demo  # noqa: E402
from mudsc.demo import mnist  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="*", default=["resnet", "gn", "vit", "vgg"])
    p.add_argument("--balances", nargs="*", type=float, default=[0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
    p.add_argument("--subsets", type=int, default=4)
    args = p.parse_args(argv)
    labels = mnist.load_digits(28)[1]
    train_idx, test_idx = mnist.stratified_split(labels, test_per_class=100)
    task_idx = [mnist.task_subset(labels, train_idx, t) for t in range(2)]
    y_test = labels[test_idx]
    pool = np.random.default_rng(0).permutation(np.concatenate(task_idx))
    defaults = demo.default_archs()
    picked = {"resnet": defaults[0], "gn": defaults[1], "vgg": defaults[2], "vit": defaults[3]}
    print(f"mudsc {mudsc.__version__}; test set {len(y_test)} images; accuracies in %")
    for key in args.archs:
        arch = picked[key]
        images = mnist.load_digits(arch.image_size)[0]
        x_test = images[test_idx]
        loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[pool[s * 512:(s + 1) * 512]]),
                                               batch_size=64) for s in range(args.subsets)]
        ends = [demo.load_or_train(arch, images[task_idx[t]], labels[task_idx[t]], seed, t, demo.cache_root(),
                                   print)[0] for t, seed in ((0, 1), (1, 2))]
        spec = mudsc.trace(ends[0], images[:2])
        stats = [mudsc.collect_stats(ends, spec, ld, progress=False) for ld in loaders]
        print(f"\n== {arch.name}: mudsc-zip balance sweep (merge data: subset 0)")
        print("| balance | joint | task A | task B | merge value | sweeps |")
        print("|---:|---:|---:|---:|---:|---:|")
        for b in args.balances:
            plan = mudsc.match(ends, spec, "mudsc-zip", stats=stats[0], balance=b, progress=False)
            model = plan.apply(ends)
            model = mudsc.reset_bn(model, loaders[0])
            acc = demo.accuracies(demo.predict(model, x_test), y_test)
            print(f"| {b:g} | {100 * acc['joint']:.1f} | {100 * acc['task_A']:.1f} | {100 * acc['task_B']:.1f} | "
                  f"{plan.info['merge_value']:.4f} | {plan.info['sweeps']} |", flush=True)
        print(f"\n{arch.name}: joint accuracy per merge-data subset")
        print("| method | " + " | ".join(f"subset {s}" for s in range(args.subsets)) + " | mean | spread |")
        print("|---|" + "---:|" * (args.subsets + 2))
        for method in ("zipit", "mudsc-zip", "rebasin", "avg"):
            accs = []
            for s, st in enumerate(stats):
                plan = mudsc.match(ends, spec, method, stats=st, progress=False)
                model = mudsc.reset_bn(plan.apply(ends), loaders[s])
                accs.append(100 * demo.accuracies(demo.predict(model, x_test), y_test)["joint"])
            print(f"| {method} | " + " | ".join(f"{a:.1f}" for a in accs)
                  + f" | {np.mean(accs):.1f} | {max(accs) - min(accs):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
