"""SER — Spectral Edge Reallocation: sparsify → estimate → restore (docs/algorithms.md §6), and Hybrid Magnitude–SER
(docs/algorithms.md §7), the schedule that runs global magnitude steps up to a switch point and SER steps after it: the
two share SER's config and step, so they live in one file (Hybrid registers its own name and config). Experimental ([R]): the
paper's engine is not public; this follows the §6.2 step list and the §6.4 recommended defaults.

One call = one SER step to the target sparsity `s` (the keep fine-tune, phase B, is the cyclic pipeline's job:
`hf_mpprune.training.cycles.run_cycles` runs it with this config's `keep_ft_*` settings after every SER step).
"""

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import CycleHooks, PruneContext, register_method
from .common import cumulative_score, keep_top, seb_regime, seb_weights, select


_CHOICES = {
    "restore_multiplier": ("inverse", "direct"),
    "reservoir": ("new", "all_zero"),
    "restored_values": ("phase_a", "dense"),
    "phase_a_optimizer": ("adamw", "sgd"),
    "keep_ft_optimizer": ("sgd", "adamw"),
}


@dataclass
class SERConfig(PruningConfig):
    """SER step settings. Every [D] choice of docs/algorithms.md §6.4 is a field; defaults follow its recommendation.

    Args:
        overprune_margin (`float`, defaults to 0.03): additive over-prune, `s_over = s + margin` [D1].
        restore_fraction (`float`, defaults to 0.03): reinsert budget (fraction of P_total). Final sparsity is
            exact ("post_reinsert_exact"): exactly `floor(s_over·P) − floor(s·P)` entries are restored, so this
            must equal `overprune_margin`; it is kept as a separate, recorded field because the sources name
            both (ESM_2 writes a multiplicative over-prune; the run label says "prune08 restore03").
        restore_multiplier (`str`, defaults to `"inverse"`): restore score `Δ·ρ_ℓ` with `ρ_ℓ = 1/w_ℓ(s_over)`
            (`"inverse"`, paper prose: protected layers first) or `w_ℓ(s_over)` (`"direct"`, ESM_2 box) [D2].
        reservoir (`str`, defaults to `"new"`): entries trained in phase A and eligible for restoration: newly
            removed this step (`"new"`, cumulative) or every pruned entry (`"all_zero"`: may revive entries pruned
            in earlier cycles, so the masks are then NOT cumulative) [D3].
        restored_values (`str`, defaults to `"phase_a"`): restored entries keep their phase-A value, or get their
            value at the start of the step back (`"dense"`) [D4].
        phase_a_epochs (`float`, defaults to 1.0), phase_a_lr (`float`, *optional*: `phase_a_lr_multiplier ×
            keep_ft_lr` = 8 × 5e-5 = 4e-4), phase_a_min_lr_ratio (0.25, cosine floor), phase_a_batch_size (256),
            phase_a_min_batches (128 per epoch), phase_a_optimizer (`"adamw"`), logit_l2_weight (1.0: CE_ls +
            1.0·mean‖z − z_ref‖² against a frozen copy of the model at the start of the step) [R][D4].
        keep_ft_epochs (1.0), keep_ft_lr (5e-5), keep_ft_optimizer (`"sgd"`), keep_ft_lr_ramp ((1.0, 2.0)): the
            phase-B keep fine-tune run by the cyclic pipeline; the LR multiplier ramps linearly across the SER
            targets of the grid (the ramp scales the LR, not the epochs) [R][D5].
        signal_source: SEB weights use the dense-model spectra computed once (`MPPruner.analyze()`, paper).
    """

    method: str = "ser"
    overprune_margin: float = 0.03
    restore_fraction: float = 0.03
    restore_multiplier: str = "inverse"
    reservoir: str = "new"
    restored_values: str = "phase_a"
    phase_a_epochs: float = 1.0
    phase_a_lr: float | None = None
    phase_a_lr_multiplier: float = 8.0
    phase_a_min_lr_ratio: float = 0.25
    phase_a_batch_size: int = 256
    phase_a_min_batches: int = 128
    phase_a_optimizer: str = "adamw"
    logit_l2_weight: float = 1.0
    keep_ft_epochs: float = 1.0
    keep_ft_lr: float = 5e-5
    keep_ft_optimizer: str = "sgd"
    keep_ft_lr_ramp: tuple[float, float] = (1.0, 2.0)

    def __post_init__(self):
        super().__post_init__()
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be one of {allowed}")
        if not 0 < self.overprune_margin < 0.5:
            raise ConfigError(f"overprune_margin={self.overprune_margin} must be in (0, 0.5); the default is 0.03")
        if abs(self.restore_fraction - self.overprune_margin) > 1e-12:
            raise ConfigError(
                f"restore_fraction={self.restore_fraction} != overprune_margin={self.overprune_margin}: the final "
                "sparsity is exact, so SER restores exactly the over-pruned margin; set both to the same value"
            )
        for key in ("phase_a_epochs", "phase_a_lr_multiplier", "keep_ft_epochs", "keep_ft_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be > 0")
        if not 0 <= self.phase_a_min_lr_ratio <= 1 or self.logit_l2_weight < 0:
            raise ConfigError("phase_a_min_lr_ratio must be in [0, 1] and logit_l2_weight >= 0")
        if self.phase_a_batch_size < 1 or self.phase_a_min_batches < 0:
            raise ConfigError("phase_a_batch_size must be >= 1 and phase_a_min_batches >= 0")
        self.keep_ft_lr_ramp = tuple(float(v) for v in self.keep_ft_lr_ramp)
        if len(self.keep_ft_lr_ramp) != 2 or min(self.keep_ft_lr_ramp) <= 0:
            raise ConfigError(f"keep_ft_lr_ramp={self.keep_ft_lr_ramp} must be two positive multipliers")

    @property
    def resolved_phase_a_lr(self) -> float:
        return self.phase_a_lr if self.phase_a_lr is not None else self.phase_a_lr_multiplier * self.keep_ft_lr


# ---- pure pieces --------------------------------------------------------------------------------------------
def layer_weights(ctx: PruneContext, sparsity: float) -> dict[str, float]:
    """SEB w_ℓ at `sparsity` (four-regime table) from the dense-model spectra in `ctx.spectra`."""
    regime = seb_regime(sparsity)
    fits = ctx.spectra.by_layer()
    signal = {n: getattr(fits[n], regime.signal) if n in fits else None for n in ctx.layers.names}
    return seb_weights(signal, {la.name: la.role for la in ctx.layers}, sparsity, regime)


def restore_counts(total: int, s: float, s_over: float) -> tuple[int, int, int]:
    """(entries pruned at s_over, entries pruned at s, entries to restore) — exact integer accounting."""
    over, final = math.floor(s_over * total), math.floor(s * total)
    return over, final, over - final


def select_restore(delta: list[torch.Tensor], reservoir: list[torch.Tensor], rho: list[float], k: int):
    """Boolean masks of the `k` reservoir entries with the largest `Δ·ρ_ℓ` (index tie-break, exact)."""
    scores = [torch.where(r, d.float() * p, torch.full_like(d, -1.0, dtype=torch.float32))
              for d, r, p in zip(delta, reservoir, rho)]  # fmt: skip
    return keep_top(scores, sum(t.numel() for t in scores) - k)


# ---- the step -----------------------------------------------------------------------------------------------
def _phase_a(ctx, cfg, reservoir: dict[str, torch.Tensor], frac: float) -> dict:
    reference = copy.deepcopy(ctx.model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for layer in ctx.layers:
            layer.weight.masked_fill_(reservoir[layer.name].to(layer.weight.device), 0.0)
    return ctx.train_step(
        ctx.model, None, phase="ser_phase_a", trainable=reservoir, epochs=cfg.phase_a_epochs,
        lr=cfg.resolved_phase_a_lr, optimizer=cfg.phase_a_optimizer, batch_size=cfg.phase_a_batch_size,
        data_fraction=frac, min_steps=math.ceil(cfg.phase_a_min_batches * cfg.phase_a_epochs),
        min_lr_ratio=cfg.phase_a_min_lr_ratio, reference=reference, logit_l2_weight=cfg.logit_l2_weight,
    ) or {}  # fmt: skip


def ser_step(ctx: PruneContext) -> Masks:
    """One SER step: SEB over-prune → train the reservoir (phase A) → restore the top Δ·ρ_ℓ entries exactly."""
    cfg: SERConfig = ctx.config
    if ctx.train_step is None or ctx.model is None:
        raise ConfigError(
            "SER trains the reservoir: pass prune(train_step=...) (see hf_mpprune.training.cycles.TrainStep)"
        )
    if ctx.spectra is None:
        raise ConfigError("SER needs the dense-model spectra: call pruner.analyze() first")
    s, layers = cfg.sparsity, ctx.layers
    s_over = min(s + cfg.overprune_margin, 1.0)
    w_s, w_over = layer_weights(ctx, s), layer_weights(ctx, s_over)
    P = layers.total_params
    n_over, n_final, n_restore = restore_counts(P, s, s_over)
    raw = {la.name: la.weight.detach().abs().float().cpu() / w_s[la.name] for la in layers}
    over_keep = keep_top([cumulative_score(ctx, la, raw[la.name]) for la in layers], n_over)
    prev = [ctx.previous[la.name].cpu() if ctx.previous is not None else torch.ones(la.weight.shape, dtype=torch.bool)
            for la in layers]  # fmt: skip
    res = [~k & (p if cfg.reservoir == "new" else torch.ones_like(p)) for k, p in zip(over_keep, prev)]
    reservoir = {la.name: r for la, r in zip(layers, res)}
    start = {la.name: la.weight.detach().clone() for la in layers}
    metrics = _phase_a(ctx, cfg, reservoir, sum(int(r.sum()) for r in res) / P)
    delta = [(la.weight.detach().cpu() - 0.0).abs() for la in layers]  # values were zeroed before phase A
    rho = [1.0 / w_over[la.name] if cfg.restore_multiplier == "inverse" else w_over[la.name] for la in layers]
    top = select_restore(delta, res, rho, n_restore)
    restored = {la.name: r & t for la, r, t in zip(layers, res, top)}
    final = {la.name: k | restored[la.name] for la, k in zip(layers, over_keep)}
    with torch.no_grad():
        for la in layers:
            if cfg.restored_values == "dense":
                la.weight.copy_(torch.where(restored[la.name].to(la.weight.device), start[la.name], la.weight))
    ctx.record.update(
        stage="ser", s_over=s_over, pruned_at_s_over=n_over, pruned_final=n_final, restore_count=n_restore,
        reservoir_size=sum(int(r.sum()) for r in res), layer_weights=w_s, layer_weights_s_over=w_over,
        restore_rho=dict(zip(layers.names, rho)), regime=seb_regime(s).__dict__,
        restored_by_layer={n: int(r.sum()) for n, r in restored.items()}, phase_a=metrics,
        phase_a_lr=cfg.resolved_phase_a_lr, revives_allowed=cfg.reservoir == "all_zero",
        decisions={"overprune": "additive", "accounting": "post_reinsert_exact", "restore_multiplier":
                   cfg.restore_multiplier, "reservoir": cfg.reservoir, "restored_values": cfg.restored_values,
                   "phase_b": "run by hf_mpprune.training.cycles.run_cycles (keep_ft_* fields), LR ramp"},
    )  # fmt: skip
    return Masks(final)


# ---- cycle hooks: what the cyclic driver asks of SER and Hybrid (`CycleHooks`) --------------------------------------
def ramp_multiplier(s: float, ser_targets: Sequence[float], ramp: tuple[float, float]) -> float:
    """Linear LR multiplier from ramp[0] at the first SER target to ramp[1] at the last (ramp[0] if only one)."""
    lo, hi = min(ser_targets), max(ser_targets)
    if hi - lo < 1e-12:
        return ramp[0]
    t = min(1.0, max(0.0, (s - lo) / (hi - lo)))
    return ramp[0] + t * (ramp[1] - ramp[0])


def drop_fired(reference: float, value: float, threshold_pp: float) -> bool:
    """True when `value` is more than `threshold_pp` percentage points below `reference` (both fractions)."""
    return (reference - value) * 100.0 > threshold_pp + 1e-12


def _keep_finetune(cfg, stage: str, s: float, grid, state: dict) -> dict | None:
    """SER steps: the config's keep fine-tune with the linear LR ramp across SER targets (§6.2 (e)); else None."""
    if stage != "ser":
        return None
    start = state.setdefault("ser_start", s)
    targets = [g for g in grid if g >= start - 1e-9]
    lr = cfg.keep_ft_lr * ramp_multiplier(s, targets, cfg.keep_ft_lr_ramp)
    return {"epochs": cfg.keep_ft_epochs, "lr": lr, "optimizer": cfg.keep_ft_optimizer}


def _hybrid_start(cfg, selection_eval, model, state: dict) -> None:
    if cfg.switch != "drop_threshold":
        return
    if selection_eval is None:
        raise ConfigError("switch='drop_threshold' decides on a selection split: pass run_cycles(selection_eval=...)")
    if cfg.drop_reference == "baseline":
        state["reference"] = selection_eval(model)[cfg.selection_metric]


def _hybrid_after(cfg, s: float, post_sel: dict | None, state: dict):
    """Drop-threshold rule on the selection split; returns a config with `transition_sparsity` when it fires."""
    if cfg.switch != "drop_threshold" or cfg.transition_sparsity is not None:
        return None, None
    value = post_sel[cfg.selection_metric]
    mode = cfg.drop_reference
    if state.get("reference") is None:
        if mode == "first_completed" or (mode == "s20_start" and s >= cfg.switch_sparsity - 1e-9):
            state["reference"] = value
            return None, {"reference_set": value, "mode": mode}
        if mode != "baseline":
            return None, None
    if drop_fired(state["reference"], value, cfg.drop_threshold_pp):
        record = {"reference": state["reference"], "mode": mode, "threshold_pp": cfg.drop_threshold_pp,
                  "transition_sparsity": s, "value": value, "reason": "post-FT selection metric dropped below "
                  "reference - threshold"}  # fmt: skip
        return dataclasses.replace(cfg, transition_sparsity=s), record
    return None, {"reference": state["reference"], "value": value, "fired": False}


@register_method(
    "ser", SERConfig, needs_spectra=True, needs_training=True, experimental=True, writes="model",
    cycle=CycleHooks(finetune=_keep_finetune),
)  # fmt: skip
def ser(ctx: PruneContext) -> Masks:
    """SER: SEB over-prune, train the removed entries (phase A), restore the most-moved ones; exact sparsity."""
    return ser_step(ctx)


# ---- Hybrid Magnitude–SER (docs/algorithms.md §7): magnitude before the switch point, SER steps after it --------
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


@register_method(
    "hybrid", HybridConfig, needs_spectra=True, needs_training=True, experimental=True, writes="model",
    cycle=CycleHooks(start=_hybrid_start, finetune=_keep_finetune, after=_hybrid_after),
)  # fmt: skip
def hybrid(ctx: PruneContext) -> Masks:
    """Hybrid Magnitude–SER: one grid step, magnitude before the switch point and SER after it."""
    cfg: HybridConfig = ctx.config
    rule = {"switch": cfg.switch, "switch_sparsity": cfg.switch_sparsity, "transition": cfg.transition_sparsity}
    if uses_magnitude(cfg, cfg.sparsity):
        ctx.record.update(stage="magnitude", switch_rule=rule, layer_weights=dict.fromkeys(ctx.layers.names, 1.0))
        return select(ctx, lambda la: la.weight.detach().abs(), "global")
    masks = ser_step(ctx)
    ctx.record["switch_rule"] = rule
    return masks
