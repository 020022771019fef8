"""Spectral Edge Budgeting (docs/algorithms.md §4): global magnitude with per-layer MP-edge weights, one-shot."""

import dataclasses
from dataclasses import dataclass

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import PruneContext, register_method
from .common import CalibrationOptions, SEBRegime, calibration_batches, reconstruct_, seb_regime, seb_weights, select


_SIGNALS = ("sigma_plus", "hill_alpha")


@dataclass
class SEBConfig(CalibrationOptions, PruningConfig):
    """SEB: score |W_ij| / w_ℓ(s), prune the floor(s·P) smallest globally (cumulative, index tie-break).

    w_ℓ(s) = max(0.1, 1 + β_type · d(s) · z_ℓ), z_ℓ the population z-score of the signal over all registered layers,
    d(s) = max(0, 1 − s/s_d)^p (§4.1). Spectra are the **dense** model's (fitted once by the pruner, never refit
    after pruning [D, §17.5: static]). Layers with a missing signal get z = 0.

    Args:
        regime (`str`, defaults to `"four"`): `"four"` takes signal/β/s_d/p from the four-regime table (§4.3) at
            the target sparsity; `"fixed"` uses only the fields below (defaults: σ₊, β = 1.25, s_d = 0.70, p = 1).
        seb_signal (`str`, *optional*): override the signal, `"sigma_plus"` or `"hill_alpha"`.
        seb_beta (`float`, *optional*): override β (base, also used for attn/mlp unless set below). β = 0 is plain
            global magnitude.
        seb_beta_attn / seb_beta_mlp (`float`, *optional*): layer-type strengths for attention / MLP layers.
        seb_decay_end (`float`, *optional*): override s_d. seb_decay_power (`float`, *optional*): override p.
        calibration_samples, calibration_batch_size, reconstruct, percdamp: see `CalibrationOptions`; calibration
            is needed only with `reconstruct=True`.
    """

    method: str = "seb"
    regime: str = "four"
    seb_signal: str | None = None
    seb_beta: float | None = None
    seb_beta_attn: float | None = None
    seb_beta_mlp: float | None = None
    seb_decay_end: float | None = None
    seb_decay_power: float | None = None

    def __post_init__(self):
        super().__post_init__()
        self._check_calibration_options()
        if self.regime not in ("four", "fixed"):
            raise ConfigError(f"regime={self.regime!r} must be 'four' (the §4.3 table) or 'fixed'")
        if self.seb_signal is not None and self.seb_signal not in _SIGNALS:
            raise ConfigError(f"seb_signal={self.seb_signal!r} must be one of {_SIGNALS}")
        if self.seb_decay_end is not None and not self.seb_decay_end > 0:
            raise ConfigError(f"seb_decay_end={self.seb_decay_end} must be > 0 (e.g. 0.7)")
        if self.seb_decay_power is not None and self.seb_decay_power < 0:
            raise ConfigError(f"seb_decay_power={self.seb_decay_power} must be >= 0 (1 = linear decay)")

    def seb_regime(self) -> SEBRegime:
        """The regime in force at this config's sparsity, with explicit overrides applied."""
        base = seb_regime(self.sparsity) if self.regime == "four" else SEBRegime("sigma_plus", 1.25, 0.70)
        over = {
            "signal": self.seb_signal, "beta": self.seb_beta, "beta_attn": self.seb_beta_attn,
            "beta_mlp": self.seb_beta_mlp, "decay_end": self.seb_decay_end, "decay_power": self.seb_decay_power,
        }  # fmt: skip
        over = {k: v for k, v in over.items() if v is not None}
        if "beta" in over and self.seb_beta_attn is None and self.seb_beta_mlp is None:
            over.update(beta_attn=None, beta_mlp=None)  # an explicit β replaces the table's per-type strengths
        return dataclasses.replace(base, **over)


def layer_signal(ctx: PruneContext, signal: str) -> dict[str, float | None]:
    """The dense-model spectral signal of every registered layer (None where the fit has no value)."""
    fits = ctx.spectra.by_layer() if ctx.spectra is not None else {}
    if not fits:
        raise ConfigError("SEB needs the dense model's spectra: call MPPruner.analyze() (prune() does it)")
    return {la.name: getattr(fits[la.name], signal, None) if la.name in fits else None for la in ctx.layers}


@register_method("seb", SEBConfig, needs_spectra=True)
def seb(ctx: PruneContext) -> Masks:
    """Spectral Edge Budgeting: global magnitude on |W|/w_ℓ with MP-edge layer weights (four-regime table)."""
    cfg = ctx.config
    batches = calibration_batches(ctx) if cfg.sequential_pass else None  # fail before any work if missing
    regime = cfg.seb_regime()
    weights = seb_weights(
        layer_signal(ctx, regime.signal), {la.name: la.role for la in ctx.layers}, cfg.sparsity, regime
    )
    masks = select(ctx, lambda la: la.weight.detach().abs().cpu() / weights[la.name], "global")  # made on demand
    ctx.record["seb"] = {
        "regime": dataclasses.asdict(regime),
        "regime_source": cfg.regime,
        "layer_weights": weights,
        "spectra": "dense model, fitted once (static)",
    }
    if cfg.sequential_pass:
        reconstruct_(ctx, masks, batches)
    return masks
