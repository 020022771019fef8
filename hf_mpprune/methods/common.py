"""Shared glue of the one-shot calibration methods (wanda, mp-wanda, sparsegpt, seb with reconstruct): calibration
options, sampling the batches, and the optional sequential OBS re-fit of the kept weights."""

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.calibration import CalibrationBatches, as_batches
from ..core.errors import ConfigError
from ..core.layers import LayerSet
from ..core.masks import Masks
from ..core.obs import obs_reconstruct
from ..core.registry import PruneContext
from ..core.sequential import sequential_apply


logger = logging.getLogger(__name__)


@dataclass
class CalibrationOptions:
    """Calibration settings (mixed into the one-shot method configs).

    Args:
        calibration_samples (`int`, defaults to 128): samples drawn (shuffled with `seed`) from the calibration data.
        calibration_batch_size (`int`, defaults to 16): samples per forward.
        reconstruct (`bool`, defaults to False): keep the method's mask, then re-fit the kept weights layer by layer
            (forward order, on the already re-fitted model) by the exact least-squares OBS update
            (`hf_mpprune.core.obs.obs_reconstruct`). Pruned entries stay exactly 0; kept weights change value.
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
    layers = LayerSet([la for la in ctx.layers if grouped_reason(la) is None], ctx.layers.excluded)
    for la in ctx.layers:
        if grouped_reason(la) is not None:
            logger.info(
                "reconstruct: %s skipped (%s): its weights keep their pruned values", la.name, grouped_reason(la)
            )

    def fit(layer, h: torch.Tensor) -> torch.Tensor:
        keep = layer.matrix_view(masks[layer.name].cpu())
        return obs_reconstruct(layer.matrix_view().detach().cpu(), h, keep, percdamp=damp)

    sequential_apply(ctx.model, layers, batches.batches, fit, desc="obs-reconstruct")
    ctx.record["reconstruct"] = {
        "kind": "obs_least_squares", "percdamp": damp, "order": "forward, sequential",
        "target": "dense W x on inputs from the re-fitted earlier layers",
    }  # fmt: skip


def check_rows(layer, norms: torch.Tensor) -> None:
    if norms.numel() != layer.shape[1]:
        raise ConfigError(
            f"layer {layer.name!r}: captured inputs have {norms.numel()} columns but the weight has {layer.shape[1]} "
            "(grouped convolutions are not supported by activation-aware methods): add it to ignore=[...]"
        )


def grouped_reason(layer) -> str | None:
    """Why activation-aware methods cannot score `layer` (a grouped / depthwise conv), or None."""
    groups = getattr(layer.module, "groups", 1)
    if layer.kind == "conv2d" and groups != 1:
        return f"grouped/depthwise conv (groups={groups}): its inputs do not map to one (out, in) matrix"
    return None


def skips_grouped_convs(fn: Callable[[PruneContext], Masks]) -> Callable[[PruneContext], Masks]:
    """Run an activation-aware mask function on the layers it can score; grouped/depthwise convs are skipped with
    a logged reason (as CAST does) and keep their current mask (dense, or the previous cycle's). The skipped layers
    go to the ledger step under `skipped`; the target sparsity is then met over the layers that were pruned."""

    @functools.wraps(fn)
    def wrapper(ctx: PruneContext) -> Masks:
        skipped = {la.name: r for la in ctx.layers if (r := grouped_reason(la)) is not None}
        if not skipped:
            return fn(ctx)
        if len(skipped) == len(ctx.layers):
            raise ConfigError(
                f"method {ctx.config.method!r} cannot score any registered layer: all are grouped/depthwise convs "
                f"({sorted(skipped)[:5]}); use a weight-only method such as 'magnitude'"
            )
        for name, reason in skipped.items():
            logger.warning("%s: skipping %s (%s); it keeps its current mask", ctx.config.method, name, reason)
        kept = LayerSet([la for la in ctx.layers if la.name not in skipped], ctx.layers.excluded)
        inner = dataclasses.replace(ctx, layers=kept)
        masks = fn(inner)
        ctx.record.update(inner.record)
        ctx.record["skipped"] = skipped
        out = {}
        for la in ctx.layers:
            if la.name not in skipped:
                out[la.name] = masks[la.name]
            elif ctx.previous is not None and la.name in ctx.previous:
                out[la.name] = ctx.previous[la.name]
            else:
                out[la.name] = torch.ones(la.weight.shape, dtype=torch.bool)
        return Masks(out, masks.pattern)

    return wrapper
