"""The helpers that several methods share, in one module, so that every method file imports only this module and
`hf_mpprune.core`: calibration options and batches and the optional sequential OBS re-fit (one-shot methods),
cumulative global / per-layer selection (magnitude family), Wanda scores and exact row budgets (Wanda family), and
the SEB layer weights (docs/algorithms.md §3, §4.1, §4.3)."""

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.calibration import CalibrationBatches, as_batches, input_sq_norms
from ..core.config import KeepPattern
from ..core.errors import ConfigError
from ..core.layers import LayerSet
from ..core.masks import Masks, keep_top, keep_top_streamed
from ..core.obs import obs_reconstruct
from ..core.refine import LayerRefiner, RefineOptions
from ..core.refit import RefitOptions, hessian_dtype, refit_record, tune_split
from ..core.registry import PruneContext
from ..core.sequential import sequential_apply


logger = logging.getLogger(__name__)


@dataclass
class CalibrationOptions(RefineOptions, RefitOptions):
    """Calibration settings (mixed into the one-shot method configs).

    Args:
        calibration_samples (`int`, defaults to 128): samples drawn (shuffled with `seed`) from the calibration data.
        calibration_batch_size (`int`, defaults to 16): samples per forward.
        reconstruct, reconstruct_solver, reconstruct_iters, percdamp: the re-fit of the kept weights, see
            `hf_mpprune.core.refit.RefitOptions` (percdamp is also SparseGPT's damping).
        refine, refine_iters: mask refinement on the calibration Hessian after the method chose its mask
            (`"admm"`, `"alps"`, `"dsnot"`), see `hf_mpprune.core.refine.RefineOptions`.
    """

    calibration_samples: int = 128
    calibration_batch_size: int = 16

    def _check_calibration_options(self) -> None:
        for name in ("calibration_samples", "calibration_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} must be an int >= 1 (default 128 samples, batch 16)")
        self._check_refit()
        self._check_refine()


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
    """Re-fit the kept weights of every layer by `obs_reconstruct`, sequentially (model modified in place). With
    `refine`, each layer's mask is refined first (`LayerRefiner`) and `masks` is updated in place."""
    cfg = ctx.config
    kwargs = cfg.refit_kwargs()
    stats: dict = {}
    refiner = LayerRefiner(cfg, kwargs, stats) if cfg.refine is not None else None

    def fit(layer, h: torch.Tensor, target=None) -> torch.Tensor:
        keep = layer.matrix_view(masks[layer.name].cpu())
        w = layer.matrix_view().detach().cpu()
        if refiner is None:
            return obs_reconstruct(w, h, keep, stats=stats, target=target, **kwargs)
        forced = previous_matrix(ctx, layer)
        new, keep = refiner(layer.name, w, h, keep, pattern=cfg.pattern, forced=forced, target=target)
        masks[layer.name].copy_(layer.from_matrix(keep).to(masks[layer.name].device))
        return new

    tm = sequential_apply(
        ctx.model, ctx.layers, batches.batches, fit, desc=f"refine ({cfg.refine})" if refiner else "obs-reconstruct",
        hessian_dtype=hessian_dtype(ctx.layers), dense_target=cfg.refit_target == "dense", tune=cfg.block_tune(),
    )  # fmt: skip
    if refiner is None or refiner.refits:
        ctx.record["reconstruct"] = refit_record(kwargs, stats, cfg.refit_target) | {"time_split": tm.record()}
    if refiner is not None:
        ctx.record["refine"] = refiner.record() | {"pass": tm.record()}
    return tm


def time_split(ctx: PruneContext, forwards_s: float, mask_s: float, tm=None) -> None:
    """ctx.record["time_split"]: seconds in calibration forwards, Hessians, mask choice, re-fit and block step."""
    ctx.record["time_split"] = {
        "calibration_forwards_s": round(forwards_s + (tm.forward_s if tm else 0.0), 3),
        "hessians_s": round(tm.hessian_s if tm else 0.0, 3),
        "mask_choice_s": round(mask_s, 3),
        "reconstruction_s": round(tm.solve_s if tm else 0.0, 3),
    } | tune_split(tm)


def check_rows(layer, norms: torch.Tensor) -> None:
    if norms.numel() != layer.shape[1]:
        raise ConfigError(
            f"layer {layer.name!r}: captured inputs have {norms.numel()} columns but the weight has {layer.shape[1]} "
            "(grouped convolutions are not supported by activation-aware methods): add it to ignore=[...]"
        )


# ---- cumulative selection (magnitude family) ---------------------------------------------------------------
def cumulative_score(ctx: PruneContext, layer, scores: torch.Tensor) -> torch.Tensor:
    """One layer's float32 CPU scores with its previously pruned entries forced to -1 (scores are >= 0)."""
    s = scores.detach().float().cpu()
    if ctx.previous is not None and layer.name in ctx.previous:
        s = s.masked_fill(~ctx.previous[layer.name].cpu(), -1.0)
    return s


def select(ctx: PruneContext, score: Callable[..., torch.Tensor], scope: str = "global") -> Masks:
    """Keep the highest scores `score(layer)`: exactly floor(s * P_total) pruned globally, or floor(s * numel) per
    layer. `score` is called on demand (three times per layer when global: `keep_top_streamed`), so only one layer's
    scores are in memory at a time."""
    fns = [lambda la=la: cumulative_score(ctx, la, score(la)) for la in ctx.layers]
    s = ctx.config.sparsity
    if scope == "global":
        numels = [la.numel for la in ctx.layers]
        keeps = keep_top_streamed(fns, numels, math.floor(s * sum(numels)))
    else:
        keeps = [keep_top([fn()], math.floor(s * la.numel))[0] for la, fn in zip(ctx.layers, fns)]
    return Masks({layer.name: k for layer, k in zip(ctx.layers, keeps)})


# ---- Wanda scores and exact row budgets (Wanda family) ------------------------------------------------------
def wanda_scores(ctx: PruneContext, batches) -> dict[str, torch.Tensor]:
    """|W| · ‖x_j‖₂ per layer as (out, in) float64 matrices (CPU)."""
    sq = input_sq_norms(ctx.model, ctx.layers, batches)
    return {layer.name: wanda_score(layer, sq[layer.name]) for layer in ctx.layers}


def wanda_score(layer, sq_norms: torch.Tensor) -> torch.Tensor:
    """|W| · ‖x_j‖₂ of one layer as an (out, in) float64 matrix (CPU), from its inputs' squared column norms."""
    check_rows(layer, sq_norms)
    w = layer.matrix_view().detach().cpu().to(torch.float64, copy=True)  # one float64 buffer, worked in place
    return w.abs_().mul_(sq_norms.sqrt().unsqueeze(0))


def row_prune(scores: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask (out, in): row r prunes its `counts[r]` lowest scores (ties: lower column first). Entries in
    `forced` (pruned earlier) are pruned first; a row with more forced entries than its count prunes just those."""
    if forced is not None:
        scores = scores.masked_fill(forced, -1.0)
        counts = torch.maximum(counts, forced.sum(1))
    order = torch.argsort(scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return rank >= counts.unsqueeze(1)


def kn_prune(scores: torch.Tensor, pattern: KeepPattern, forced: torch.Tensor | None = None) -> torch.Tensor:
    """Keep mask with the k highest scores of every n consecutive inputs per row; the N mod n tail stays dense."""
    rows, cols = scores.shape
    n = cols // pattern.group * pattern.group
    if forced is not None:
        scores = scores.masked_fill(forced, -1.0)
    g = scores[:, :n].reshape(rows, -1, pattern.group)
    order = torch.argsort(-g, dim=2, stable=True)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    kg = torch.zeros_like(g, dtype=torch.bool).scatter_(2, order[..., : pattern.keep], True)
    keep[:, :n] = kg.reshape(rows, n)
    return keep


def layer_budgets(numel: dict[str, int], weights: dict[str, float], sparsity: float, cap: float) -> dict[str, int]:
    """Integer prune counts c_ℓ ∝ w_ℓ·n_ℓ with c_ℓ ≤ cap·n_ℓ and Σ c_ℓ = floor(s·P) exactly (water-filling on the
    proportionality constant, then largest remainder; ties by layer order)."""
    names = list(numel)
    total = math.floor(sparsity * sum(numel.values()))
    w = torch.tensor([weights[n] for n in names], dtype=torch.float64)
    size = torch.tensor([numel[n] for n in names], dtype=torch.float64)
    lo, hi = 0.0, 1.0 / float(w.min())
    for _ in range(200):  # bisection on k: Σ min(k·w_ℓ, cap)·n_ℓ = total
        k = 0.5 * (lo + hi)
        lo, hi = (k, hi) if float((torch.clamp(k * w, max=cap) * size).sum()) < total else (lo, k)
    ideal = torch.clamp(hi * w, max=cap) * size
    counts = torch.minimum(ideal.floor(), (cap * size).floor()).long()
    short = total - int(counts.sum())
    frac = (ideal - counts).tolist()
    for i in sorted(range(len(names)), key=lambda i: (-frac[i], i)):
        if short <= 0:
            break
        if counts[i] < numel[names[i]]:
            counts[i] += 1
            short -= 1
    return {n: int(c) for n, c in zip(names, counts)}


def even_row_counts(count: int, floor: torch.Tensor) -> torch.Tensor:
    """Per-row prune counts summing to `count` (when `count` ≥ Σ floor), each ≥ `floor` (entries pruned earlier),
    as even as possible: water-fill to a level t, the leftover +1 to the rows at that level, lower index first."""
    if count <= int(floor.sum()):
        return floor.clone()
    lo, hi = 0, count
    while lo < hi:  # the largest t with Σ max(floor, t) <= count
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if int(torch.clamp(floor, min=mid).sum()) <= count else (lo, mid - 1)
    per = torch.clamp(floor, min=lo)
    short = count - int(per.sum())
    per[torch.nonzero(floor <= lo).flatten()[:short]] += 1
    return per


def rows_keep(scores: torch.Tensor, count: int, forced: torch.Tensor | None) -> torch.Tensor:
    """Keep mask pruning exactly `count` entries of the layer (if ≥ the earlier-pruned ones), spread evenly over rows."""
    floor = forced.sum(1) if forced is not None else torch.zeros(scores.shape[0], dtype=torch.long)
    return row_prune(scores, even_row_counts(count, floor), forced)


def previous_matrix(ctx: PruneContext, layer) -> torch.Tensor | None:
    """The earlier cycle's pruned entries of `layer` as an (out, in) bool matrix, or None."""
    if ctx.previous is None or layer.name not in ctx.previous:
        return None
    return ~layer.matrix_view(ctx.previous[layer.name].cpu())


def masks_from_rows(ctx: PruneContext, scores: dict[str, torch.Tensor], sparsity: dict[str, float]) -> Masks:
    """Per-row Wanda selection at per-layer sparsity `sparsity[name]` (or the config's k:n pattern)."""
    out = {}
    for layer in ctx.layers:
        s, forced = scores[layer.name], previous_matrix(ctx, layer)
        if ctx.config.pattern is not None:
            keep = kn_prune(s, ctx.config.pattern, forced)
        else:
            counts = torch.full((s.shape[0],), math.floor(sparsity[layer.name] * s.shape[1]), dtype=torch.long)
            keep = row_prune(s, counts, forced)
        out[layer.name] = layer.from_matrix(keep)
    return Masks(out, ctx.config.pattern)


# ---- SEB layer weights (docs/algorithms.md §4.1, §4.3) -------------------------------------------------------------
@dataclass(frozen=True)
class SEBRegime:
    """One row of the four-regime table: which signal, modulation strengths, decay endpoint and power."""

    signal: str  # "hill_alpha" or "sigma_plus"
    beta: float  # base strength (used for every role unless beta_attn / beta_mlp are set)
    decay_end: float  # s_d
    decay_power: float = 1.0  # p
    beta_attn: float | None = None
    beta_mlp: float | None = None


# The "final SEB" four-regime schedule, keyed by the upper end of each target-sparsity range.
SEB_REGIMES: tuple[tuple[float, SEBRegime], ...] = (
    (0.20, SEBRegime("hill_alpha", 0.50, 0.30)),
    (0.40, SEBRegime("sigma_plus", 1.00, 0.50)),
    (0.55, SEBRegime("sigma_plus", 1.25, 0.70)),
    (1.00, SEBRegime("sigma_plus", 1.50, 0.85, beta_attn=1.00, beta_mlp=2.00)),
)


def seb_regime(sparsity: float) -> SEBRegime:
    """The regime of the four-regime table that applies at target `sparsity`."""
    for upper, regime in SEB_REGIMES:
        if sparsity <= upper:
            return regime
    return SEB_REGIMES[-1][1]


def seb_weights(
    signal: dict[str, float | None], roles: dict[str, str], sparsity: float, regime: SEBRegime
) -> dict[str, float]:
    """w_ℓ(s) = max(0.1, 1 + β_type · d(s) · z_ℓ) with z the population z-score of the signal over all layers.

    A missing signal (None / non-finite) gets z = 0; if the signal's std < 1e-12 every weight is 1.
    w > 1 prunes a layer more (random-like, wide bulk); w < 1 protects it.
    """
    names = list(roles)
    vals = torch.tensor(
        [float("nan") if signal.get(n) is None else float(signal[n]) for n in names], dtype=torch.float64
    )
    ok = torch.isfinite(vals)
    z = torch.zeros_like(vals)
    if ok.sum() >= 2:
        mu, sd = vals[ok].mean(), vals[ok].std(unbiased=False)
        if sd >= 1e-12:
            z[ok] = (vals[ok] - mu) / sd
    decay = max(0.0, 1.0 - sparsity / regime.decay_end) ** regime.decay_power
    out = {}
    for name, zi in zip(names, z.tolist()):
        beta = {"attn": regime.beta_attn, "mlp": regime.beta_mlp}.get(roles[name]) or regime.beta
        out[name] = max(0.1, 1.0 + beta * decay * zi)
    return out


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


# ---- MP layer weights shared by the MP-budgeted methods (mp-wanda, mp-sparsegpt) ---------------------------
def _sigma2_rel(fit, shape) -> float:
    """Bulk variance σ̂² over the mean squared entry: the share of the energy a pure-noise matrix would explain."""
    mean_sq = fit.frob_norm**2 / (shape[0] * shape[1])
    return fit.sigma2 / mean_sq if mean_sq > 0 else math.nan


# name -> (value from an MPFit and the layer shape, orientation: +1 when larger = more random-like)
SIGNALS = {
    "sigma2_rel": (_sigma2_rel, +1.0),
    "bulk_fraction": (lambda f, s: f.bulk_fraction, +1.0),
    "spike_energy_fraction": (lambda f, s: f.spike_energy_fraction, -1.0),
    "fit_error": (lambda f, s: f.fit_error, -1.0),
    "edge_ratio": (lambda f, s: 1.0 / f.top_ratio if f.top_ratio and math.isfinite(f.top_ratio) else 0.0, +1.0),
    "hill_alpha": (lambda f, s: f.hill_alpha, +1.0),
    "sigma_plus": (lambda f, s: f.sigma_plus, +1.0),  # raw, shape-dependent: kept for the ablation only
}


@dataclass
class MPBudgetOptions:
    """MP layer-budget settings (mixed into the MP-budgeted method configs: mp-wanda, mp-sparsegpt).

    Args:
        signal (`str`, defaults to `"spike_energy_fraction"`): MP statistic per layer of the dense spectra
            (`SIGNALS`); w_ℓ = max(0.1, 1 + β·d(s)·z_ℓ) of the oriented, z-scored signal.
        beta (`float`, defaults to -0.25): modulation strength β (0 = uniform budgets).
        decay_end (`float`, *optional*): s_d of d(s) = max(0, 1 − s/s_d)^p; None = no decay (d = 1).
        decay_power (`float`, defaults to 1.0): p.
        max_layer_sparsity (`float`, defaults to 0.95): cap on any layer's sparsity.
    """

    signal: str = "spike_energy_fraction"
    beta: float = -0.25
    decay_end: float | None = None
    decay_power: float = 1.0
    max_layer_sparsity: float = 0.95

    def _check_mp_budget(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal={self.signal!r} must be one of {sorted(SIGNALS)}")
        if self.decay_end is not None and not self.decay_end > 0:
            raise ConfigError(f"decay_end={self.decay_end} must be > 0, or None for no decay")
        if not self.sparsity <= self.max_layer_sparsity < 1.0:
            raise ConfigError(f"max_layer_sparsity={self.max_layer_sparsity} must be in [sparsity={self.sparsity}, 1)")


def layer_weights(ctx: PruneContext, opts: MPBudgetOptions | None = None) -> dict[str, float]:
    """w_ℓ from the oriented, z-scored signal of the dense model's spectra, with the MP budget settings `opts`
    (default: the config's own)."""
    cfg = opts or ctx.config
    fits = ctx.spectra.by_layer() if ctx.spectra is not None else {}
    fn, sign = SIGNALS[cfg.signal]
    signal = {}
    for la in ctx.layers:
        v = fn(fits[la.name], la.shape) if la.name in fits else None
        signal[la.name] = sign * v if v is not None and math.isfinite(v) else None
    regime = SEBRegime(cfg.signal, cfg.beta, cfg.decay_end or math.inf, cfg.decay_power)
    return seb_weights(signal, {la.name: la.role for la in ctx.layers}, ctx.config.sparsity, regime)
