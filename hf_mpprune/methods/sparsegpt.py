"""SparseGPT (Frantar & Alistarh, 2023) as a registered one-shot baseline: OBS mask selection with weight updates,
layers calibrated sequentially on the already pruned model. Math in `hf_mpprune.core.obs`."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.obs import sparsegpt_prune, sweep_factor
from ..core.refine import LayerRefiner
from ..core.refit import hessian_dtype, tune_split
from ..core.registry import PruneContext, register_method
from ..core.sequential import sequential_apply
from .allocation import AllocationOptions, layer_counts, uses_spectra
from .common import CalibrationOptions, MPBudgetOptions, calibration_batches, previous_matrix, skips_grouped_convs


@dataclass
class SparseGPTConfig(AllocationOptions, CalibrationOptions, PruningConfig):
    """SparseGPT: per layer H = 2XᵀX/rows (+ percdamp·mean diag), column blocks with lazy Cholesky(H⁻¹) updates.

    Rounding [D]: exactly floor(s·P) entries overall, like every unstructured method: layer ℓ prunes floor(s·numel_ℓ)
    (uniform per layer, as in the paper) plus one of the remainder by largest fraction (ties: layer order), spread
    over the column blocks by a running budget (also exact along cumulative grids). With `pattern="k:n"`
    k of every n inputs are kept per row (tail columns dense). Cost: one partial forward of the calibration data per
    layer (forward order) plus one N×N Cholesky and O(M·N²) updates per layer.

    Args:
        allocation, owl_m, owl_lambda, alpha_epsilon, alpha_xmin: the split of floor(s·P) over layers, see
            `AllocationOptions` (default `"uniform"`, the paper's rule; OWL's outlier ratios come from one extra
            forward of the dense model).
        blocksize (`int`, defaults to 128): columns per lazy-update block (multiple of n for k:n).
        sequential (`str`, defaults to `"layer"`): `"layer"` = every layer calibrated on the model with all earlier
            layers already pruned; `"block"` = llm-compressor's convention (`sequential_targets` = the transformer
            block): all layers of a block calibrated in one forward of the block, then pruned; cheaper forwards.
        calibration_samples, calibration_batch_size, percdamp: see `CalibrationOptions`. `reconstruct=True` is
            refused without `refine` (SparseGPT updates the kept weights by construction, a re-fit would do
            nothing); `refine` starts from SparseGPT's mask and the dense weights, and `refine="dsnot"` needs
            `reconstruct=True`, as the swaps do not update weights. XᵀX products in float32 for float32 models,
            as the reference implementation.
    """

    method: str = "sparsegpt"
    blocksize: int = 128
    sequential: str = "layer"
    damping_without_refit = True  # percdamp damps SparseGPT's own Hessian (a class attribute, not a field)
    runs_sequential = True  # its OBS sweep is a sequential pass (block_epochs runs inside it)

    def __post_init__(self):
        super().__post_init__()
        if self.reconstruct is True and self.refine != "dsnot":
            raise ConfigError(
                f"reconstruct=True has no effect on method {self.method!r}: SparseGPT already updates the kept "
                "weights from the calibration Hessian (OBS) and refine='admm' / 'alps' end with their own re-fit; "
                "drop reconstruct, or use wanda / mp-wanda with it (only refine='dsnot' needs it)"
            )
        self._check_calibration_options()
        if self.refit_target != "sequential":
            raise ConfigError(
                f"refit_target={self.refit_target!r} is not supported on method {self.method!r}: SparseGPT's OBS "
                "updates fit the sequential target; use wanda / mp-wanda / cast with reconstruct=True or refine='alps'"
            )
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise ConfigError(f"blocksize={self.blocksize!r} must be an int >= 1 (the paper uses 128)")
        if self.sequential not in ("layer", "block"):
            raise ConfigError(f"sequential={self.sequential!r} must be 'layer' or 'block'")
        self._check_allocation()
        if self.refine == "dsnot" and not self.reconstruct:
            raise ConfigError(
                "refine='dsnot' on SparseGPT needs reconstruct=True: the swaps keep the dense weights of the new mask "
                "and would discard SparseGPT's updates"
            )


@register_method("sparsegpt", SparseGPTConfig, needs_spectra=uses_spectra, needs_calibration=True)
@skips_grouped_convs
def sparsegpt(ctx: PruneContext) -> Masks:
    """SparseGPT: OBS mask selection + weight updates from the calibration Hessian, sequential over layers."""
    return run_sparsegpt(ctx)


def run_sparsegpt(ctx: PruneContext) -> Masks:
    """SparseGPT over the registered layers, each pruning its count under the config's allocation (or the k:n
    pattern)."""
    cfg = ctx.config
    batches = calibration_batches(ctx)
    counts = layer_counts(ctx, batches=batches) if cfg.pattern is None else {}
    target = cfg.pattern if cfg.pattern is not None else cfg.sparsity
    keeps: dict[str, torch.Tensor] = {}
    shared: list = [None, None]  # (H, its factor): layers fed one tensor (q / k / v) get the same H object

    refiner = LayerRefiner(cfg, cfg.refit_kwargs(), {}) if cfg.refine is not None else None

    def prune_layer(layer, h: torch.Tensor) -> torch.Tensor:
        if shared[0] is not h:
            shared[:] = [h, sweep_factor(h, cfg.percdamp, layer.weight.dtype)]
        w = layer.matrix_view().detach().cpu()
        w_new, keep = sparsegpt_prune(
            w,
            h,
            target,
            cfg.blocksize,
            cfg.percdamp,
            previous_matrix(ctx, layer),
            count=counts[layer.name] if cfg.pattern is None else None,
            factor=shared[1],
        )
        if refiner is not None:  # from SparseGPT's mask and the dense weights
            w_new, keep = refiner(layer.name, w, h, keep, pattern=cfg.pattern, forced=previous_matrix(ctx, layer))
        keeps[layer.name] = layer.from_matrix(keep)
        return w_new

    tm = sequential_apply(
        ctx.model,
        ctx.layers,
        batches.batches,
        prune_layer,
        desc="sparsegpt",
        granularity=cfg.sequential,
        hessian_dtype=hessian_dtype(ctx.layers),
        tune=cfg.block_tune(),
    )
    ctx.record["time_split"] = {
        "calibration_forwards_s": round(tm.forward_s, 3),
        "hessians_s": round(tm.hessian_s, 3),
        "mask_choice_and_update_s": round(tm.solve_s, 3),  # SparseGPT chooses the mask inside the OBS sweep
        "path": tm.path,
        **{k: v for k, v in tm.extra.items() if k in ("joined_batches", "block_tune")},
    } | tune_split(tm)
    ctx.record.setdefault("sparsegpt", {}).update(
        {
            "blocksize": cfg.blocksize,
            "percdamp": cfg.percdamp,
            "rounding": "exact: floor(s*P) overall, floor(s*numel_l) + largest remainder, running budget per block",
            "order": f"forward, sequential on the pruned model (granularity: {cfg.sequential})",
        }
    )
    if refiner is not None:
        ctx.record["refine"] = refiner.record()
    return Masks({la.name: keeps[la.name] for la in ctx.layers}, cfg.pattern)


# ---- mp-sparsegpt: SparseGPT with MP layer budgets (same file: it is SparseGPT with other counts) ----------
@dataclass
class MPSparseGPTConfig(MPBudgetOptions, SparseGPTConfig):
    """SparseGPT with MP layer budgets: `sparsegpt` with `allocation="mp"` and its MP settings.

    Args:
        signal, beta, decay_end, decay_power, max_layer_sparsity: see `MPBudgetOptions` (as `MPWandaConfig`).
        blocksize, calibration_samples, calibration_batch_size, percdamp: see `SparseGPTConfig`.
    """

    method: str = "mp-sparsegpt"
    allocation: str = "mp"

    _fixed_allocation: ClassVar[str | None] = "mp"

    def __post_init__(self):
        super().__post_init__()
        self._check_mp_budget()


@register_method("mp-sparsegpt", MPSparseGPTConfig, needs_spectra=True, needs_calibration=True)
def mp_sparsegpt(ctx: PruneContext) -> Masks:
    """SparseGPT (OBS masks + updates, sequential) with per-layer budgets from the dense model's MP spectra."""
    return run_sparsegpt(ctx)
