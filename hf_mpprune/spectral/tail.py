"""Power-law tail exponent of an empirical spectral density: PL_Alpha_Hill, as AlphaPruning uses it
(docs/algorithms.md §18.6). Pure float64 numpy on eigenvalues; no model, no files.

The ESD of a weight matrix W is its eigenvalues λ = σ² (squared singular values). Above a cut-off x_min the tail is
modelled as p(λ) ∝ λ^(−α); the Hill (maximum-likelihood) estimate over the n eigenvalues λ_i ≥ x_min is

    α = 1 + n / Σ_i log(λ_i / x_min)                (the cut-off itself counts in n, contributing log 1 = 0).

Two cut-off rules:

* `"median"`: x_min = the eigenvalue at index ⌊N/2⌋ of the ascending ESD (AlphaPruning's rule for vision models).
* `"peak"` (the "fix-finger" search, their rule for language models): histogram log10 λ in 100 equal bins, take the
  left edge p of the fullest bin; every eigenvalue x up to 1.5·p that is not below log10(0.95·p) is a candidate
  x_min (the reference code compares the eigenvalue with that logarithm; we keep its window so the numbers match);
  each candidate's fit is scored by the Kolmogorov–Smirnov distance
  D = max_j |1 − (λ_j / x_min)^(1−α) − j/n| over the tail (λ_j ascending, j = 0 … n−1), and the candidate with the
  smallest D wins. Candidates whose α ≤ 1 are not scored; if none is left, the median rule is used.

Zero eigenvalues (rank-deficient matrices), where the logarithm is undefined, are dropped first.

This is not `spectral.fit.hill_alpha` (that one fixes the tail at the top 20 eigenvalues, for SEB's signal).
"""

import numpy as np


__all__ = ["XMIN_RULES", "pl_alpha_hill"]

XMIN_RULES = ("peak", "median")
_BINS = 100


def _alpha_at(log_ev: np.ndarray, i: int) -> float:
    """Hill estimate with the cut-off at index i of the ascending log-eigenvalues."""
    n = len(log_ev) - i
    denom = float(log_ev[i:].sum() - n * log_ev[i])
    return 1.0 + n / denom if denom > 0 else float("inf")


def _ks_distance(ev: np.ndarray, i: int, alpha: float) -> float:
    tail = ev[i:]
    n = len(tail)
    return float(np.max(np.abs(1.0 - (tail / ev[i]) ** (1.0 - alpha) - np.arange(n) / n)))


def pl_alpha_hill(eigenvalues, xmin: str = "peak") -> tuple[float, float, float]:
    """(α, x_min, KS distance D) of the ESD `eigenvalues` (any order, ≥ 0) under the cut-off rule `xmin`.

    Raises `ValueError` for an unknown rule or fewer than 2 positive eigenvalues.
    """
    if xmin not in XMIN_RULES:
        raise ValueError(f"xmin={xmin!r} must be one of {XMIN_RULES}")
    ev = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    ev = ev[ev > 0]
    if len(ev) < 2:
        raise ValueError(f"need at least 2 positive eigenvalues, got {len(ev)}")
    log_ev = np.log(ev)
    mid = len(ev) // 2
    best = (_alpha_at(log_ev, mid), mid)
    if xmin == "peak":
        counts, edges = np.histogram(np.log10(ev), bins=_BINS)
        peak = 10.0 ** edges[int(np.argmax(counts))]
        lo, hi = np.log10(0.95 * peak), 1.5 * peak
        scored = []
        for i in np.nonzero((ev[:-1] >= lo) & (ev[:-1] <= hi))[0]:
            a = _alpha_at(log_ev, int(i))
            if 1.0 < a < float("inf"):
                scored.append((_ks_distance(ev, int(i), a), int(i), a))
        if scored:
            _, i, a = min(scored)  # smallest D; ties: the lower cut-off
            best = (a, i)
    alpha, i = best
    return float(alpha), float(ev[i]), _ks_distance(ev, i, alpha)
