"""Partial zipping on trained pairs: joint accuracy against the ensemble and the parameters kept, per cut depth.

Pairs (trained here on MNIST digits 0-4 and 5-9 with the demo's settings and cached in the demo's cache; no
downloads): ResNet-20x2 with BatchNorm (the demo's BN configuration at width 2; ``bn2i``: the same trained as
issue 17 says, 8 epochs on 32x32 digits), the demo's GroupNorm
ResNet-20x4 and its LayerNorm ViT (``bn4``, ``vgg``: the demo's BN ResNet-20x4 and VGG-11/4), merged on the demo's merge loader (512 images in batches of 64). For every
method and cut: the default call ``mudsc.merge(models, loader, method=m, stop_at=s)`` (BN reset, and REPAIR on the
merged layers of the models without BatchNorm, as the defaults do), the full merge (no cut) and the ensemble. The
joint accuracy (argmax over the 10 classes) on 1,000 held-out digits is computed from the mean of the branches'
softmaxes, as for the ensemble; parameters are the partial model's over the two models'. Every full merge is loaded
strictly into a fresh instance of its architecture (at the input widths; ``--reduce`` changes them) and every partial
model runs. ``--reset plain|calibrated`` passes ``reset_bn_stats=True|"calibrated"`` (:mod:`mudsc.calibrate`; the
default leaves the library's), ``--reduce r``
``reduce=r`` (a wider merged prefix, below 0.5 for two models); each row also gives the ensemble of the two
endpoints with their BatchNorm statistics reset on the merge loader, what the plain reset alone costs them.

    python benchmarks/bench_partial.py [--archs bn2 bn2i bn4 gn vgg vit] [--methods ...] [--reset auto|plain|calibrated]
        [--reduce r] [--threads 2] [--out path.json]
"""

from __future__ import annotations

import argparse
import copy
import os
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
import torch  # noqa: E402

import mudsc  # noqa: E402
from bench_repair import _pair  # noqa: E402  (the demo's endpoints, merge loader and test digits)
from mudsc.demo.endpoints import ArchConfig, cache_root, default_archs  # noqa: E402
from mudsc.demo.evaluation import accuracies, predict  # noqa: E402
from mudsc.demo.prototypes import class_logits  # noqa: E402

RESNET_CUTS = ("layer2", "layer3", "linear")
# name: (the pair's ArchConfig, cuts from shallow to deep). "bn2i" is issue 17's pair: ResNet-20x2 BN trained 8
# epochs on the 32x32 digits (the demo's ResNets see 16x16 for 2 epochs).
ARCHS = {"bn2": (lambda: default_archs(resnet_width=2)[0], RESNET_CUTS),
         "bn2i": (lambda: ArchConfig("ResNet-20x2 (BN) 32px 8ep", "resnet20", {"width": 2, "norm": "bn"}, epochs=8),
                  RESNET_CUTS),
         "bn4": (lambda: default_archs(resnet_width=4)[0], RESNET_CUTS),
         "gn": (lambda: default_archs(resnet_width=4)[1], RESNET_CUTS),
         "vgg": (lambda: default_archs(resnet_width=4)[2], ("features.22",)),
         "vit": (lambda: default_archs(resnet_width=4)[3], ("blocks.2", "blocks.3", "head"))}


def _merge(ends, loader, method, stop_at, options):
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mudsc.merge(ends, loader, method=method, progress=False, stop_at=stop_at, **options)
    return res, time.perf_counter() - t0


def _softmax_mean(partial, x):
    partial.eval()
    with torch.no_grad():
        outs = [torch.cat(parts) for parts in zip(*(partial.branch_outputs(b) for b in x.split(250)))]
    return sum(class_logits(o).softmax(1) for o in outs) / len(outs)


def _ensembles(ends, loader, x_test, y_test) -> tuple:
    """``(ensemble, ensemble of the endpoints with their BatchNorm statistics reset on the merge loader)``: joint
    accuracies; what the plain reset alone costs the two models (the same without BatchNorm)."""
    def joint(models):
        la, lb = (predict(m, x_test) for m in models)
        return accuracies((la.softmax(1) + lb.softmax(1)) / 2, y_test)["joint"]
    return joint(ends), joint([mudsc.reset_bn(copy.deepcopy(m), loader) for m in ends])


def _arch_rows(key, methods, cache, options):
    build, cuts = ARCHS[key]
    arch = build()
    ends, loader, x_test, y_test = _pair(arch, cache)
    ensemble, ensemble_reset = _ensembles(ends, loader, x_test, y_test)
    two = 2 * sum(p.numel() for p in ends[0].parameters())
    rows = []
    for method in methods:
        res, wall = _merge(ends, loader, method, None, options)
        model = res.model
        if "reduce" not in options:  # other widths do not load into the architecture; merge() ran the model
            model = arch.build()
            model.load_state_dict(res.model.state_dict(), strict=True)
        row = {"arch": arch.name, "method": method, "ensemble": ensemble, "ensemble_bn_reset": ensemble_reset,
               "full": {"joint": accuracies(predict(model, x_test), y_test)["joint"], "wall_s": wall,
                        "parameters_vs_two_models": sum(p.numel() for p in res.model.parameters()) / two}}
        for cut in cuts:
            res, wall = _merge(ends, loader, method, cut, options)
            joint = accuracies(_softmax_mean(res.model, x_test), y_test)["joint"]
            row[cut] = {"joint": joint, "wall_s": wall, "below_ensemble_points": 100 * (ensemble - joint),
                        "parameters_vs_two_models": res.report["partial"]["parameters"]["total"] / two}
        rows.append(row)
        cells = "  ".join(f"@{c} {100 * row[c]['joint']:5.1f} ({row[c]['parameters_vs_two_models']:.2f}x)"
                          for c in cuts)
        print(f"{arch.name:20s} {method:12s} full {100 * row['full']['joint']:5.1f} "
              f"({row['full']['parameters_vs_two_models']:.2f}x)  {cells}  ensemble {100 * ensemble:5.1f} (endpoints "
              f"BN-reset on the loader: {100 * ensemble_reset:5.1f})", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--methods", nargs="+", default=sorted(mudsc.METHODS), choices=sorted(mudsc.METHODS))
    p.add_argument("--reset", choices=["auto", "plain", "calibrated"], default="auto",
                   help="merge(reset_bn_stats=None) (the default: plain for a full merge, calibrated for a partial "
                        "one), True (plain) or 'calibrated' (mudsc.calibrate)")
    p.add_argument("--reduce", type=float, default=None, help="merge(reduce=...) (default: the input widths)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(common.RESULTS / "partial_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"reset_bn_stats": {"auto": None, "plain": True, "calibrated": "calibrated"}[args.reset]}
    if args.reduce is not None:
        options["reduce"] = args.reduce
    print(f"merge options: {options}; {args.threads} threads; joint accuracy in %")
    rows = [r for key in args.archs for r in _arch_rows(key, args.methods, cache_root(), options)]
    common.write_json(args.out, {"device": common.device_name("cpu"), "threads": args.threads, "options": options,
                                 "torch": torch.__version__, "mudsc": mudsc.__version__,
                                 "cuts": {k: v[1] for k, v in ARCHS.items()}, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
