"""Hashes of the merge plans of ``bench_merge --quick`` and ``demo --quick``: the behaviour-preservation check of a
refactoring. Run it before and after; the lines must be identical.

- bench_merge's quick cases (ResNet-20x1 on 64 images, a one-block ViT of width 96 on 32 images), every method,
  both backends, ``max_sweeps=3`` as bench_merge --quick runs them;
- the demo's quick run (``python -m mudsc demo --quick --recompute --cache-dir <fresh folder>``): every plan it saved.

A plan's hash covers, per group in name order, the group name, ``num_outputs`` and the int64 labels (not the
file bytes: the metadata holds versions and timings). Only the public API is used, so the script outlives the
modules it checks.

    python scripts/plan_hashes.py [--skip-demo] [--out hashes.txt]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mudsc  # noqa: E402


def plan_hash(plan) -> str:
    """sha256 over (group name, num_outputs, labels) of every group, in name order."""
    h = hashlib.sha256()
    for name in sorted(plan.maps):
        r = plan.maps[name]
        h.update(name.encode())
        h.update(int(r.num_outputs).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(np.asarray(r.labels, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def bench_cases():
    """bench_merge's quick cases, built the way it builds them."""
    cases = {
        "resnet20x1": (lambda: mudsc.models.resnet20(width=1, num_classes=10), 64),
        "vit96x1": (lambda: mudsc.models.vit(depth=1, dim=96, heads=3, patch=4, image_size=32), 32),
    }
    for name, (build, images) in cases.items():
        models = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            models.append(build().eval())
        x = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64, shuffle=False)
        yield name, models, loader, x[:2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    lines = []
    for case, models, loader, example in bench_cases():
        spec = mudsc.trace(models[0], example)
        for method in sorted(mudsc.METHODS):
            for backend in ("native", "reference"):
                res = mudsc.merge(models, loader, method=method, spec=spec, backend=backend, progress=False,
                                  reset_bn_stats=False, max_sweeps=3)
                lines.append(f"bench {case} {method} {backend} {plan_hash(res.plan)}")
                print(lines[-1], flush=True)
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as cache:
            subprocess.run([sys.executable, "-m", "mudsc", "demo", "--quick", "--recompute", "--cache-dir", cache],
                           check=True, stdout=subprocess.DEVNULL)
            for path in sorted(Path(cache).rglob("*.safetensors")):
                plan = mudsc.MergePlan.load(path)
                lines.append(f"demo {path.stem} {plan_hash(plan)}")
                print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
