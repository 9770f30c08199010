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


def merge_similarity(
    units_per_model: int,
    num_models: int = 2,
    seed: Union[int, Sequence[int]] = 0,
    dtype=np.float32,
    samples: int | None = None,
) -> np.ndarray:
    """``dtype[O, O]`` (O = N·units) Pearson correlation of all units of N synthetic models, model-major: the
    similarity a zip merge sees. Each model's units are noisy permuted mixtures of one shared unit set plus
    ``k`` latent factors common to all units (so within-model pairs are correlated too, as in real networks).

    ``samples`` defaults to ``min(2·units, 2048)``; exactly symmetric output.
    """
    rng = np.random.default_rng(seed)
    n = units_per_model
    s = samples or min(2 * n, 2048)
    g = rng.standard_normal((LATENT_K, s)).astype(np.float32)
    base = rng.standard_normal((n, LATENT_K)).astype(np.float32) @ g / np.sqrt(LATENT_K)
    base += HARD_OWN * rng.standard_normal((n, s)).astype(np.float32)
    feats = []
    for _ in range(num_models):
        own = rng.standard_normal((n, s)).astype(np.float32)
        feats.append(0.5 * base[rng.permutation(n)] + own)
    x = np.concatenate(feats).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    c = np.triu(c) + np.triu(c, 1).T
    return c.astype(dtype, copy=False)
