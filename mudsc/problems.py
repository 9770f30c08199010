"""Synthetic matching problems shaped like the ones merging produces, for demos, tests and benchmarks.

``correlation_problem`` builds the Pearson correlation between the units of two "models" over shared samples:

- ``"easy"``: model B's units are a noisy permuted copy of model A's (``B = A[perm] + 0.1·noise``); the row-wise
  argmax is already optimal.
- ``"hard"``: units share ``k = 8`` latent factors and the signal is weak:
  ``A = L·G/√k + 0.6·E``, ``B = 0.15·A[perm] + 0.9·noise``; the row-wise argmax is wrong for 30-50% of rows,
  as between real networks (column-wise it is nearly right from n ≈ 2048 on, which JV's column reduction
  exploits).
- ``"hard-sym"``: as ``"hard"`` but B's noise shares the latent factors too
  (``noise = L₂·G/√k + 0.6·E₂``), so row- and column-wise argmaxes are both wrong: the hardest flavour.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

FLAVOURS = ("easy", "hard", "hard-sym")
LATENT_K = 8
HARD_SIGNAL, HARD_NOISE, HARD_OWN = 0.15, 0.9, 0.6
EASY_NOISE = 0.1


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b`` (float64; ``a``/``b`` are overwritten)."""
    for x in (a, b):
        x -= x.mean(axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return a @ b.T


def correlation_problem(
    n: int,
    flavour: str = "hard",
    seed: Union[int, Sequence[int]] = 0,
    dtype=np.float32,
    samples: int | None = None,
) -> np.ndarray:
    """``dtype[n, n]`` correlation between the units of two synthetic models (maximize to match them).

    Args:
        n: units per model.
        flavour: ``"easy"``, ``"hard"`` or ``"hard-sym"`` (see the module docstring).
        seed: anything ``numpy.random.default_rng`` accepts.
        dtype: output dtype (computed in float64).
        samples: columns of the feature matrices; default ``n``.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    rng = np.random.default_rng(seed)
    s = samples or n
    perm = rng.permutation(n)
    if flavour == "easy":
        a = rng.standard_normal((n, s))
        b = a[perm] + EASY_NOISE * rng.standard_normal((n, s))
        return _row_correlation(a, b).astype(dtype, copy=False)
    k = LATENT_K
    g = rng.standard_normal((k, s))
    a = rng.standard_normal((n, k)) @ g / np.sqrt(k) + HARD_OWN * rng.standard_normal((n, s))
    if flavour == "hard":
        noise = rng.standard_normal((n, s))
    else:
        noise = rng.standard_normal((n, k)) @ g / np.sqrt(k) + HARD_OWN * rng.standard_normal((n, s))
    b = HARD_SIGNAL * a[perm] + HARD_NOISE * noise
    return _row_correlation(a, b).astype(dtype, copy=False)
