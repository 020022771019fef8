"""Classical RMT baseline (docs/algorithms.md §5), an ablation / negative control. Experimental.

Per cycle `i` (one grid step): MP-fit every layer's **current** weights; on even cycles sparsify the singular
vectors of bulk / spike components and recompose (previously pruned entries are zeroed again, so masks stay
cumulative); then a budgeted per-layer magnitude step with randomness score `a_ℓ = ((1 − E_ℓ)·B_ℓ)^{1.5/i}`,
the per-layer budgets `∝ a_ℓ·P_ℓ` rescaled so the global target `floor(s·P)` is hit exactly (§5 [D] (ii)).
"""

import math
from dataclasses import dataclass

import torch

from ..core.config import PruningConfig
from ..core.errors import ConfigError, SpectralError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from ..spectral.fit import fit_mp
from .common import keep_top


@dataclass
class RMTConfig(PruningConfig):
    """Classical RMT settings.

    Args:
        cycle (`int`, *optional*): cycle index `i`; default `max(1, round(s / cycle_step))` (0.05 → 1, 0.10 → 2).
        cycle_step (`float`, defaults to 0.05): grid spacing used to infer the cycle index.
        rho_base (`float`, defaults to 0.06), rho_growth (`float`, defaults to 1.02): `ρ_i = ρ_base·growth^i`,
            which scales the SV-sparsification threshold `θ = 1.125e-5·ρ_i·M·N`.
        sv_sparsify (`bool`, defaults to True): run the singular-vector step on even cycles.
        theta_mode (`str`, defaults to `"mn"`): `"mn"` (θ ∝ M·N, prior repo) or `"sqrt_mn"` (sweep variant).
    """

    method: str = "rmt"
    cycle: int | None = None
    cycle_step: float = 0.05
    rho_base: float = 0.06
    rho_growth: float = 1.02
    sv_sparsify: bool = True
    theta_mode: str = "mn"

    def __post_init__(self):
        super().__post_init__()
        if self.theta_mode not in ("mn", "sqrt_mn"):
            raise ConfigError(f"theta_mode={self.theta_mode!r} must be 'mn' or 'sqrt_mn'")
        if self.cycle is not None and (not isinstance(self.cycle, int) or self.cycle < 1):
            raise ConfigError(f"cycle={self.cycle!r} must be a positive int or None")
        if not self.cycle_step > 0 or not self.rho_base > 0 or not self.rho_growth > 0:
            raise ConfigError("cycle_step, rho_base and rho_growth must be > 0")


# ---- pure pieces --------------------------------------------------------------------------------------------
def randomness_score(fit_error: float, bulk_fraction: float, cycle: int) -> float:
    """`a = ((1 − E)·B)^{1.5/i}` with E, B clamped to [0, 1] (B as a fraction)."""
    base = min(1.0, max(0.0, 1.0 - fit_error)) * min(1.0, max(0.0, bulk_fraction))
    return base ** (1.5 / cycle)


def apportion(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Integers n_ℓ ≤ caps_ℓ summing to `total`, proportional to weights (largest remainder, index tie-break).

    Layers at their cap hand their excess to the others; zero weights fall back to capacity-proportional shares.
    """
    if total > sum(caps):
        raise ValueError(f"cannot place {total} prunes in capacity {sum(caps)}")
    out = [0] * len(caps)
    left = total
    while left > 0:
        open_ = [i for i in range(len(caps)) if out[i] < caps[i]]
        w = [weights[i] for i in open_]
        if sum(w) <= 0:
            w = [caps[i] - out[i] for i in open_]
        share = [left * wi / sum(w) for wi in w]
        add = [min(math.floor(x), caps[i] - out[i]) for x, i in zip(share, open_)]
        rest = left - sum(add)
        order = sorted(range(len(open_)), key=lambda j: (-(share[j] - math.floor(share[j])), j))
        for j in order:
            if rest == 0:
                break
            if out[open_[j]] + add[j] < caps[open_[j]]:
                add[j] += 1
                rest -= 1
        for j, i in enumerate(open_):
            out[i] += add[j]
        left = total - sum(out)
    return out


def sv_sparsify(w: torch.Tensor, sigma_plus: float, rho: float, theta_mode: str = "mn") -> torch.Tensor:
    """Zero small singular-vector coordinates (bulk: θ·max(1/750, (1 − s_i/σ₊)^30); spikes: θ/750); recompose."""
    m, n = w.shape
    theta = 1.125e-5 * rho * (m * n if theta_mode == "mn" else math.sqrt(m * n))
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    bulk = s < sigma_plus
    g = torch.clamp(1 - s / sigma_plus, min=0.0) ** 30
    thr = torch.where(bulk, theta * torch.clamp(g, min=1 / 750), torch.full_like(s, theta / 750))
    u = torch.where(u.abs() < thr[None, :], torch.zeros_like(u), u)
    vh = torch.where(vh.abs() < thr[:, None], torch.zeros_like(vh), vh)
    return ((u * s) @ vh).to(w.dtype)


# ---- glue ---------------------------------------------------------------------------------------------------
def _fit(layer, spectral):
    try:
        return fit_mp(layer.matrix_view().detach(), spectral)
    except SpectralError:
        return None


@register_method("rmt", RMTConfig, experimental=True)
def rmt(ctx: PruneContext) -> Masks:
    """Classical RMT baseline (ablation): SV sparsification on even cycles + MP-budgeted per-layer magnitude."""
    cfg: RMTConfig = ctx.config
    i = cfg.cycle or max(1, round(cfg.sparsity / cfg.cycle_step))
    rho = cfg.rho_base * cfg.rho_growth**i
    prev = {la.name: ctx.previous[la.name].cpu() if ctx.previous is not None else None for la in ctx.layers}
    fits = {la.name: _fit(la, cfg.spectral) for la in ctx.layers}
    sv_done = []
    if cfg.sv_sparsify and i % 2 == 0:
        with torch.no_grad():
            for la in ctx.layers:
                if fits[la.name] is None:
                    continue
                new = la.from_matrix(sv_sparsify(la.matrix_view().detach(), fits[la.name].sigma_plus, rho,
                                                 cfg.theta_mode))  # fmt: skip
                if prev[la.name] is not None:
                    new = new.masked_fill(~prev[la.name].to(new.device), 0.0)
                la.weight.copy_(new)
                sv_done.append(la.name)
    a = [randomness_score(f.fit_error, f.bulk_fraction, i) if f is not None else 0.0 for f in fits.values()]
    nnz = [int(prev[la.name].sum()) if prev[la.name] is not None else la.numel for la in ctx.layers]
    already = sum(la.numel for la in ctx.layers) - sum(nnz)
    need = math.floor(cfg.sparsity * ctx.layers.total_params) - already
    counts = apportion(need, [ai * la.numel for ai, la in zip(a, ctx.layers)], nnz)
    keeps = {}
    for la, n_new, k in zip(ctx.layers, counts, nnz):
        score = la.weight.detach().abs().float().cpu()
        if prev[la.name] is not None:
            score = score.masked_fill(~prev[la.name], -1.0)
        keeps[la.name] = keep_top([score], la.numel - k + n_new)[0]
    ctx.record.update(
        stage="rmt", cycle=i, rho=rho, sv_sparsified_layers=sv_done, randomness_score=dict(zip(ctx.layers.names, a)),
        new_pruned_by_layer=dict(zip(ctx.layers.names, counts)),
        fits={n: None if f is None else {"sigma_plus": f.sigma_plus, "fit_error": f.fit_error,
                                          "bulk_fraction": f.bulk_fraction} for n, f in fits.items()},
        decisions={"budget": "a_l * P_l rescaled to hit floor(s*P) exactly", "sv_recompose": "re-masked by previous",
                   "spectra": "current weights each cycle", "finetune": "pipeline's standard per-cycle FT"},
    )  # fmt: skip
    return Masks(keeps)
