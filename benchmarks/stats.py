"""Plain statistics for the benchmark tables (numpy only, no hf_mpprune): retrieval ranks, paired bootstrap
confidence intervals over evaluation items, and a Markdown table writer. Any benchmark (text or vision) can reuse
them: give each cell a per-item array (draws averaged per item) and compare it to its control's array.
"""

import numpy as np


__all__ = [
    "bootstrap_diff",
    "fmt_ci",
    "markdown_table",
    "mean_reciprocal_rank",
    "recall_at_1",
    "retrieval_ranks",
    "row_cosines",
]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of `a` with row i of `b`, (n,)."""
    return np.sum(_unit(a) * _unit(b), 1)


def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of candidate i among ALL candidates for query i, by cosine similarity; ties count against
    the true candidate (rank = number of candidates scoring at least as high as it). Shapes (n, d), (n, d)."""
    q, c = _unit(queries), _unit(candidates)
    if q.shape != c.shape:
        raise ValueError(f"queries {q.shape} and candidates {c.shape} must pair up one to one")
    sims = q @ c.T
    return (sims >= np.diag(sims)[:, None]).sum(1)


def recall_at_1(ranks: np.ndarray) -> np.ndarray:
    """Per query: 1.0 when the true candidate ranks first, else 0.0."""
    return (np.asarray(ranks) == 1).astype(np.float64)


def mean_reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """Per query reciprocal rank 1 / rank (its mean is the MRR)."""
    return 1.0 / np.asarray(ranks, dtype=np.float64)


def bootstrap_diff(
    x: np.ndarray, y: np.ndarray, *, denom: np.ndarray | None = None, resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict:  # fmt: skip
    """Paired bootstrap over items of mean(x) − mean(y) (or mean(x)/mean(d) − mean(y)/mean(d) with `denom` d, e.g.
    retention relative to the dense model): every resample draws the same items for x, y and d. Returns the point
    estimate on all items, the percentile interval at `level` and the settings. x, y, d: per-item arrays (n,)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    d = None if denom is None else np.asarray(denom, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or (d is not None and d.shape != x.shape) or x.size == 0:
        raise ValueError(f"paired per-item arrays of one length are needed, got {x.shape}, {y.shape}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples={resamples} must be >= 1 and level={level} in (0, 1)")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    diffs = x[idx].mean(1) - y[idx].mean(1)
    point = x.mean() - y.mean()
    if d is not None:
        diffs = diffs / d[idx].mean(1)
        point = point / d.mean()
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(point), "lo": float(lo), "hi": float(hi), "level": level, "resamples": resamples,
            "seed": seed, "items": int(x.size)}  # fmt: skip


def fmt_ci(ci: dict, digits: int = 3) -> str:
    """'+0.016 [+0.012, +0.020]' from a `bootstrap_diff` result."""
    return f"{ci['diff']:+.{digits}f} [{ci['lo']:+.{digits}f}, {ci['hi']:+.{digits}f}]"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
