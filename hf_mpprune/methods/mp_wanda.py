"""MP-budgeted Wanda (new): Wanda scores inside each layer, layer budgets from a shape-free MP statistic.

Raw σ₊ = σ(√M + √N) grows with the matrix shape, so z-scoring it across 384×384 and 1536×384 layers mostly
measures shape (issue 4's measured warning). The signals here are shape-free; each is oriented so that a larger
value means "more random-like" (prune more), and mapped to layer weights by SEB's rule
w_ℓ = max(0.1, 1 + β · d(s) · z_ℓ) (`budgets.seb_weights`). The defaults were chosen on a selection split of
sentences disjoint from the reported evaluation split and from calibration (benchmarks/RESULTS.md).
"""

import time
from dataclasses import dataclass

from ..core.calibration import input_sq_norms
from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from .common import (
    SIGNALS,
    CalibrationOptions,
    MPBudgetOptions,
    calibration_batches,
    check_rows,
    kn_prune,
    layer_budgets,
    layer_weights,
    previous_matrix,
    reconstruct_,
    rows_keep,
    select,
    skips_grouped_convs,
    time_split,
    wanda_score,
)


MAPPINGS = ("layer", "global")


@dataclass
class MPWandaConfig(MPBudgetOptions, CalibrationOptions, PruningConfig):
    """MP-budgeted Wanda.

    Args:
        signal (`str`, defaults to `"spike_energy_fraction"`): MP statistic per layer (dense spectra, fitted
            once): one of `sigma2_rel` (σ̂² / mean W²), `bulk_fraction`, `spike_energy_fraction`, `fit_error`, `edge_ratio`
            (σ₊/s₁), `hill_alpha`, or the shape-dependent raw `sigma_plus` (ablation only).
        mapping (`str`, defaults to `"global"`): `"layer"` = per-layer sparsity s_ℓ ∝ w_ℓ (capped at
            `max_layer_sparsity`, water-filled so the total is exactly floor(s·P); layer counts by largest
            remainder, spread evenly over rows, earlier rows take the remainder) with Wanda's per-row selection
            inside; `"global"` = global selection (exactly floor(s·P), index tie-break) of Wanda scores divided by
            their row mean and by w_ℓ.
        beta (`float`, defaults to -0.25): modulation strength β (0 = uniform budgets: plain per-row Wanda for
            `mapping="layer"` up to rounding). β > 0 prunes random-like layers more (the paper's SEB direction);
            β < 0 protects them and prunes spike-dominated layers more.
        decay_end (`float`, *optional*): s_d of d(s) = max(0, 1 − s/s_d)^p; None = no decay (d = 1).
        decay_power (`float`, defaults to 1.0): p.
        max_layer_sparsity (`float`, defaults to 0.95): cap on any layer's sparsity (`mapping="layer"`).
        calibration_samples, calibration_batch_size, reconstruct, percdamp: see `CalibrationOptions`.

    Defaults [D]: chosen on MiniLM's selection split (s = 0.5, 0.6; 2 seeds; grid of 7 signals × 2 mappings × 7 β):
    every β > 0 hurt for every signal; β = −0.25 with spike_energy_fraction / global was best (benchmarks/RESULTS.md).
    """

    method: str = "mp-wanda"
    mapping: str = "global"

    def __post_init__(self):
        super().__post_init__()
        self._check_calibration_options()
        self._check_mp_budget()
        if self.mapping not in MAPPINGS:
            raise ConfigError(f"mapping={self.mapping!r} must be one of {MAPPINGS}")


@register_method("mp-wanda", MPWandaConfig, needs_spectra=True, needs_calibration=True)
@skips_grouped_convs
def mp_wanda(ctx: PruneContext) -> Masks:
    """MP-budgeted Wanda: Wanda scores inside each layer, layer budgets from a shape-free MP statistic."""
    cfg = ctx.config
    batches = calibration_batches(ctx)
    t0 = time.perf_counter()
    sq = input_sq_norms(ctx.model, ctx.layers, batches)  # per-layer input norms: small; scores are made on demand
    for la in ctx.layers:  # a bad layer fails before any mask work
        check_rows(la, sq[la.name])
    t1 = time.perf_counter()
    weights = layer_weights(ctx)
    record = {
        "signal": cfg.signal, "orientation": SIGNALS[cfg.signal][1], "mapping": cfg.mapping, "beta": cfg.beta,
        "decay_end": cfg.decay_end, "decay_power": cfg.decay_power, "layer_weights": weights,
        "spectra": "dense model, fitted once (static)",
    }  # fmt: skip

    def score(la):
        return wanda_score(la, sq[la.name])  # (out, in) float64, one layer at a time

    def mapped(la):  # Wanda score / its row mean / w_l, float32: one layer of the global ranking
        s = score(la)
        return la.from_matrix(s.div_(s.mean(1, keepdim=True).clamp_min(1e-30)).div_(weights[la.name]).float())

    if cfg.pattern is not None:  # k:n fixes every layer's density: the weights cannot move budgets
        masks = Masks(
            {la.name: la.from_matrix(kn_prune(score(la), cfg.pattern, previous_matrix(ctx, la))) for la in ctx.layers},
            cfg.pattern,
        )  # fmt: skip
    elif cfg.mapping == "global":
        masks = select(ctx, mapped, "global")  # streamed: one layer's scores in memory, plus the masks
    else:
        counts = layer_budgets({la.name: la.numel for la in ctx.layers}, weights, cfg.sparsity, cfg.max_layer_sparsity)
        record["layer_counts"] = counts
        masks = Masks(
            {la.name: la.from_matrix(rows_keep(score(la), counts[la.name], previous_matrix(ctx, la))) for la in ctx.layers}
        )  # fmt: skip
    ctx.record["mp_wanda"] = record
    t2 = time.perf_counter()
    tm = reconstruct_(ctx, masks, batches) if cfg.sequential_pass else None
    time_split(ctx, t1 - t0, t2 - t1, tm)
    return masks
