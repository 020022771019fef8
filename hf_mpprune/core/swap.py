"""Training-free mask refinement of one layer by prune-and-grow swaps (DSnoT-style; docs/algorithms.md
§18.7).

DSnoT (Zhang et al., 2024) swaps one pruned and one kept weight per output row at a time while that lowers a
reconstruction error, without touching the weights. Its error is the expected output shift Σ_j∈P w_j E[x_j]; here
the layer's Hessian is at hand, so the swap is judged by the exact change of the quadratic error of the masked
row, which contains that mean term and the input covariance as well. With d = w ⊙ (1 − m) (the pruned part) and
g = H d, the error is E = dᵀ H d, and regrowing j while pruning i changes it by

    ΔE = (2 w_i g_i + H_ii w_i²) − (2 w_j g_j − H_jj w_j²) − 2 w_i w_j H_ij.

Each cycle every row takes its best regrow candidate j (largest gain) and cheapest prune candidate i (smallest
cost) — for k:n both inside one group, the group with the most negative ΔE — and swaps them when ΔE < 0; a row
whose best pair does not lower E stops. So E never rises, row counts (or the k:n pattern) stay exact, and entries
that must stay pruned are never regrown. Cost per cycle: a few passes over the (out, in) matrix and one gather of
two rows of H per active row.
"""

import torch

from .admm import Budget


__all__ = ["swap_refine"]


def swap_refine(
    W: torch.Tensor, H: torch.Tensor, keep0: torch.Tensor, budget: Budget, cycles: int = 50, stats: dict | None = None
) -> torch.Tensor:
    """Refined keep mask of one layer (module docstring). W: dense (out, in) weights; H: (in, in) Hessian.

    `stats` receives `cycles` (cycles run), `swaps` (entries regrown) and `buffer_bytes`."""
    w = W.detach().double()
    h = H.double()
    hd = h.diagonal()
    m = keep0.clone()
    rows_all = torch.arange(w.shape[0])
    frozen = budget.forced if budget.forced is not None else torch.zeros_like(m)
    body = w.shape[1] if budget.pattern is None else w.shape[1] // budget.pattern.group * budget.pattern.group
    cols = torch.arange(w.shape[1])
    frozen = frozen | (cols >= body).unsqueeze(0)  # k:n tail columns are not re-chosen
    g = (w * ~m) @ h
    err = ((w * ~m) * g).sum(1)
    active = torch.ones(w.shape[0], dtype=torch.bool)
    swaps = ran = 0
    for _ in range(int(cycles)):
        ran += 1
        wg, w2 = 2.0 * w * g, hd * w.square()
        gain = (wg - w2).masked_fill(m | frozen, -torch.inf)
        cost = (wg + w2).masked_fill(~m | frozen, torch.inf)
        j, gj, i, ci = _pairs(gain, cost, budget, body)
        delta = ci - gj - 2.0 * w[rows_all, i] * w[rows_all, j] * h[i, j]
        ok = active & torch.isfinite(delta) & (delta < -1e-9 * err.clamp_min(0.0)) & (delta < 0)
        if not bool(ok.any()):
            break
        r, i, j = rows_all[ok], i[ok], j[ok]
        m[r, j], m[r, i] = True, False
        g[r] += w[r, i].unsqueeze(1) * h[i] - w[r, j].unsqueeze(1) * h[j]
        err[r] += delta[ok]
        swaps += len(r)
        active = ok
    if stats is not None:
        stats["cycles"], stats["swaps"] = ran, swaps
        stats["buffer_bytes"] = 4 * w.numel() * w.element_size()  # w, g and the gain / cost of one cycle
    return m


def _pairs(gain: torch.Tensor, cost: torch.Tensor, budget: Budget, body: int):
    """Per row: (regrow column, its gain, prune column, its cost); for k:n both in the group whose pair, without
    the cross term, lowers the error most."""
    if budget.pattern is None:
        gj, j = gain.max(1)
        ci, i = cost.min(1)
        return j, gj, i, ci
    n = budget.pattern.group
    rows = gain.shape[0]
    gg, jg = gain[:, :body].reshape(rows, -1, n).max(2)
    cg, ig = cost[:, :body].reshape(rows, -1, n).min(2)
    best = (cg - gg).nan_to_num(nan=torch.inf).argmin(1, keepdim=True)  # inf − inf (no candidate) is nan
    base = best.squeeze(1) * n
    j = base + jg.gather(1, best).squeeze(1)
    i = base + ig.gather(1, best).squeeze(1)
    return j, gg.gather(1, best).squeeze(1), i, cg.gather(1, best).squeeze(1)
