"""Joint mask / weight optimisation of one layer by ADMM (docs/algorithms.md §18.7).

Pure functions on one weight matrix `W` (out, in), its calibration Hessian `H = 2 XᵀX / rows` (in, in) and a
`Budget` (what the final mask must satisfy: per-row prune counts, or a k:n pattern, plus entries that must stay
pruned). The problem is

    minimise  tr((W − Ŵ) H (W − Ŵ)ᵀ)   over Ŵ whose zeros satisfy the budget,

split as B = Z (B free, Z sparse) and solved in scaled ADMM form, in coordinates where diag(H) = 1 (column j
scaled by √H_jj, so |B_ij| there is Wanda's |W_ij|·‖x_j‖):

    Z ← P(B + U)    (the mask re-chosen from B + U by the budget, then B + U restricted to it)
    U ← U + B − Z
    B ← (H + ρI)⁻¹ (H W + ρ(Z − U))   (row form; one factorisation of the damped H per layer)

Two schedules, both written from their papers' descriptions:

- `"admm"` (Boža 2024): fixed ρ = 1, damping 0.1 · mean diag(H); the mask tightens from dense to the budget along
  a cubic ramp over the first 15 iterations (row r prunes ⌊c_r·(1 − (1 − t/15)³)⌋ at step t; for k:n the pruned
  set grows inside the k:n-pruned set of B + U), then stays fixed; 20 iterations.
- `"alps"` (Meng et al. 2024): starts from the method's mask, projects onto the full budget at every step, ρ₀ = 0.1
  with damping 0.01 · mean diag(H), and every 3 steps ρ grows with the support change (×1.3 above 10 % of the kept
  entries, ×1.2 above 0.5 %, ×1.1 above 0 once it has grown) — before any growth it shrinks ×1/5 instead
  (restarting from the method's mask when the support moved a little); stops when the support is stable; at most
  300 steps. One eigendecomposition of H serves every ρ.

The result is Z (in original coordinates) and its mask; callers re-fit the survivors by least squares
(`obs.obs_reconstruct`).
"""

import math
from dataclasses import dataclass

import torch

from .config import KeepPattern
from .obs import spd_inverse


__all__ = ["SCHEDULES", "Budget", "admm_prune", "layer_objective"]

# name -> (rho0, damping as a fraction of mean diag(H), default iterations, ramp / support-update period)
SCHEDULES = {"admm": (1.0, 0.1, 20, 15), "alps": (0.1, 0.01, 300, 3)}
_ALPS_SWITCH, _ALPS_STABLE, _RHO_MAX = 30, 3e-4, 1e6


def layer_objective(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor, target=None) -> float:
    """The layer's calibration reconstruction loss tr((W − Ŵ) H (W − Ŵ)ᵀ) in float64 (H undamped); with a
    `refit.DenseTarget`, ‖Ŵ X − W X_d‖² (scaled like H) = tr(Ŵ H Ŵᵀ) − 2 tr(Ŵ (W C)ᵀ) + tr(W H_d Wᵀ)."""
    if target is None:
        d = W.double() - W_new.double()
        return float(((d @ H.double()) * d).sum())
    w, wn = W.double(), W_new.double()
    quad = ((wn @ H.double()) * wn).sum() - 2.0 * ((w @ target.cross.double()) * wn).sum()
    return float(quad + ((w @ target.dense_h.double()) * w).sum())


@dataclass
class Budget:
    """What a layer's mask must satisfy. Unstructured: row r prunes exactly `counts[r]` entries; k:n: k kept of
    every n consecutive inputs per row (the last N mod n columns keep `tail`). `forced` entries always stay pruned."""

    counts: torch.Tensor | None = None  # (out,) long, unstructured
    pattern: KeepPattern | None = None
    tail: torch.Tensor | None = None  # (out, N mod n) bool, k:n
    forced: torch.Tensor | None = None  # (out, in) bool

    @classmethod
    def of(cls, keep0: torch.Tensor, pattern: KeepPattern | None, forced: torch.Tensor | None) -> "Budget":
        """The budget the method's mask `keep0` fixes: its pattern and tail columns when `pattern` is given and
        `keep0` follows it (≤ k kept in every group), else its row counts (e.g. a layer a k:n method skipped)."""
        body = keep0.shape[1] // pattern.group * pattern.group if pattern is not None else 0
        if pattern is not None and body:
            follows = keep0[:, :body].reshape(keep0.shape[0], -1, pattern.group).sum(-1).max() <= pattern.keep
            pattern = pattern if bool(follows) else None
        else:
            pattern = None
        if pattern is None:
            counts = (~keep0).sum(1)
            if forced is not None:
                counts = torch.maximum(counts, forced.sum(1))
            return cls(counts=counts, forced=forced)
        return cls(pattern=pattern, tail=keep0[:, body:].clone(), forced=forced)

    def keep(self, score: torch.Tensor, frac: float = 1.0) -> torch.Tensor:
        """Keep mask for scores ≥ 0 (larger = more important): the full budget at `frac` = 1, else the pruned set
        shrunk to ⌊frac·count⌋ per row (forced entries always pruned; k:n: the smallest of the k:n-pruned set)."""
        s = score if self.forced is None else score.masked_fill(self.forced, -1.0)
        nforced = self.forced.sum(1) if self.forced is not None else torch.zeros(s.shape[0], dtype=torch.long)
        if self.pattern is None:
            c = self.counts if frac >= 1.0 else torch.maximum((self.counts * frac).floor().long(), nforced)
            return _row_keep(s, c)
        n, k = self.pattern.group, self.pattern.keep
        body = s.shape[1] // n * n
        cells = s[:, :body].reshape(s.shape[0], -1, n)
        top = torch.sort(cells, dim=-1, descending=True, stable=True).indices[..., :k]
        full = torch.zeros_like(cells, dtype=torch.bool).scatter_(-1, top, True).reshape(s.shape[0], body)
        if frac < 1.0:
            c_full = (~full).sum(1)
            c = torch.maximum((c_full * frac).floor().long(), nforced)
            full = _row_keep(s[:, :body].masked_fill(full, math.inf), c)
        out = torch.cat([full, self.tail], 1)
        return out if self.forced is None else out & ~self.forced


def _row_keep(score: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Prune the `counts[r]` lowest scores of each row r (ties: lower column first)."""
    order = torch.argsort(score, dim=1, stable=True)
    pruned = torch.arange(score.shape[1]).unsqueeze(0) < counts.unsqueeze(1)
    return torch.ones_like(score, dtype=torch.bool).scatter_(1, order, ~pruned)


class _Solver:
    """B = (R)(H + ρI)⁻¹ for the normalised, damped H: one inverse for a fixed ρ, one eigendecomposition when ρ
    changes (`"alps"`)."""

    def __init__(self, hn: torch.Tensor, rho: float, fixed: bool, work: torch.dtype):
        """`hn` (float64) is overwritten."""
        self.fixed, self.rho = fixed, rho
        if fixed:
            hn.diagonal().add_(rho)
            self.inv = spd_inverse(hn).to(work)
        else:
            vals, vecs = torch.linalg.eigh(hn)
            self.vals, self.vecs = vals.to(work), vecs.to(work)

    def buffers(self) -> tuple[torch.Tensor, ...]:
        return (self.inv,) if self.fixed else (self.vals, self.vecs)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        if self.fixed:
            return r @ self.inv
        return ((r @ self.vecs) / (self.vals + self.rho)) @ self.vecs.T


def admm_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    keep0: torch.Tensor,
    budget: Budget,
    *,
    schedule: str = "admm",
    iters: int | None = None,
    stats: dict | None = None,
    target=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint mask / weight ADMM on one layer (module docstring). Returns (Ŵ in float64, keep mask).

    Args:
        W: dense (out, in) target weights. H: (in, in) Hessian 2XᵀX/rows, undamped. keep0: the method's mask
            (the `"alps"` start). budget: `Budget.of(keep0, pattern, forced)`. iters: default from `SCHEDULES`.
        stats: receives `iterations`, `rho` (final), `buffer_bytes` (the per-layer work buffers held).
        target: a `refit.DenseTarget`: the linear term H W becomes C W (C its `cross`, damped alike), so the
            iterates fit the dense model's output of the layer.
    Precision: float32 iterations for float32 (or lower) `W`, float64 for float64; the factorisation in float64.
    """
    rho, damp, default_iters, period = SCHEDULES[schedule]
    iters = default_iters if iters is None else int(iters)
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    diag = H.diagonal().double()
    live = diag > 0
    d = torch.where(live, diag, torch.ones_like(diag)).sqrt()
    hn = H.double() / d.unsqueeze(0) / d.unsqueeze(1)
    hn.diagonal().add_(damp)  # the live diagonal is 1 after the scaling: damp · mean diag
    wn = (W.double() * d).to(work)
    if target is None:
        target = wn @ hn.to(work)  # H W in row form
    else:  # C W: the dense model's output as the fit's aim, C scaled and damped like H
        cn = target.cross.double() / d.unsqueeze(0) / d.unsqueeze(1)
        cn.diagonal().add_(damp)
        target = wn @ cn.to(work)
        del cn
    solve = _Solver(hn, rho, schedule == "admm", work)
    del hn
    live_w = live.to(work)
    b, u = wn.clone(), torch.zeros_like(wn)
    keep = keep0.clone()
    grown, last, t, start = False, keep.clone(), 0, 0
    kept_total = max(1, int(keep0.sum()))
    ramp = min(period, iters)
    for t in range(iters):
        v = b + u
        if schedule == "admm" and t < ramp:
            keep = budget.keep(v.abs() * live_w, 1.0 - (1.0 - (t + 1) / ramp) ** 3)
        elif schedule == "alps" and t != start:  # at the start (and a restart) the method's mask
            keep = budget.keep(v.abs() * live_w)
        z = v * keep
        u = v - z  # u + b − z
        b = solve(target + solve.rho * (z - u))
        if schedule == "alps" and (t + 1) % period == 0:
            change = int((keep != last).sum())
            last = keep.clone()
            rel = change / kept_total
            if t + 1 >= _ALPS_SWITCH and rel < _ALPS_STABLE:
                break
            if change == 0 and grown:
                break
            factor = 1.3 if rel > 0.1 else 1.2 if rel > 0.005 else 1.1 if grown else 0.2
            if change and not grown and factor == 0.2:  # ρ₀ too large for a small move: restart with a smaller ρ
                b, u, keep, start = wn.clone(), torch.zeros_like(wn), keep0.clone(), t + 1
            grown = grown or factor > 1.0
            new_rho = min(_RHO_MAX, solve.rho * factor)
            u = u * (solve.rho / new_rho)  # the scaled dual follows ρ (the unscaled one is ρ·U)
            solve.rho = new_rho
    z = ((b + u) * keep).double() / d
    z[~keep] = 0.0
    if stats is not None:
        stats["iterations"] = t + 1 if iters else 0
        stats["rho"] = solve.rho
        stats["buffer_bytes"] = sum(x.numel() * x.element_size() for x in (wn, target, b, u, *solve.buffers()))
    return z, keep
