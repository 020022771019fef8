"""CAST pattern search (docs/algorithms.md §8.4–8.7), pure functions on float64 tensors.

Shapes: `u (M, G, n)` source tuples (after free restoration); `C (G, n, n)` per-group uncentred second moments of
the layer input; `X (R, G, n)` calibration rows (ℓ∞ cost only); candidate keep patterns `(P, n)` bool; masks
`(M, G, n)` bool (True = kept). Costs use the removed tuple `r = (1 − m) ⊙ u`.
"""

import torch


PRIOR_SCALES = ("repo", "paper")
COST_FORMS = ("l2", "linf")
_BYTES = 2**26  # working-set target per chunk (64 MiB)


def l2_pattern_costs(u: torch.Tensor, C: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """`(M, G, P)`: rᵀ C_g r for every cell and candidate, as one GEMM with Q = diag(u) C_g diag(u)."""
    m, g, n = u.shape
    q = (u.unsqueeze(-1) * C.unsqueeze(0) * u.unsqueeze(-2)).reshape(m * g, n * n)
    r = (~cand).to(u.dtype)
    rr = (r.unsqueeze(2) * r.unsqueeze(1)).reshape(len(cand), n * n)
    return (q @ rr.T).reshape(m, g, len(cand))


def l2_cell_costs(u: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`(M, G)`: rᵀ C_g r for one pattern per cell."""
    r = torch.where(keep, 0.0, u)
    return torch.einsum("mgi,gij,mgj->mg", r, C, r)


def linf_pattern_costs(u: torch.Tensor, X: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """`(M, G, P)`: max over calibration rows of (r · h_g)² (literal ℓ∞ flavour; slow, for small layers)."""
    out = [linf_cell_costs(u, X, p.expand_as(u)) for p in cand]
    return torch.stack(out, -1)


def linf_cell_costs(u: torch.Tensor, X: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    r = torch.where(keep, 0.0, u)
    return torch.einsum("mgt,xgt->mgx", r, X).square().amax(-1)


def hamming(src: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    """`(M, G, P)`: |m − s|₁ = k + |s| − 2 m·s for binary m (|m| = k) and source keep mask s."""
    s = src.to(torch.float64)
    return k + s.sum(-1, keepdim=True) - 2.0 * (s @ cand.to(torch.float64).T)


def paper_scale(u: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Paper prior scale c̄_g = mean over rows and slots of u² · E[h_slot²], one scalar per group, `(G,)`."""
    return (u.square() * torch.diagonal(C, dim1=-2, dim2=-1).unsqueeze(0)).mean((0, 2))


def search(
    u: torch.Tensor, stat: torch.Tensor, cand: torch.Tensor, init_keep: torch.Tensor, *, cost_form: str = "l2",
    src: torch.Tensor | None = None, alpha_ser: float = 0.0, prior_scale: str = "repo", layer_factor: float = 1.0,
    pattern_chunk: int = 256,
) -> torch.Tensor:  # fmt: skip
    """Per-cell argmin over `cand` ∪ {init_keep} of cost + α_ser·scale·|m − s|₁, with a RUNNING argmin: no
    `(M, G, P)` tensor beyond one chunk exists. `stat` is C `(G, n, n)` (l2) or X `(R, G, n)` (linf).

    Ties keep the earlier candidate, and `init_keep` (the magnitude top-k pattern) wins ties, so with α_ser = 0 the
    chosen cost is never above the magnitude pattern's. The prior is applied only to cells whose source mask is not
    all-ones: for those it is a constant `n − k` that cannot change the argmin, and skipping it keeps masks
    bit-identical for any α_ser with a dense source. `prior_scale="repo"` = mean candidate cost of the cell ×
    `layer_factor`; `"paper"` = `paper_scale` of its group.
    """
    pat_costs, cell_costs = (
        (l2_pattern_costs, l2_cell_costs) if cost_form == "l2" else (linf_pattern_costs, linf_cell_costs)
    )
    m, g, n = u.shape
    k = int(cand[0].sum())
    use_prior = alpha_ser > 0 and src is not None and not bool(src.all())
    gscale = paper_scale(u, stat) if use_prior and prior_scale == "paper" else None
    rows = max(1, _BYTES // (8 * g * max(n * n, pattern_chunk)))
    best_keep = init_keep.clone()
    for r0 in range(0, m, rows):
        sl = slice(r0, min(m, r0 + rows))
        us = u[sl]
        best = cell_costs(us, stat, init_keep[sl])
        if use_prior:
            active = ~src[sl].all(-1, keepdim=True)  # (m, G, 1)
            if gscale is not None:
                scale = gscale.view(1, g, 1)
            else:
                scale = layer_factor * _mean_cost(us, stat, cand, pat_costs, pattern_chunk)
            weight = torch.where(active, alpha_ser * scale, 0.0)
            best = best + weight.squeeze(-1) * (init_keep[sl] != src[sl]).sum(-1)
        keep_sl = best_keep[sl]
        for p0 in range(0, len(cand), pattern_chunk):
            cc = cand[p0 : p0 + pattern_chunk]
            costs = pat_costs(us, stat, cc)
            if use_prior:
                costs = costs + weight * hamming(src[sl], cc, k)
            cmin, amin = costs.min(-1)
            upd = cmin < best
            best = torch.where(upd, cmin, best)
            keep_sl[upd] = cc[amin[upd]]
        best_keep[sl] = keep_sl
    return best_keep


def _mean_cost(us, stat, cand, pat_costs, chunk) -> torch.Tensor:
    """Repo prior scale: mean of the candidate costs of every cell, `(m, G, 1)`."""
    total = sum(pat_costs(us, stat, cand[p : p + chunk]).sum(-1, keepdim=True) for p in range(0, len(cand), chunk))
    return total / len(cand)


def source_tuple(w_src: torch.Tensor, keep_src: torch.Tensor, w_dense: torch.Tensor | None) -> torch.Tensor:
    """§8.4: u = W_src where the source keeps, W_dense where it pruned (free restoration), else 0."""
    fill = w_dense if w_dense is not None else torch.zeros_like(w_src)
    return torch.where(keep_src, w_src, fill)
