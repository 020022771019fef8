"""Shared glue of the one-shot calibration methods (wanda, mp-wanda, sparsegpt, seb with reconstruct): calibration
options, sampling the batches, and the optional sequential OBS re-fit of the kept weights."""

from dataclasses import dataclass

import torch

from ..calibration import CalibrationBatches, as_batches
from ..errors import ConfigError
from ..masks import Masks
from ..obs import obs_reconstruct
from ..registry import PruneContext
from ..sequential import sequential_apply


@dataclass
class CalibrationOptions:
    """Calibration settings (mixed into the one-shot method configs).

    Args:
        calibration_samples (`int`, defaults to 128): samples drawn (shuffled with `seed`) from the calibration data.
        calibration_batch_size (`int`, defaults to 16): samples per forward.
        reconstruct (`bool`, defaults to False): keep the method's mask, then re-fit the kept weights layer by layer
            (forward order, on the already re-fitted model) by the exact least-squares OBS update
            (`hf_mpprune.obs.obs_reconstruct`). Pruned entries stay exactly 0; kept weights change value.
            [D] target: the layer's dense output W·x on the inputs x produced by the already re-fitted earlier
            layers (SparseGPT's sequential convention), i.e. min ‖W X − Ŵ X‖ with X from the pruned model.
        percdamp (`float`, defaults to 0.01): Hessian damping λ = percdamp · mean(diag H) of the OBS solves.
    """

    calibration_samples: int = 128
    calibration_batch_size: int = 16
    reconstruct: bool = False
    percdamp: float = 0.01

    def _check_calibration_options(self) -> None:
        for name in ("calibration_samples", "calibration_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} must be an int >= 1 (default 128 samples, batch 16)")
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"reconstruct={self.reconstruct!r} must be True or False")
        if not 0.0 <= float(self.percdamp) < 1.0:
            raise ConfigError(f"percdamp={self.percdamp} must be in [0, 1); the SparseGPT default is 0.01")


def calibration_batches(ctx: PruneContext) -> CalibrationBatches:
    """Sample the calibration batches named by the config; record their identity in the ledger step."""
    cfg = ctx.config
    if ctx.calibration is None:
        raise ConfigError(f"method {cfg.method!r} with these options needs calibration data: prune(calibration=...)")
    batches = as_batches(
        ctx.calibration, num_samples=cfg.calibration_samples, batch_size=cfg.calibration_batch_size, seed=cfg.seed
    )
    ctx.record["calibration"] = batches.record()
    return batches


def reconstruct_(ctx: PruneContext, masks: Masks, batches: CalibrationBatches) -> None:
    """Re-fit the kept weights of every layer by `obs_reconstruct`, sequentially (model modified in place)."""
    damp = float(ctx.config.percdamp)
    stats: dict = {}

    def fit(layer, h: torch.Tensor) -> torch.Tensor:
        keep = layer.matrix_view(masks[layer.name].cpu())
        return obs_reconstruct(layer.matrix_view().detach().cpu(), h, keep, percdamp=damp, stats=stats)

    tm = sequential_apply(ctx.model, ctx.layers, batches.batches, fit, desc="obs-reconstruct")
    ctx.record["reconstruct"] = {
        "kind": "obs_least_squares", "percdamp": damp, "order": "forward, sequential",
        "target": "dense W x on inputs from the re-fitted earlier layers",
        "solver": "per row the smaller of kept / pruned (OBS) form; float32 Cholesky + float64 refinement",
        "solver_stats": stats, "time_split": tm.record(),
    }  # fmt: skip
    return tm


def time_split(ctx: PruneContext, forwards_s: float, mask_s: float, tm=None) -> None:
    """ctx.record["time_split"]: seconds in calibration forwards, Hessians, mask choice and reconstruction."""
    ctx.record["time_split"] = {
        "calibration_forwards_s": round(forwards_s + (tm.forward_s if tm else 0.0), 3),
        "hessians_s": round(tm.hessian_s if tm else 0.0, 3),
        "mask_choice_s": round(mask_s, 3),
        "reconstruction_s": round(tm.solve_s if tm else 0.0, 3),
    }


def check_rows(layer, norms: torch.Tensor) -> None:
    if norms.numel() != layer.shape[1]:
        raise ConfigError(
            f"layer {layer.name!r}: captured inputs have {norms.numel()} columns but the weight has {layer.shape[1]} "
            "(grouped convolutions are not supported by activation-aware methods): add it to ignore=[...]"
        )
