"""Magnitude pruning (docs/algorithms.md §3): global (default) or per-layer, cumulative, exact to the entry."""

from dataclasses import dataclass

import torch

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from .common import CalibrationOptions, calibration_batches, reconstruct_, select
from .kn.select import magnitude_kn


@dataclass
class MagnitudeConfig(CalibrationOptions, PruningConfig):
    """Global magnitude pruning.

    Args:
        scope (`str`, defaults to `"global"`): `"global"` prunes the `floor(s * P_total)` smallest |W| over all
            registered layers; `"layer"` prunes `floor(s * numel)` in every layer.
        calibration_samples, calibration_batch_size, reconstruct, percdamp: see `CalibrationOptions`; calibration
            is needed only with `reconstruct=True` (OBS least-squares re-fit of the kept weights).

    With `pattern` ("k:n", k kept of n) it is magnitude k:n instead: the k largest |W| per (row, group) of n
    inputs, `sparsity` and `scope` unused, the task head and ineligible convs left as they are (see `kn.plan`).
    """

    method: str = "magnitude"
    scope: str = "global"

    def __post_init__(self):
        super().__post_init__()
        self._check_calibration_options()
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope={self.scope!r} must be 'global' or 'layer'")


@register_method("magnitude", MagnitudeConfig)
def magnitude(ctx: PruneContext) -> Masks:
    """Global (or per-layer) unstructured magnitude pruning, cumulative across cycles; k:n with `pattern`."""
    batches = calibration_batches(ctx) if ctx.config.sequential_pass else None  # fail before any work if missing
    if ctx.config.pattern is not None:  # k largest |W| per (row, group), head skipped (docs/algorithms.md §8.10)
        dense = [la.weight.detach().clone() for la in ctx.layers] if ctx.config.sequential_pass else []
        masks = magnitude_kn(ctx)  # applies the masks (for its legality audit); the re-fit targets the dense weights
        with torch.no_grad():
            for la, w in zip(ctx.layers, dense):
                la.weight.copy_(w)
    else:
        masks = select(ctx, lambda layer: layer.weight.detach().abs(), ctx.config.scope)  # scores made on demand
    if ctx.config.sequential_pass:
        reconstruct_(ctx, masks, batches)
    return masks
