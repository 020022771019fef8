"""MP-budgeted SparseGPT (new, issue 17): SparseGPT's OBS mask selection and weight updates, with per-layer prune
counts from the same shape-free MP statistic as `mp-wanda` (`mapping="layer"`): c_ℓ ∝ w_ℓ·numel_ℓ, capped at
`max_layer_sparsity`, exactly floor(s·P) overall (`wanda.layer_budgets`). Same cost as `sparsegpt` plus the MP
fit of the dense spectra. With a k:n pattern every layer's density is fixed, so this is plain SparseGPT k:n."""

from dataclasses import dataclass

from ..errors import ConfigError
from ..masks import Masks
from ..registry import PruneContext, register_method
from .mp_wanda import SIGNALS, layer_weights
from .sparsegpt import SparseGPTConfig, run_sparsegpt
from .wanda import layer_budgets


@dataclass
class MPSparseGPTConfig(SparseGPTConfig):
    """SparseGPT with MP layer budgets.

    Args:
        signal (`str`, defaults to `"spike_energy_fraction"`), beta (`float`, defaults to -0.25), decay_end,
            decay_power: as `MPWandaConfig` (w_ℓ = max(0.1, 1 + β·d(s)·z_ℓ) of the oriented, z-scored signal).
        max_layer_sparsity (`float`, defaults to 0.95): cap on any layer's sparsity.
        blocksize, calibration_samples, calibration_batch_size, percdamp: see `SparseGPTConfig`.
    """

    method: str = "mp-sparsegpt"
    signal: str = "spike_energy_fraction"
    beta: float = -0.25
    decay_end: float | None = None
    decay_power: float = 1.0
    max_layer_sparsity: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal={self.signal!r} must be one of {sorted(SIGNALS)}")
        if self.decay_end is not None and not self.decay_end > 0:
            raise ConfigError(f"decay_end={self.decay_end} must be > 0, or None for no decay")
        if not self.sparsity <= self.max_layer_sparsity < 1.0:
            raise ConfigError(f"max_layer_sparsity={self.max_layer_sparsity} must be in [sparsity={self.sparsity}, 1)")


@register_method("mp-sparsegpt", MPSparseGPTConfig, needs_spectra=True, needs_calibration=True)
def mp_sparsegpt(ctx: PruneContext) -> Masks:
    """SparseGPT (OBS masks + updates, sequential) with per-layer budgets from the dense model's MP spectra."""
    cfg = ctx.config
    counts = {}
    if cfg.pattern is None:
        weights = layer_weights(ctx)
        numel = {la.name: la.numel for la in ctx.layers}
        counts = layer_budgets(numel, weights, cfg.sparsity, cfg.max_layer_sparsity)
        ctx.record["sparsegpt"] = {
            "budgets": "mp", "signal": cfg.signal, "beta": cfg.beta, "layer_weights": weights,
            "layer_sparsity": {n: counts[n] / numel[n] for n in counts},
        }  # fmt: skip
    return run_sparsegpt(ctx, counts)
