"""What more merge data changes, on a trained pair: the study behind the adaptive sample count (mudsc/sampling.py).

For the MNIST ResNet-20x2 BN pair of ``benchmarks/bench_samples.py`` (4,000 merge images in batches of 250) and
``b`` = 1, 2, 4, ... batches of the statistics pass, per zipit group (activation-only zip on the correlation of
the first ``b`` batches):

- the fraction of units whose merge partners differ from the full pass's map ("labels changed");
- the regret against the full pass: the full pass's map minus the map of ``b`` batches, both scored by
  :func:`mudsc.sampling.pair_value` on the full pass's correlation; and the same across one doubling (maps of
  ``b`` and ``2b`` batches scored on the correlation of ``2b``), which is what the stopping rule can see;
- the joint accuracy of ``merge(..., method="zipit", max_batches=b, adaptive=False)`` (statistics and BatchNorm
  reset on ``b`` batches) on the 1,000 held-out digits.

    python scripts/sample_study.py [--image-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import mudsc  # noqa: E402
from mudsc.collect import collect_stats  # noqa: E402
from mudsc.demo.endpoints import cache_root  # noqa: E402
from mudsc.demo.evaluation import accuracies, predict  # noqa: E402
from mudsc.methods.coordinates import solve_group  # noqa: E402
from mudsc.sampling import pair_value  # noqa: E402

import bench_samples  # noqa: E402


def _partners(labels: np.ndarray) -> list:
    """Per unit, the sorted tuple of the units that share its label."""
    members = {}
    for u, c in enumerate(labels.tolist()):
        members.setdefault(c, []).append(u)
    return [tuple(members[c]) for c in labels.tolist()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=16, choices=(16, 32))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    (_, arch, images, batch), = bench_samples._pairs(["resnet20x2"], args.image_size)
    ends, loader, x_test, y_test = bench_samples._endpoints(arch, cache_root(), images, batch)
    spec = mudsc.trace(ends[0], x_test[:2])
    groups = {g.name: g for g in spec.groups if g.taps}
    counts = [b for b in (1, 2, 4, 8, 16, 32, 64) if b < len(loader)] + [len(loader)]
    sims, maps = {}, {}
    for b in counts:
        stats = collect_stats(ends, spec, loader, max_batches=b, progress=False)
        sims[b] = {g: stats.correlation(g).numpy() for g in groups}
        maps[b] = {g: np.asarray(solve_group(groups[g], s, 2, "zip", 0.5, 0.5, 1.0, "native").labels)
                   for g, s in sims[b].items()}
    full = counts[-1]
    print(f"{len(groups)} groups, {len(loader)} batches of {batch}; per b: max / mean over groups")
    for i, b in enumerate(counts):
        changed = [np.mean([x != y for x, y in zip(_partners(maps[b][g]), _partners(maps[full][g]))]) for g in groups]
        regret = [pair_value(maps[full][g], sims[full][g]) - pair_value(maps[b][g], sims[full][g]) for g in groups]
        line = (f"b={b:3d}  labels changed {max(changed):.3f} / {np.mean(changed):.3f}  regret vs full "
                f"{max(regret):+.4f} / {np.mean(regret):+.4f}")
        if i + 1 < len(counts):
            nb = counts[i + 1]
            step = [pair_value(maps[nb][g], sims[nb][g]) - pair_value(maps[b][g], sims[nb][g]) for g in groups]
            line += f"  regret across the next step (b={nb}) {max(step):+.4f} / {np.mean(step):+.4f}"
        res = mudsc.merge(ends, loader, method="zipit", max_batches=b, adaptive=False, progress=False)
        line += f"  joint {100 * accuracies(predict(res.model, x_test), y_test)['joint']:.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
