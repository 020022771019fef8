"""Wanda (Sun et al., 2023): score |W_ij| · ‖x_j‖₂ from calibration activations, prune the lowest per output row."""

import time
from dataclasses import dataclass

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from .allocation import AllocationOptions, layer_counts, uses_spectra
from .common import (
    CalibrationOptions,
    calibration_batches,
    masks_from_rows,
    previous_matrix,
    reconstruct_,
    rows_keep,
    skips_grouped_convs,
    time_split,
    wanda_scores,
)


@dataclass
class WandaConfig(AllocationOptions, CalibrationOptions, PruningConfig):
    """Wanda: activation-aware magnitude, compared within each output row.

    Rounding [D] (`rounding`): `"exact"` (default) prunes exactly floor(s·P) entries over the registered layers, like
    every other unstructured method: layer counts floor(s·P_ℓ) plus the remainder by largest fraction (ties: layer
    order), and inside a layer the rows' counts differ by at most one (earlier-pruned entries count first; extra
    entries go to the lowest rows, lower index first). It equals reference Wanda whenever s·N_in is an integer for
    every layer (e.g. s = 0.5 on BERT/ViT shapes). `"row"` is the reference rule: floor(s·N_in) per output row, so
    the achieved sparsity is Σ_ℓ M_ℓ·floor(s·N_ℓ)/P ≤ s. Ties: lower input index pruned first.
    With `pattern="k:n"` the k highest scores of every n consecutive inputs are kept per row (tail stays dense).
    Padded token positions (a batch's 2-D `attention_mask`) are left out of ‖x_j‖.

    Args:
        allocation, owl_m, owl_lambda, alpha_epsilon, alpha_xmin: the split of floor(s·P) over layers, see
            `AllocationOptions` (default `"uniform"`; any other needs `rounding="exact"` and no `pattern`).
        calibration_samples, calibration_batch_size, reconstruct, percdamp: see `CalibrationOptions`.
    """

    method: str = "wanda"
    rounding: str = "exact"

    def __post_init__(self):
        super().__post_init__()
        self._check_calibration_options()
        if self.rounding not in ("exact", "row"):
            raise ConfigError(
                f"rounding={self.rounding!r} must be 'exact' (floor(s*P) overall) or 'row' (floor(s*N_in) per row)"
            )
        self._check_allocation()
        if self.allocation != "uniform" and self.rounding == "row":
            raise ConfigError(f"allocation={self.allocation!r} sets per-layer budgets: it needs rounding='exact'")


@register_method("wanda", WandaConfig, needs_spectra=uses_spectra, needs_calibration=True)
@skips_grouped_convs
def wanda(ctx: PruneContext) -> Masks:
    """Wanda: |W|·‖x‖₂ per output row from calibration activations (optionally OBS re-fit of kept weights)."""
    batches = calibration_batches(ctx)
    t0 = time.perf_counter()
    scores = wanda_scores(ctx, batches)
    t1 = time.perf_counter()
    cfg = ctx.config
    if cfg.pattern is None and cfg.rounding == "exact":
        counts = layer_counts(ctx, scores=scores)
        masks = Masks(
            {la.name: la.from_matrix(rows_keep(scores[la.name], counts[la.name], previous_matrix(ctx, la))) for la in ctx.layers}
        )  # fmt: skip
        rule = "exact: floor(s*P) overall, floor(s*P_l) + largest remainder per layer, rows differ by <= 1"
    else:
        masks = masks_from_rows(ctx, scores, dict.fromkeys(scores, cfg.sparsity))
        rule = "floor(s*N_in) per output row" if cfg.pattern is None else f"{cfg.pattern} per row"
    ctx.record["wanda"] = {"rounding": rule, "tie_break": "lower input index pruned first"}
    t2 = time.perf_counter()
    tm = reconstruct_(ctx, masks, batches) if ctx.config.sequential_pass else None
    time_split(ctx, t1 - t0, t2 - t1, tm)
    return masks
