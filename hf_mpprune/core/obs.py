"""Optimal-brain-surgeon (OBS) math for one layer, written from the SparseGPT paper (Frantar & Alistarh, 2023).

Pure functions on one weight matrix `W` (out, in) and the layer's calibration Hessian `H = 2 XᵀX / rows` (in, in)
of the layer-wise reconstruction loss ‖(W − Ŵ) X‖². Nothing here knows models, hooks or files.

- `hessian(X)`: H from input rows.
- `sparsegpt_prune(W, H, sparsity | KeepPattern, ...)`: SparseGPT (Algorithm 1): column blocks, OBS saliency
  w²/[H⁻¹]²_jj for mask selection inside each block, lazy batched updates through the upper Cholesky factor of
  H⁻¹, the remaining columns compensated after every pruned column.
- `obs_reconstruct(W, H, keep)`: keep a given mask and re-fit the kept weights by exact least squares per row:
  ŵ_K = (H_KK)⁻¹ (H w)_K — the minimiser of (w − ŵ)ᵀ H (w − ŵ) with ŵ zero outside K (the "restore" idea in
  exact form).

Both accept a k:n `KeepPattern` (k kept of every n consecutive inputs, per row; a tail of N mod n columns stays
dense) and return masks with True = kept; pruned entries are exactly 0.0.
"""

import math

import torch

from .config import KeepPattern
from .masks import keep_top


__all__ = ["damped", "hessian", "kn_block_keep", "obs_reconstruct", "sparsegpt_prune"]


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 XᵀX / rows in float64 for input rows `x` (rows, in)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * (x.T @ x) / max(1, x.shape[0])


def damped(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """H + λI with λ = percdamp · mean(diag H); dead inputs (diag 0) get diag 1 so H stays positive definite."""
    h = h.double().clone()
    diag = h.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    damp = percdamp * float(diag.mean()) if percdamp > 0 else 0.0
    h.diagonal().add_(damp)
    return h


def _inv_chol_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU); rows of U give the sequential OBS updates."""
    lower = torch.linalg.cholesky(h)
    hinv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(hinv, upper=True)


def kn_block_keep(scores: torch.Tensor, pattern: KeepPattern, prune: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask (rows, n) of one k:n group: the k highest scores per row (ties: lower column first).
    Entries in `prune` (forced, e.g. pruned in an earlier cycle) are dropped first."""
    if prune is not None:
        scores = scores.masked_fill(prune, -1.0)
    order = torch.argsort(-scores, dim=1, stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, : pattern.keep], True)
    return keep


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: "float | KeepPattern",
    blocksize: int = 128,
    percdamp: float = 0.01,
    prune: torch.Tensor | None = None,
    count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer. Returns (W_new in W's dtype, keep mask bool (out, in)).

    Args:
        W: (out, in) weights. H: (in, in) Hessian 2XᵀX/rows (see `hessian`).
        sparsity: a fraction (exactly `count` = floor(s·out·in) pruned in the layer, spread over the column blocks
            by a running budget: block b prunes floor(count·end_b/in) minus what earlier blocks pruned, at least its
            forced entries; the OBS saliency picks which inside each block) or a `KeepPattern`.
        blocksize: columns per lazy-update block (rounded down to a multiple of n for k:n).
        percdamp: damping λ = percdamp · mean(diag H).
        prune: optional bool (out, in) of entries that must be pruned (earlier cycles); if a block already has
            more of them than its budget, the block prunes those and no others (later blocks prune less).
        count: the layer's exact prune count for a fraction (default floor(s·out·in); callers spreading a global
            floor(s·P) over layers pass their share).
    """
    rows, cols = W.shape
    pattern = sparsity if isinstance(sparsity, KeepPattern) else None
    if pattern is not None:
        blocksize = max(pattern.group, blocksize // pattern.group * pattern.group)
        kn_cols = cols // pattern.group * pattern.group
    else:
        count = math.floor(float(sparsity) * rows * cols) if count is None else int(count)
        done = 0
    w = W.detach().double().clone()
    u = _inv_chol_upper(damped(H, percdamp))
    keep = torch.ones(rows, cols, dtype=torch.bool)
    forced = prune.cpu() if prune is not None else torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        d = u1.diagonal()
        if pattern is None:
            sal = (w1.square() / d.square()).masked_fill(forced[:, i1:i2], -1.0)
            need = max(count * i2 // cols - done, int(forced[:, i1:i2].sum()))
            keep[:, i1:i2] = keep_top([sal], min(need, rows * (i2 - i1)))[0]
            done += min(need, rows * (i2 - i1))
        for i in range(i2 - i1):
            c = i1 + i
            if pattern is not None and c < kn_cols and c % pattern.group == 0:
                g = slice(i, i + pattern.group)
                sal = w1[:, g].square() / d[g].square()
                keep[:, c : c + pattern.group] = kn_block_keep(sal, pattern, forced[:, c : c + pattern.group])
            q = w1[:, i] * keep[:, c]
            e = (w1[:, i] - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w[~keep] = 0.0
    return w.to(W.dtype), keep


def _kn_keep_by_magnitude(W: torch.Tensor, pattern: KeepPattern) -> torch.Tensor:
    rows, cols = W.shape
    keep = torch.ones(rows, cols, dtype=torch.bool)
    n = cols // pattern.group * pattern.group
    for c in range(0, n, pattern.group):
        keep[:, c : c + pattern.group] = kn_block_keep(W[:, c : c + pattern.group].abs().double(), pattern)
    return keep


def obs_reconstruct(
    W: torch.Tensor,
    H: torch.Tensor,
    keep_mask: "torch.Tensor | KeepPattern",
    percdamp: float = 0.01,
    max_chunk_elems: int = 2**25,
) -> torch.Tensor:
    """Keep the mask, re-fit the kept weights: per row, ŵ_K = (H_KK + λI)⁻¹ ((H + λI) w)_K, zeros elsewhere.

    With percdamp = 0 this is the exact least-squares minimiser of ‖(w − ŵ) X‖² over ŵ supported on K, so the
    layer's calibration reconstruction error is never above that of the masked original W ⊙ M. A `KeepPattern`
    first picks the k largest |W| of every n (per row) as the mask. Rows are solved in batches padded to the
    largest kept count (identity on the padding); memory ≈ max_chunk_elems float64 numbers.
    """
    keep = _kn_keep_by_magnitude(W, keep_mask) if isinstance(keep_mask, KeepPattern) else keep_mask.cpu().bool()
    h = damped(H, percdamp).cpu()
    w = W.detach().double().cpu()
    hw = w @ h  # row r: (H w_r)ᵀ
    out = torch.zeros_like(w)
    kcount = keep.sum(1)
    kmax = int(kcount.max()) if kcount.numel() else 0
    if kmax == 0:
        return out.to(W.dtype)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :kmax]  # kept columns first
    chunk = max(1, max_chunk_elems // (kmax * kmax))
    for r1 in range(0, w.shape[0], chunk):
        idx = order[r1 : r1 + chunk]  # (c, kmax)
        valid = torch.arange(kmax).unsqueeze(0) < kcount[r1 : r1 + chunk].unsqueeze(1)  # (c, kmax)
        a = h[idx.unsqueeze(2), idx.unsqueeze(1)]  # (c, kmax, kmax)
        pair = valid.unsqueeze(2) & valid.unsqueeze(1)
        a = torch.where(pair, a, torch.diag_embed(torch.ones_like(valid, dtype=a.dtype)))
        rhs = torch.gather(hw[r1 : r1 + chunk], 1, idx) * valid
        sol = torch.cholesky_solve(rhs.unsqueeze(2), torch.linalg.cholesky(a)).squeeze(2) * valid
        out[r1 : r1 + chunk].scatter_(1, idx, sol)
    out[~keep] = 0.0
    return out.to(W.dtype)
