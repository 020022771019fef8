"""Wanda (Sun et al., 2023): score |W_ij| · ‖x_j‖₂ from calibration activations, prune the lowest per output row."""

import math
from dataclasses import dataclass

import torch

from ..calibration import input_sq_norms
from ..config import KeepPattern, PruningConfig
from ..masks import Masks
from ..registry import PruneContext, register_method
from ._oneshot import CalibrationOptions, calibration_batches, check_rows, reconstruct_


@dataclass
class WandaConfig(CalibrationOptions, PruningConfig):
    """Wanda: activation-aware magnitude, compared within each output row.

    Rounding [D]: every output row of every layer prunes exactly floor(s · N_in) entries, so the achieved global
    sparsity is Σ_ℓ M_ℓ·floor(s·N_ℓ)/P (≤ s, equal when s·N is an integer). Ties: lower input index pruned first.
    With `pattern="k:n"` the k highest scores of every n consecutive inputs are kept per row (tail stays dense).
    Inputs include padded token positions (the capture does not see attention masks).

    Args:
        calibration_samples, calibration_batch_size, reconstruct, percdamp: see `CalibrationOptions`.
    """

    method: str = "wanda"

    def __post_init__(self):
        super().__post_init__()
        self._check_calibration_options()


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
    scores = wanda_scores(ctx, batches)
    masks = masks_from_rows(ctx, scores, dict.fromkeys(scores, ctx.config.sparsity))
    ctx.record["wanda"] = {"rounding": "floor(s*N_in) per output row", "tie_break": "lower input index pruned first"}
    if ctx.config.reconstruct:
        reconstruct_(ctx, masks, batches)
    return masks
