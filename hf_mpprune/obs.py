"""Optimal-brain-surgeon layer solvers (pure torch, float64 per layer): SparseGPT pruning and the OBS re-fit of a
fixed support. `H = 2·XᵀX` of the layer's inputs in its matrix-view input space (any positive scale works).

Minimal versions written on the `cast` branch for CAST `reconstruct=True` and the SparseGPT k:n baseline; the
`methods` branch holds the full ones with the same signatures (the lead keeps one at merge).
"""

import torch

from .config import KeepPattern


def _damped(h: torch.Tensor, w: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 copies with dead inputs (H_jj = 0) neutralised and `percdamp·mean(diag H)` added to the diagonal."""
    h = h.detach().to(torch.float64).clone()
    w = w.detach().to(torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(percdamp * torch.diagonal(h).mean())
    return h, w


def sparsegpt_prune(
    W: torch.Tensor, H: torch.Tensor, sparsity: "float | KeepPattern", blocksize: int = 128, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): prune `W (out, in)` column by column with OBS updates of the rest.

    `sparsity` is a fraction (per 128-column block, as in the reference code) or a `KeepPattern` (k kept of every n
    columns; a tail of `in mod n` columns is not pruned). Returns `(W_new, keep_mask)`; pruned entries are +0.0.
    """
    h, w = _damped(H, W, percdamp)
    rows, cols = w.shape
    pat = sparsity if isinstance(sparsity, KeepPattern) else None
    n = pat.group if pat else 0
    full = (cols // n) * n if pat else cols
    if pat:
        blocksize = max(n, (blocksize // n) * n)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if pat is None and sparsity > 0:
            tmp = w1.square() / torch.diagonal(hinv1).square()
            thresh = torch.sort(tmp.flatten()).values[int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        for i in range(i2 - i1):
            if pat and i % n == 0 and i1 + i + n <= full:
                tmp = w1[:, i : i + n].square() / torch.diagonal(hinv1)[i : i + n].square()
                drop = torch.sort(tmp, dim=1, stable=True).indices[:, : n - pat.keep]
                mask1.scatter_(1, i + drop, True)
            q = w1[:, i].masked_fill(mask1[:, i], 0.0)
            q1[:, i] = q
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    w = w.masked_fill(pruned, 0.0) + 0.0  # +0.0 canonicalises -0.0
    return w.to(W.dtype), ~pruned


def obs_reconstruct(W: torch.Tensor, H: torch.Tensor, keep_mask: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Least-squares re-fit of the kept entries: per row i, `w_K = W_i H[:, K] H[K, K]⁻¹` minimises
    `(W_i − w) H (W_i − w)ᵀ` over w supported on K = kept columns of row i. Pruned entries are +0.0."""
    h, w = _damped(H, W, percdamp)
    keep = keep_mask.to(torch.bool).cpu()
    out = torch.zeros_like(w)
    counts = keep.sum(1)
    for c in counts.unique().tolist():
        if c == 0:
            continue
        rows = (counts == c).nonzero().squeeze(1)
        for chunk in rows.split(max(1, 2**25 // (c * c))):  # <= 256 MiB of H[K, K] blocks at a time
            idx = keep[chunk].nonzero()[:, 1].reshape(len(chunk), c)  # (r, c) kept columns per row
            hkk = h[idx.unsqueeze(2), idx.unsqueeze(1)]  # (r, c, c)
            rhs = (w[chunk] @ h).gather(1, idx)  # W_i H[:, K]
            sol = torch.cholesky_solve(rhs.unsqueeze(2), torch.linalg.cholesky(hkk)).squeeze(2)
            out[chunk.unsqueeze(1), idx] = sol
    return (out + 0.0).to(W.dtype)
