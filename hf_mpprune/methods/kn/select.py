"""Shared k:n selection of the k:n methods: keep the top-k scores per (row, group), apply, audit legality; and
magnitude k:n (used by `magnitude` with a `pattern`, docs/algorithms.md §8.10)."""

import torch

from ...core.errors import PatternError
from ...core.masks import Masks
from ...core.registry import PruneContext
from .geometry import column_order, from_grouped, kn_keep, plan, source_keep, to_grouped
from .legality import legality_audit


RIA_POWER = 0.5  # RIA's activation exponent a


def ria_scores(w_abs: torch.Tensor, col_sq: torch.Tensor, power: float = RIA_POWER) -> torch.Tensor:
    """RIA (Zhang et al., 2024): (|W_ij| / Σ_i |W_ij| + |W_ij| / Σ_j |W_ij|) · (‖x_j‖₂)^a for an (out, in) matrix
    of |W| and the per-column sums (or means) of squared inputs `col_sq`; a = 0.5. Float64."""
    w = w_abs.double()
    tiny = torch.finfo(torch.float64).tiny
    rel = w / w.sum(0, keepdim=True).clamp_min(tiny) + w / w.sum(1, keepdim=True).clamp_min(tiny)
    return rel * col_sq.double().sqrt().pow(power).unsqueeze(0)


def kn_select(ctx: PruneContext, scores: dict[str, torch.Tensor], eligible, cfg_like) -> Masks:
    """Keep the top-k scores per (row, group) of every eligible layer (previously pruned entries score lowest);
    other layers keep their source mask. Masks are applied to the model and audited (record["legality"])."""
    pattern, grouping = ctx.config.pattern, cfg_like["conv_grouping"]
    masks = {}
    for la in ctx.layers:
        base = source_keep(la, ctx.previous)
        if la in eligible:
            order = column_order(la, grouping)
            s = to_grouped(la, scores[la.name].detach().float(), order).masked_fill(~to_grouped(la, base, order), -1)
            base = from_grouped(la, kn_keep(s, pattern, to_grouped(la, base, order)), order)
        masks[la.name] = base
    return finish_kn(ctx, Masks(masks, pattern), eligible, grouping)


def finish_kn(ctx, masks: Masks, eligible, grouping) -> Masks:
    masks.apply_(ctx.model)
    audit = legality_audit(ctx.model, ctx.config.pattern, layers=Masks({la.name: masks[la.name] for la in eligible}),
                           conv_grouping=grouping)  # fmt: skip
    ctx.record["legality"] = audit.to_dict()
    if not audit.ok:
        raise PatternError(f"{ctx.config.method} produced an illegal {ctx.config.pattern} model: {audit.totals()}")
    return masks


def magnitude_kn(ctx: PruneContext) -> Masks:
    """Magnitude k:n: the k largest |W| per (row, group); head skipped; flattened conv grouping."""
    eligible, skipped = plan(ctx.layers, ctx.config.pattern)
    ctx.record["kn"] = {"pattern": str(ctx.config.pattern), "skipped": skipped, "mask": "kept-slot pattern"}
    return kn_select(ctx, {la.name: la.weight.abs() for la in eligible}, eligible, {"conv_grouping": "flattened"})
