"""Small statistics for the benchmark tables (pure numpy, no model)."""

import numpy as np


def paired_bootstrap_ci(a, b, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-item differences a − b and its percentile bootstrap CI: `n` resamples of the items (with
    replacement, the same items for a and b), the (1 − level)/2 and (1 + level)/2 quantiles of the resampled means.

    `a`, `b`: per-item scores of two methods on the same evaluation items (e.g. 0/1 correctness), equal length.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"need two equal-length 1-D arrays of per-item scores, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
