"""Percentile-bootstrap intervals over problems × seeds (pure numpy).

Scores are a `[S, P]` matrix (seed s, problem p: 0/1 for greedy pass@1, the unbiased per-problem
pass@k estimate for samples). One resample draws S seeds and P problems with replacement,
independently, and takes the mean of the selected `[S, P]` block; the interval is the
(α/2, 1 − α/2) quantiles of `n_resamples` such means (np.quantile, linear). A paired comparison
resamples the per-(seed, problem) difference `a − b`: the same seeds and problems for both arms.
"""

from __future__ import annotations

import numpy as np

CHUNK = 256  # resamples per vectorised block (memory: CHUNK × S × P)


def _matrix(scores) -> np.ndarray:
    x = np.asarray(scores, np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"bootstrap: need a non-empty [seeds, problems] matrix, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("bootstrap: scores must be finite")
    return x


def bootstrap_means(scores, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """`[n_resamples]` means of `scores[S, P]` (or `[P]`) over resampled seeds × problems."""
    x = _matrix(scores)
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    s, p = x.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    for lo in range(0, n_resamples, CHUNK):
        b = min(CHUNK, n_resamples - lo)
        si = rng.integers(0, s, (b, s))
        pi = rng.integers(0, p, (b, p))
        out[lo : lo + b] = x[si[:, :, None], pi[:, None, :]].mean(axis=(1, 2))
    return out


def percentile_interval(samples, confidence: float = 0.95) -> list[float]:
    """[lo, hi] = the (1 − c)/2 and (1 + c)/2 quantiles of `samples`."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = (1 - confidence) / 2
    lo, hi = np.quantile(np.asarray(samples, np.float64), [a, 1 - a])
    return [float(lo), float(hi)]


def bootstrap_ci(scores, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """{"mean": mean of scores, "ci95": [lo, hi]} (percentile bootstrap, seeds × problems)."""
    x = _matrix(scores)
    return {
        "mean": float(x.mean()),
        "ci95": percentile_interval(bootstrap_means(x, n_resamples, seed), confidence),
    }


def paired_bootstrap_ci(
    a, b, n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict:
    """{"delta": mean(a) − mean(b), "ci95"}: both arms on the same resampled seeds and problems
    (a and b are `[S, P]` with matching rows = seeds and columns = problems)."""
    xa, xb = _matrix(a), _matrix(b)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap: shapes differ {xa.shape} vs {xb.shape}")
    r = bootstrap_ci(xa - xb, n_resamples, seed, confidence)
    return {"delta": r["mean"], "ci95": r["ci95"]}
