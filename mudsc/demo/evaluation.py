"""What the demo measures: model outputs, accuracies on the two tasks, the method ordering, plan agreement.

- :func:`accuracies`: joint accuracy (argmax over all 10 classes) and per-task accuracy (argmax over the 5
  classes of the sample's own task, :data:`mudsc.demo.mnist.TASKS`) and their mean.
- :func:`ordering_check`: whether MuDSC (best of its two variants) >= ZipIt >= Re-Basin >= averaging holds.
- :func:`differing_groups`: the groups whose unit labels differ between two merge plans.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
import torch.nn as nn

from . import mnist
from .prototypes import class_logits

__all__ = ["accuracies", "differing_groups", "ordering_check", "predict"]


@torch.no_grad()
def predict(model_or_fn, images: torch.Tensor, batch_size: int = 250, head: bool = True) -> torch.Tensor:
    """``float32[n, 10]`` class scores of a model (eval mode) or of any callable, in batches: with ``head`` the
    outputs are embeddings scored by the prototype head (:func:`mudsc.demo.prototypes.class_logits`), else they
    are class scores already (a callable that averages branch softmaxes)."""
    if isinstance(model_or_fn, nn.Module):
        model_or_fn.eval()
    outs = [model_or_fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat([class_logits(o) if head else o for o in outs])


def accuracies(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Joint accuracy (argmax over all classes) and per-task accuracy (argmax over the sample's task classes)."""
    out = {"joint": float((logits.argmax(1) == labels).float().mean())}
    for t, classes in enumerate(mnist.TASKS):
        mask = torch.isin(labels, torch.tensor(classes))
        sub = logits[mask][:, list(classes)]
        out["task_" + "AB"[t]] = float((sub.argmax(1) + classes[0] == labels[mask]).float().mean())
    out["task_avg"] = (out["task_A"] + out["task_B"]) / 2
    return out


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


def differing_groups(a, b) -> List[str]:
    """Sorted names of the groups whose labels differ between plans ``a`` and ``b`` (or that only one has).

    ``a`` and ``b`` are :class:`mudsc.MergePlan` (anything with ``maps: {group: object with .labels}``).
    """
    only_one = set(a.maps) ^ set(b.maps)
    unequal = {k for k in set(a.maps) & set(b.maps)
               if not np.array_equal(np.asarray(a.maps[k].labels), np.asarray(b.maps[k].labels))}
    return sorted(only_one | unequal)
