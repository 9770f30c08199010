"""Synthetic matching problems shaped like the ones merging produces, for demos, tests and benchmarks.

``correlation_problem`` builds the Pearson correlation between the units of two "models" over shared samples:

- ``"easy"``: model B's units are a noisy permuted copy of model A's; the row-wise argmax is already optimal.
- ``"hard"``: units share ``k`` latent factors and the signal is weak:
  ``A = L·G/√k + 0.6·E``, ``B = 0.15·A[perm] + 0.9·noise``; the row-wise argmax is wrong for 30-50% of rows,
  as between real networks (column-wise it is nearly right, which JV's column reduction exploits).
- ``"hard-sym"``: as ``"hard"`` but B's noise shares the latent factors too
  (``0.9·(L₂·G/√k + 0.6·E₂)``), so both row- and column-wise argmaxes are wrong: the hardest flavour.
"""

from __future__ import annotations

import numpy as np

FLAVOURS = ("easy", "hard", "hard-sym")


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / x.std(axis=1, keepdims=True)


def correlation_problem(
    n: int, flavour: str = "hard", seed: int = 0, dtype=np.float32, samples: int | None = None, k: int = 8
) -> np.ndarray:
    """``float[n, n]`` correlation between the rows of two feature matrices (maximize to match).

    ``samples`` defaults to ``n`` (columns of the feature matrices).
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    rng = np.random.default_rng(seed)
    s = samples or n
    perm = rng.permutation(n)
    if flavour == "easy":
        a = rng.standard_normal((n, s))
        b = a[perm] + 0.3 * rng.standard_normal((n, s))
    else:
        g = rng.standard_normal((k, s))
        a = rng.standard_normal((n, k)) @ g / np.sqrt(k) + 0.6 * rng.standard_normal((n, s))
        if flavour == "hard":
            noise = rng.standard_normal((n, s))
        else:
            noise = rng.standard_normal((n, k)) @ g / np.sqrt(k) + 0.6 * rng.standard_normal((n, s))
        b = 0.15 * a[perm] + 0.9 * noise
    return (_standardize(a) @ _standardize(b).T / s).astype(dtype)
