"""Optimal-brain-surgeon (OBS) math for one layer, written from the SparseGPT paper (Frantar & Alistarh, 2023).

Pure functions on one weight matrix `W` (out, in) and the layer's calibration Hessian `H = 2 XᵀX / rows` (in, in)
of the layer-wise reconstruction loss ‖(W − Ŵ) X‖². Nothing here knows models, hooks or files.

- `hessian(X)`: H from input rows.
- `sparsegpt_prune(W, H, sparsity | KeepPattern, ...)`: SparseGPT (Algorithm 1): column blocks, OBS saliency
  w²/[H⁻¹]²_jj for mask selection inside each block, lazy batched updates through the upper Cholesky factor of
  H⁻¹, the remaining columns compensated after every pruned column.
- `obs_reconstruct(W, H, keep)`: keep a given mask and re-fit the kept weights by least squares per row:
  ŵ_K = (H_KK)⁻¹ (H w)_K — the minimiser of (w − ŵ)ᵀ H (w − ŵ) with ŵ zero outside K (the "restore" idea in
  exact form), solved exactly (`solver="exact"`) or by a fixed number of batched preconditioned conjugate-gradient
  steps (`solver="cg"`, `hf_mpprune.core.refit.cg_refit`).

Both accept a k:n `KeepPattern` (k kept of every n consecutive inputs, per row; a tail of N mod n columns stays
dense) and return masks with True = kept; pruned entries are exactly 0.0.
"""

import math

import torch

from .config import KeepPattern
from .masks import keep_top
from .refit import SOLVERS, cg_refit
from .threads import one_thread_workers, single_threaded_pool


__all__ = [
    "SWEEP_THREADED_NUMEL",
    "damped",
    "hessian",
    "kn_block_keep",
    "obs_reconstruct",
    "sparsegpt_prune",
    "spd_inverse",
    "sweep_factor",
]

SWEEP_THREADED_NUMEL = 2**20  # SparseGPT sweeps of layers this large use the process's threads (MiniLM's stay at 1)


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 XᵀX / rows in float64 for input rows `x` (rows, in)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * (x.T @ x) / max(1, x.shape[0])


def damped(h: torch.Tensor, percdamp: float, like: torch.Tensor | None = None) -> torch.Tensor:
    """H + λI with λ = percdamp · mean(diag H); dead inputs (diag 0) get diag 1 so H stays positive definite.
    With `like` (a Hessian), `h` (e.g. the dense-target cross statistic) gets `like`'s λ and +1 on `like`'s dead
    inputs, so a dead input keeps its weight as in the sequential re-fit."""
    ref = (h if like is None else like).double()
    dead = ref.diagonal() == 0
    diag = ref.diagonal().masked_fill(dead, 1.0)
    out = h.double().clone()
    out.diagonal()[dead] += 1.0  # a dead input's diagonal is 0 in H itself, so this sets it to 1 there
    out.diagonal().add_(percdamp * float(diag.mean()) if percdamp > 0 else 0.0)
    return out


def _inv_chol_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU); rows of U give the sequential OBS updates.

    With J the index reversal and J H J = L Lᵀ: H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J) and J L⁻¹ J is upper triangular, so
    U = J L⁻¹ J: one Cholesky and one triangular inverse (the textbook Cholesky → inverse → Cholesky costs about
    3× more, and `torch.cholesky_inverse` is a slow path on CPU)."""
    lower = torch.linalg.cholesky(h.flip(0, 1))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)


def spd_inverse(h: torch.Tensor) -> torch.Tensor:
    """H⁻¹ = UᵀU from `_inv_chol_upper` (one Cholesky, one triangular inverse, one GEMM)."""
    u = _inv_chol_upper(h)
    return u.T @ u


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
    factor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer. Returns (W_new in W's dtype, keep mask bool (out, in)).

    Args:
        W: (out, in) weights. H: (in, in) Hessian 2XᵀX/rows (see `hessian`).
        sparsity: a fraction (exactly `count` = floor(s·out·in) pruned in the layer, spread over the column blocks
            by a running budget: block b prunes floor(count·end_b/in) minus what earlier blocks pruned, at least its
            forced entries; the OBS saliency picks which inside each block) or a `KeepPattern`.
        blocksize: columns per lazy-update block (rounded down to a multiple of n for k:n).
        percdamp: damping λ = percdamp · mean(diag H).
        Precision: the Cholesky factor of H⁻¹ and the column sweep in float32 for float32 (or lower) `W`, as the
            reference implementation (a float32 factorisation that fails falls back to float64), float64 for
            float64 `W`. The factorisation uses the process's threads; so does the sweep of a layer with at least
            `SWEEP_THREADED_NUMEL` weights (2 threads: ×0.65–0.9 of one on ViT-L shapes), smaller layers sweep
            single-threaded (many small ops; on a busy box 2-thread small ops spin-wait: 8.3 s vs 72 s measured).
        prune: optional bool (out, in) of entries that must be pruned (earlier cycles); if a block already has
            more of them than its budget, the block prunes those and no others (later blocks prune less).
        count: the layer's exact prune count for a fraction (default floor(s·out·in); callers spreading a global
            floor(s·P) over layers pass their share).
        factor: `sweep_factor(H, percdamp, W.dtype)` when the caller already has it (layers sharing one H).
    """
    u = sweep_factor(H, percdamp, W.dtype) if factor is None else factor
    if W.numel() >= SWEEP_THREADED_NUMEL:  # big layers: the micro-block ops are large enough for every thread
        return _sparsegpt_sweep(W, u, sparsity, blocksize, prune, count)
    with one_thread_workers():  # small layers: many small ops, one thread is faster (on a busy box, ~9×)
        return _sparsegpt_sweep(W, u, sparsity, blocksize, prune, count)


def sweep_factor(H: torch.Tensor, percdamp: float, dtype: torch.dtype) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ for SparseGPT's sweep, in the sweep's precision: float32 for float32
    (or lower) weights (float64 if the float32 factorisation fails or is not finite), float64 for float64."""
    h = damped(H, percdamp)
    if dtype != torch.float64:
        try:
            u = _inv_chol_upper(h.float())
            if bool(torch.isfinite(u).all()):
                return u
        except torch.linalg.LinAlgError:
            pass
        return _inv_chol_upper(h).float()
    return _inv_chol_upper(h)


def _masked_errors(w: torch.Tensor, u: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """OBS errors E (rows, b) of b consecutive columns processed one after another with a FIXED keep mask.

    The column loop e_i = (1 − k_i)(w_i − Σ_{j<i} e_j u_ji) / u_ii is, per row, the triangular system
    e_P U_PP = w_P on the row's pruned columns P (e = 0 on kept ones). All rows are solved at once: row r's matrix
    is U with the kept rows / columns replaced by the identity (rows, b, b)."""
    pr = ~keep
    both = pr.unsqueeze(2) & pr.unsqueeze(1)
    eye = torch.eye(u.shape[0], dtype=u.dtype)
    t = torch.where(both, u, eye)
    return torch.linalg.solve_triangular(t, (w * pr).unsqueeze(1), upper=True, left=False).squeeze(1)


def _sparsegpt_sweep(W, u, sparsity, blocksize, prune, count, micro=16):
    """Column blocks with lazy updates (as the reference); inside a block, columns go in micro-blocks of `micro`
    (unstructured: the block's mask is fixed up front, as the reference) or of one k:n group (the group's mask is
    chosen on the weights updated by every earlier column, as the reference), each solved for all rows at once
    (`_masked_errors`) instead of one Python step per column."""
    rows, cols = W.shape
    pattern = sparsity if isinstance(sparsity, KeepPattern) else None
    if pattern is not None:
        blocksize = max(pattern.group, blocksize // pattern.group * pattern.group)
        kn_cols = cols // pattern.group * pattern.group
        micro = pattern.group
    else:
        count = math.floor(float(sparsity) * rows * cols) if count is None else int(count)
        done = 0
    w = W.detach().cpu().to(u.dtype).clone()
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
        for j1 in range(0, i2 - i1, micro):
            j2 = min(j1 + micro, i2 - i1)
            c = i1 + j1
            if pattern is not None:
                if c >= kn_cols:
                    break  # the dense tail: kept, nothing to compensate
                sal = w1[:, j1:j2].square() / d[j1:j2].square()
                keep[:, c : c + pattern.group] = kn_block_keep(sal, pattern, forced[:, c : c + pattern.group])
            kb = keep[:, c : i1 + j2]
            if bool(kb.all()):
                continue
            e = _masked_errors(w1[:, j1:j2], u1[j1:j2, j1:j2], kb)
            err1[:, j1:j2] = e
            w1[:, j1:] -= e @ u1[j1:j2, j1:]
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


def _solve_rows(
    mat: torch.Tensor, sel: torch.Tensor, rhs: torch.Tensor, rows: torch.Tensor, max_elems: int, stats, fast: bool
):
    """For every row r in `rows`: solve mat[S_r, S_r] y = rhs[r, S_r] (S_r = the True entries of sel[r]; mat SPD,
    float64). Returns y scattered into a dense (len(rows), N) float64 matrix (0 outside S_r).

    Rows are sorted by |S_r| and batched in chunks padded to the chunk's largest |S_r|; padded slots index an
    identity block appended to `mat`, so one gather builds every padded system. Each system: float32 Cholesky, two
    triangular solves, float64 iterative refinement (residual b − A y from one float64 GEMM with the dense `mat`)
    until the relative residual is ≤ 1e-10; systems whose float32 factorisation fails or stalls are re-solved by
    float64 Cholesky. `fast=False`: float64 Cholesky throughout. Chunks are spread over the cores, each
    single-threaded.
    """
    n = mat.shape[0]
    out = torch.zeros(len(rows), n, dtype=torch.float64)
    if len(rows) == 0:
        return out
    sub, counts = sel[rows], sel[rows].sum(1)
    order = torch.argsort(counts, descending=True, stable=True)
    smax = int(counts.max())
    if smax == 0:
        return out
    aug64 = torch.zeros(n + smax, n + smax, dtype=torch.float64)
    aug64[:n, :n] = mat
    aug64.diagonal()[n:] = 1.0
    aug32 = aug64.float() if fast else None
    rhs_aug = torch.zeros(len(rows), n + smax, dtype=torch.float64)
    rhs_aug[:, :n] = rhs[rows]
    tol, refine = 1e-10, 4

    def tri(chol, b):
        y = torch.linalg.solve_triangular(chol, b.unsqueeze(2), upper=False)
        return torch.linalg.solve_triangular(chol.mT, y, upper=True).squeeze(2)

    def run(job):
        idx, size = job
        cnt = counts[idx]
        cols = torch.argsort((~sub[idx]).to(torch.int8), dim=1, stable=True)[:, :size]  # selected columns first
        slot = torch.arange(size).unsqueeze(0)
        cols = torch.where(slot < cnt.unsqueeze(1), cols, n + slot)  # padding -> the identity block
        b = torch.gather(rhs_aug[idx], 1, cols)
        bn = b.norm(dim=1).clamp_min(1e-300)
        if fast:
            chol, info = torch.linalg.cholesky_ex(aug32[cols.unsqueeze(2), cols.unsqueeze(1)])
            ok = info == 0
        else:
            ok = torch.zeros(len(idx), dtype=torch.bool)
        y = torch.zeros_like(b)
        if bool(ok.any()):
            lo, bo, co = chol[ok], b[ok], cols[ok]
            yo = tri(lo, bo.float()).double()
            for it in range(refine + 1):
                dense = torch.zeros(len(yo), n + smax, dtype=torch.float64).scatter_(1, co, yo)
                prod = torch.cat([dense[:, :n] @ mat, dense[:, n:]], 1)  # the identity block needs no GEMM
                r = bo - torch.gather(prod, 1, co)
                rel = r.norm(dim=1) / bn[ok]
                if float(rel.max()) <= tol or it == refine:
                    break
                yo = yo + tri(lo, r.float()).double()
            y[ok] = yo
            ok = ok.clone()
            ok[ok.clone()] = rel <= tol
        bad = ~ok
        if bool(bad.any()):
            cb = cols[bad]
            a64 = aug64[cb.unsqueeze(2), cb.unsqueeze(1)]
            y[bad] = tri(torch.linalg.cholesky(a64), b[bad])
        y = y * (slot < cnt.unsqueeze(1))
        out[idx] = torch.zeros(len(idx), n + smax, dtype=torch.float64).scatter_(1, cols, y)[:, :n]
        return int(bad.sum()) if fast else 0

    with one_thread_workers() as workers:
        jobs, i = [], 0
        while i < len(order) and int(counts[order[i]]) > 0:
            size = int(counts[order[i]])
            take = max(1, min(-(-(len(order) - i) // workers), max_elems // (size * size)))
            jobs.append((order[i : i + take], size))
            i += take
        if workers > 1 and len(jobs) > 1:
            with single_threaded_pool(workers) as pool:
                fallbacks = sum(pool.map(run, jobs))
        else:
            fallbacks = sum(run(j) for j in jobs)
    stats["float64_fallback_rows"] = stats.get("float64_fallback_rows", 0) + fallbacks
    return out


def obs_reconstruct(
    W: torch.Tensor,
    H: torch.Tensor,
    keep_mask: "torch.Tensor | KeepPattern",
    percdamp: float = 0.01,
    max_chunk_elems: int = 2**24,
    stats: dict | None = None,
    solver: str = "exact",
    iters: int = 10,
    target=None,
) -> torch.Tensor:
    """Keep the mask, re-fit the kept weights: per row, ŵ_K = (H_KK + λI)⁻¹ ((H + λI) w)_K, zeros elsewhere.

    `target` (a `refit.DenseTarget`): aim at the dense model's output instead, ŵ_K = (H_KK + λI)⁻¹ ((C + λI) w)_K
    with C its `cross` statistic (every row in the kept form below).

    `solver="cg"`: `iters` batched conjugate-gradient steps (`cg_refit`) instead of the exact solves below; one GEMM
    of the layer per step, so cost grows as iters · out · in² instead of out · |K|³.

    With percdamp = 0 this is the exact least-squares minimiser of ‖(w − ŵ) X‖² over ŵ supported on K, so the
    layer's calibration reconstruction error is never above that of the masked original W ⊙ M. A `KeepPattern`
    first picks the k largest |W| of every n (per row) as the mask.

    Cost: each row solves the smaller of two equivalent systems: kept form (H_KK) x = (H w)_K when |K| ≤ |P|, or
    pruned (OBS) form ŵ = w − G_{:,P} (G_PP)⁻¹ w_P with G = (H + λI)⁻¹ from ONE factorisation per layer, when the
    pruned set P is smaller. Rows are grouped by system size and solved in batches (float32 Cholesky, float64
    iterative refinement to a relative residual ≤ 1e-10, float64 Cholesky for any system where float32 fails or
    stalls; `stats["float64_fallback_rows"]` counts them; float64 `W`: float64 Cholesky throughout), batches
    spread over the cores. Memory ≈ 12 bytes ×
    `max_chunk_elems` per worker. No Python loop over rows.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} must be one of {SOLVERS}")
    stats = stats if stats is not None else {}
    fast = W.dtype != torch.float64  # float64 weights: float64 Cholesky throughout
    keep = _kn_keep_by_magnitude(W, keep_mask) if isinstance(keep_mask, KeepPattern) else keep_mask.cpu().bool()
    h = damped(H, percdamp).cpu()
    c = None if target is None else damped(target.cross, percdamp, like=H).cpu()
    if solver == "cg":
        return cg_refit(W, h, keep, iters, stats, cross=c).to(W.dtype)
    w = W.detach().double().cpu()
    rows, cols = w.shape
    out = torch.zeros_like(w)
    kcount = keep.sum(1)
    pruned_form = (cols - kcount) < kcount if c is None else torch.zeros_like(kcount, dtype=torch.bool)
    kept_rows = torch.nonzero(~pruned_form & (kcount > 0)).flatten()
    p_rows = torch.nonzero(pruned_form).flatten()
    stats["kept_form_rows"], stats["pruned_form_rows"] = len(kept_rows), len(p_rows)
    if len(kept_rows):
        hw = w[kept_rows] @ (h if c is None else c)  # row r: (H w_r)ᵀ, or (C w_r)ᵀ for the dense target
        full = torch.zeros(rows, cols, dtype=torch.float64)
        full[kept_rows] = hw
        out[kept_rows] = _solve_rows(h, keep, full, kept_rows, max_chunk_elems, stats, fast)
    if len(p_rows):
        g = spd_inverse(h)  # one factorisation per layer, shared by the rows
        y = _solve_rows(g, ~keep, w, p_rows, max_chunk_elems, stats, fast)
        out[p_rows] = w[p_rows] - y @ g
    out[~keep] = 0.0
    return out.to(W.dtype)
