"""The float64 oracle of the statistics and similarity tests, computed independently of the code under test."""

from __future__ import annotations

import numpy as np


def truth(x: np.ndarray, eps: float = 1e-7, cos_eps: float = 1e-8) -> dict:
    """Mean, population covariance, correlation (zero-variance: row/col 0, diag 1) and cosine in float64."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / n
    zero = np.ptp(x, axis=0) == 0
    cov[zero, :] = 0.0
    cov[:, zero] = 0.0
    sigma = np.sqrt(np.diag(cov))
    corr = cov / np.maximum(np.outer(sigma, sigma), eps)
    corr[zero, :] = 0.0
    corr[:, zero] = 0.0
    corr[zero, zero] = 1.0
    raw = x.T @ x
    norm = np.maximum(np.sqrt(np.diag(raw)), cos_eps)
    cos = raw / np.outer(norm, norm)
    return dict(mean=mean, cov=cov, corr=corr, zero=np.flatnonzero(zero), cos=cos, n=n)
