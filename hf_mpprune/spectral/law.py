"""The Marchenko–Pastur law for γ = p/n ≤ 1: edges, density, closed-form CDF, quantiles, and the Tracy–Widom
quantile used for the soft edge (docs/algorithms.md, "The MP law")."""

import math

import numpy as np
from scipy import stats
from scipy.optimize import elementwise


# Quantiles of the real (Dyson index 1) Tracy–Widom law at level 1-β, from the paper's §2.4 table
# (computed there with the `TracyWidom` package the paper's code imports). Keyed by β.
_TW1_QUANTILE = {0.8: -2.28328, 0.5: -1.26862, 0.9: -2.78264, 0.1: 0.45012, 0.05: 0.97930}


def tw1_quantile(beta: float) -> float:
    """t = F_TW1^{-1}(1-β). Tabulated values for the documented β; otherwise Chiani's (2014) shifted-gamma
    approximation of TW1 (k=46.446, θ=0.186054, shift 9.84801), accurate to ~1e-2 in the bulk of the law."""
    for b, t in _TW1_QUANTILE.items():
        if abs(beta - b) < 1e-12:
            return t
    return float(stats.gamma.ppf(1.0 - beta, a=46.446, scale=0.186054) - 9.84801)


# ---- the MP law (γ = p/n ≤ 1) -------------------------------------------------------------------------------
def mp_edges(gamma: float, sigma2: float = 1.0) -> tuple[float, float]:
    return sigma2 * (1 - math.sqrt(gamma)) ** 2, sigma2 * (1 + math.sqrt(gamma)) ** 2


def mp_pdf(x, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """Density of eigenvalues of W Wᵀ/n (no atom since γ ≤ 1)."""
    x = np.asarray(x, dtype=np.float64)
    lm, lp = mp_edges(gamma, sigma2)
    inside = (x > lm) & (x < lp)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((lp - xi) * (xi - lm)) / (2 * np.pi * gamma * sigma2 * xi)
    return out


def mp_cdf(x, gamma: float, sigma2: float = 1.0, compat: str = "exact") -> np.ndarray:
    """Closed-form MP CDF (docs/algorithms.md; paper §2.1). `compat="repo"` returns 0 at/above the edge (the paper code's bug)."""
    x = np.asarray(x, dtype=np.float64)
    lm, lp = mp_edges(gamma, sigma2)
    out = np.where(x >= lp, 0.0 if compat == "repo" else 1.0, 0.0)
    inside = (x > lm) & (x < lp)
    xi = x[inside]
    r = np.sqrt((lp - xi) / (xi - lm))
    f = np.pi * gamma + np.sqrt((lp - xi) * (xi - lm)) / sigma2 - (1 + gamma) * np.arctan((r * r - 1) / (2 * r))
    if gamma != 1.0:
        f += (1 - gamma) * np.arctan((lm * r * r - lp) / (2 * sigma2 * (1 - gamma) * r))
    out[inside] = f / (2 * np.pi * gamma)
    return out


def mp_quantile(levels, gamma: float, sigma2: float = 1.0) -> np.ndarray:
    """Lower-tail MP quantiles, solved with scipy's vectorised bracketing root finder on [λ₋, λ₊]."""
    levels = np.asarray(levels, dtype=np.float64)
    lm, lp = mp_edges(gamma, sigma2)
    out = np.where(levels <= 0, lm, lp)
    mid = (levels > 0) & (levels < 1)
    if mid.any():
        lv = levels[mid]
        res = elementwise.find_root(
            lambda x, lv: mp_cdf(x, gamma, sigma2) - lv,
            (np.full_like(lv, lm), np.full_like(lv, lp)),
            args=(lv,),
            tolerances={"xatol": 1e-14 * sigma2, "xrtol": 4 * np.finfo(float).eps},
        )
        out[mid] = res.x
    return out
