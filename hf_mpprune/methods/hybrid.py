"""Hybrid Magnitude–SER (ALGORITHMS.md §7): global magnitude at low sparsity, SER steps after the switch.

The registry entry runs ONE grid step (`MPPruner.prune(sparsity=s)`); `hf_mpprune.training.cycles.run_cycles` drives the
grid, the per-cycle fine-tunes and, for `switch="drop_threshold"`, the switch decision on a selection split.
"""

from dataclasses import dataclass

from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from .magnitude import select
from .ser import SERConfig, ser_step


_EPS = 1e-9


@dataclass
class HybridConfig(SERConfig):
    """Hybrid schedule settings (plus every SER field, used by the SER steps).

    Args:
        switch (`str`, defaults to `"fixed"`): `"fixed"` = magnitude for `s <= switch_sparsity`, SER after (§7.1);
            `"drop_threshold"` = magnitude until the post-FT **selection-split** metric falls more than
            `drop_threshold_pp` below the reference, SER from the next grid point (§7.2; decided by
            `run_cycles`, which then sets `transition_sparsity`). The evaluation split is never used.
        switch_sparsity (`float`, defaults to 0.20): last magnitude target of the fixed rule.
        drop_threshold_pp (`float`, defaults to 0.7): allowed drop in percentage points (metric given as a
            fraction in [0, 1], e.g. accuracy 0.953).
        drop_reference (`str`, defaults to `"baseline"`): `"baseline"` (dense model on the selection split),
            `"s20_start"` (post-FT metric at the first grid point >= `switch_sparsity`) or `"first_completed"` (post-FT at the first grid
            step).
        selection_metric (`str`, defaults to `"accuracy"`): key read from the selection evaluator's dict.
        transition_sparsity (`float`, *optional*): set by `run_cycles` once the drop rule fires; last magnitude
            target. While None under `"drop_threshold"`, every step is magnitude.
    """

    method: str = "hybrid"
    switch: str = "fixed"
    switch_sparsity: float = 0.20
    drop_threshold_pp: float = 0.7
    drop_reference: str = "baseline"
    selection_metric: str = "accuracy"
    transition_sparsity: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.switch not in ("fixed", "drop_threshold"):
            raise ConfigError(f"switch={self.switch!r} must be 'fixed' or 'drop_threshold'")
        if self.drop_reference not in ("baseline", "s20_start", "first_completed"):
            raise ConfigError(
                f"drop_reference={self.drop_reference!r} must be 'baseline', 's20_start' or 'first_completed'"
            )
        if not 0 <= self.switch_sparsity < 1 or self.drop_threshold_pp < 0:
            raise ConfigError("switch_sparsity must be in [0, 1) and drop_threshold_pp >= 0")


def uses_magnitude(cfg: HybridConfig, sparsity: float) -> bool:
    """The switch rule: True when the step to `sparsity` is a magnitude step."""
    if cfg.switch == "fixed":
        return sparsity <= cfg.switch_sparsity + _EPS
    return cfg.transition_sparsity is None or sparsity <= cfg.transition_sparsity + _EPS


@register_method("hybrid", HybridConfig, needs_spectra=True, needs_training=True, experimental=True)
def hybrid(ctx: PruneContext) -> Masks:
    """Hybrid Magnitude–SER: one grid step, magnitude before the switch point and SER after it."""
    cfg: HybridConfig = ctx.config
    rule = {"switch": cfg.switch, "switch_sparsity": cfg.switch_sparsity, "transition": cfg.transition_sparsity}
    if uses_magnitude(cfg, cfg.sparsity):
        ctx.record.update(stage="magnitude", switch_rule=rule, layer_weights=dict.fromkeys(ctx.layers.names, 1.0))
        return select(ctx, {la.name: la.weight.abs() for la in ctx.layers}, "global")
    masks = ser_step(ctx)
    ctx.record["switch_rule"] = rule
    return masks
