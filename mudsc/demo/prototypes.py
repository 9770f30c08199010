"""The demo's classification head: fixed, shared class prototypes (the paper's protocol).

ZipIt! and MuDSC score their merged models against a fixed class embedding shared by all endpoints (CLIP text
embeddings of the class names), so that "joint accuracy" asks whether the merged features still point at the right
class among all of them. The demo does the same without CLIP: every endpoint outputs an
:data:`EMBED_DIM`-dimensional embedding ``e`` (its last ``Linear`` has that many outputs), scored against 10
unit-norm prototypes ``P: float32[10, EMBED_DIM]`` drawn once from a seeded normal distribution:

    logits = LOGIT_SCALE · (e / |e|) · Pᵀ

(cosine similarity times a fixed scale; our reading of "unit-norm prototypes with logit scale 10"). An endpoint
is trained on its own 5 classes with the cross-entropy over those 5 prototypes only (:func:`task_loss`), so it
never sees the other task's classes, and the head is not a parameter: merging cannot move it, and all models
share it by construction.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EMBED_DIM = 64
NUM_CLASSES = 10
LOGIT_SCALE = 10.0
PROTOTYPE_SEED = 0

__all__ = ["EMBED_DIM", "LOGIT_SCALE", "NUM_CLASSES", "PROTOTYPE_SEED", "class_logits", "class_prototypes",
           "task_loss"]

_CACHE = {}


def class_prototypes() -> torch.Tensor:
    """``float32[10, EMBED_DIM]``: the fixed unit-norm class prototypes (seeded normal draws, rows normalised)."""
    if "p" not in _CACHE:
        gen = torch.Generator().manual_seed(PROTOTYPE_SEED)
        _CACHE["p"] = F.normalize(torch.randn(NUM_CLASSES, EMBED_DIM, generator=gen), dim=1)
    return _CACHE["p"].clone()


def class_logits(embeddings: torch.Tensor) -> torch.Tensor:
    """``float32[n, 10]``: ``LOGIT_SCALE`` times the cosine of each embedding (``[n, EMBED_DIM]``) to each prototype."""
    if embeddings.dim() != 2 or embeddings.shape[1] != EMBED_DIM:
        raise ValueError(f"embeddings must be [n, {EMBED_DIM}] (the demo models' outputs), got "
                         f"{tuple(embeddings.shape)}")
    protos = class_prototypes().to(embeddings.device, torch.float32)
    return LOGIT_SCALE * F.normalize(embeddings.float(), dim=1) @ protos.T


def task_loss(embeddings: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Cross-entropy of the embeddings against the prototypes of ``classes`` only (an endpoint's own task);
    ``labels`` are digits in ``classes``."""
    classes = list(classes)
    position = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
    position[classes] = torch.arange(len(classes))
    target = position.to(labels.device)[labels]
    if bool((target < 0).any()):
        raise ValueError(f"labels outside the task's classes {classes}")
    return F.cross_entropy(class_logits(embeddings)[:, classes], target)
