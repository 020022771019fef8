"""Wanda (Sun et al., 2023): score |W_ij| · ‖x_j‖₂ from calibration activations, prune the lowest per output row."""

import math
import time
from dataclasses import dataclass

import torch

from ..calibration import input_sq_norms
from ..config import KeepPattern, PruningConfig
from ..errors import ConfigError
from ..masks import Masks
from ..registry import PruneContext, register_method
from ._oneshot import CalibrationOptions, calibration_batches, check_rows, reconstruct_, time_split


@dataclass
class WandaConfig(CalibrationOptions, PruningConfig):
    """Wanda: activation-aware magnitude, compared within each output row.

    Rounding [D] (`rounding`): `"exact"` (default) prunes exactly floor(s·P) entries over the registered layers, like
    every other unstructured method: layer counts floor(s·P_ℓ) plus the remainder by largest fraction (ties: layer
    order), and inside a layer the rows' counts differ by at most one (earlier-pruned entries count first; extra
    entries go to the lowest rows, lower index first). It equals reference Wanda whenever s·N_in is an integer for
    every layer (e.g. s = 0.5 on BERT/ViT shapes). `"row"` is the reference rule: floor(s·N_in) per output row, so
    the achieved sparsity is Σ_ℓ M_ℓ·floor(s·N_ℓ)/P ≤ s. Ties: lower input index pruned first.
    With `pattern="k:n"` the k highest scores of every n consecutive inputs are kept per row (tail stays dense).
    Inputs include padded token positions (the capture does not see attention masks).

    Args:
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


def wanda_scores(ctx: PruneContext, batches) -> dict[str, torch.Tensor]:
    """|W| · ‖x_j‖₂ per layer as (out, in) float64 matrices (CPU)."""
    sq = input_sq_norms(ctx.model, ctx.layers, batches)
    out = {}
    for layer in ctx.layers:
        check_rows(layer, sq[layer.name])
        out[layer.name] = layer.matrix_view().detach().cpu().double().abs() * sq[layer.name].sqrt().unsqueeze(0)
    return out


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


@register_method("wanda", WandaConfig, needs_calibration=True)
def wanda(ctx: PruneContext) -> Masks:
    """Wanda: |W|·‖x‖₂ per output row from calibration activations (optionally OBS re-fit of kept weights)."""
    batches = calibration_batches(ctx)
    t0 = time.perf_counter()
    scores = wanda_scores(ctx, batches)
    t1 = time.perf_counter()
    cfg = ctx.config
    if cfg.pattern is None and cfg.rounding == "exact":
        counts = layer_budgets({la.name: la.numel for la in ctx.layers}, dict.fromkeys(scores, 1.0), cfg.sparsity, 1.0)
        masks = Masks(
            {la.name: la.from_matrix(rows_keep(scores[la.name], counts[la.name], previous_matrix(ctx, la))) for la in ctx.layers}
        )  # fmt: skip
        rule = "exact: floor(s*P) overall, floor(s*P_l) + largest remainder per layer, rows differ by <= 1"
    else:
        masks = masks_from_rows(ctx, scores, dict.fromkeys(scores, cfg.sparsity))
        rule = "floor(s*N_in) per output row" if cfg.pattern is None else f"{cfg.pattern} per row"
    ctx.record["wanda"] = {"rounding": rule, "tie_break": "lower input index pruned first"}
    t2 = time.perf_counter()
    tm = reconstruct_(ctx, masks, batches) if ctx.config.reconstruct else None
    time_split(ctx, t1 - t0, t2 - t1, tm)
    return masks
