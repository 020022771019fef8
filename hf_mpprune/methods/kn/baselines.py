"""k:n baselines in the CAST registry (docs/algorithms.md §8.10): magnitude k:n (via `magnitude` with a pattern),
Wanda k:n (|W|·‖x‖ top-k per (row, group)) and SparseGPT k:n (OBS pruning, sequential over layers).

All share CAST's eligibility (task head skipped structurally, ineligible convs skipped, tail columns left as they
are, rows < n an error), its kept-slot masks and its legality audit in the ledger record.
"""

import time
from dataclasses import dataclass

import torch

from ...core.calibration import as_batches, input_sq_norms
from ...core.errors import ConfigError
from ...core.masks import Masks
from ...core.obs import sparsegpt_prune
from ...core.refine import peak_rss_mib
from ...core.registry import PruneContext, register_method
from ...core.sequential import sequential_hessians
from .cast import align
from .geometry import (
    KNMethodConfig,
    cells,
    column_order,
    from_grouped,
    plan,
    source_keep,
    to_grouped,
    unwrap,
)  # fmt: skip
from .permute import PermuteOptions
from .select import finish_kn, kn_select, ria_scores


SCORES = ("wanda", "ria")


def _setup(ctx: PruneContext):
    cfg = ctx.config
    data, _ = unwrap(ctx.calibration)
    if data is None or ctx.model is None:
        raise ConfigError(f"{cfg.method} needs calibration data and the model: MPPruner(...).prune(calibration=...)")
    batches = as_batches(data, num_samples=cfg.calibration_samples, batch_size=cfg.calibration_batch_size,
                         seed=cfg.seed)  # fmt: skip
    eligible, skipped = plan(ctx.layers, cfg.pattern, skip_head=cfg.skip_head, conv_grouping=cfg.conv_grouping,
                             strict_tail=cfg.strict_tail)  # fmt: skip
    ctx.record["calibration"] = batches.record()
    ctx.record["kn"] = {"pattern": str(cfg.pattern), "skipped": skipped, "mask": "kept-slot pattern"}
    t0 = time.perf_counter()
    if cfg.permute_align:
        if ctx.previous is not None:
            raise ConfigError(f"{cfg.method} permute_align=True needs an unpruned source (no earlier masks); "
                              "use 'cast', which carries earlier masks through the permutation")  # fmt: skip
        perms = align(ctx, eligible, batches, {}, None)
        ctx.record["permutations"] = {k: v["perm"] for k, v in perms.items() if v["folded_into"] is None}
        ctx.record["folded_permutations"] = {k: v["folded_into"] for k, v in perms.items() if v["folded_into"]}
    ctx.record["time_split"] = {"permutation_s": round(time.perf_counter() - t0, 3)}
    return batches, eligible


def _cost(ctx: PruneContext, **seconds: float) -> None:
    """The time split and the process's peak memory so far into the ledger step."""
    ctx.record["time_split"].update({k: round(v, 3) for k, v in seconds.items()})
    ctx.record["memory"] = {"process_peak_rss_mib": peak_rss_mib()}


@dataclass
class WandaKNConfig(PermuteOptions, KNMethodConfig):
    """Wanda k:n: score |W_ij|·‖x_j‖₂ over the calibration inputs, keep the top k per (row, group) of n.

    Args:
        score (`str`, defaults to `"wanda"`): `"ria"` = RIA's relative importance and activation,
            (|W_ij|/Σ_i|W_ij| + |W_ij|/Σ_j|W_ij|)·‖x_j‖₂^0.5 (`hf_mpprune.methods.kn.select.ria_scores`).
        permute_align, permute_unfoldable, perm_importance: input-channel permutation before scoring
            (`hf_mpprune.methods.kn.permute.PermuteOptions`; `perm_importance="ria"` = RIA's channel reallocation).
    """

    method: str = "wanda-kn"
    score: str = "wanda"

    def __post_init__(self):
        super().__post_init__()
        if self.score not in SCORES:
            raise ConfigError(f"score={self.score!r} must be one of {SCORES}")
        self._check_permute()


@register_method("wanda-kn", WandaKNConfig, needs_calibration=True, structured=True)
@torch.no_grad()
def wanda_kn(ctx: PruneContext) -> Masks:
    """Wanda k:n baseline: |W|·‖x‖ top-k per (row, group)."""
    batches, eligible = _setup(ctx)
    t0 = time.perf_counter()
    norms = input_sq_norms(ctx.model, eligible, batches)
    t1 = time.perf_counter()
    scores = {}
    for la in eligible:
        w = la.matrix_view(la.weight.detach()).abs().double().cpu()
        ria = ctx.config.score == "ria"
        scores[la.name] = la.from_matrix(ria_scores(w, norms[la.name]) if ria else w * norms[la.name].sqrt())
    ctx.record["kn"]["score"] = ctx.config.score
    masks = kn_select(ctx, scores, eligible, {"conv_grouping": ctx.config.conv_grouping})
    _cost(ctx, calibration_forwards_s=t1 - t0, mask_choice_s=time.perf_counter() - t1)
    return masks


@dataclass
class SparseGPTKNConfig(PermuteOptions, KNMethodConfig):
    """SparseGPT k:n: OBS pruning column by column with k kept of every n (sequential over layers).

    Args:
        blocksize (`int`, defaults to 128): lazy-update block (rounded to a multiple of n).
        percdamp (`float`, defaults to 0.01): Hessian damping, fraction of the mean diagonal.
        permute_align, permute_unfoldable, perm_importance: input-channel permutation before pruning
            (`hf_mpprune.methods.kn.permute.PermuteOptions`).
    """

    method: str = "sparsegpt-kn"
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        if self.blocksize < 1 or not 0 <= self.percdamp < 1:
            raise ConfigError(f"blocksize={self.blocksize} must be >= 1 and percdamp={self.percdamp} in [0, 1)")
        self._check_permute()


@register_method("sparsegpt-kn", SparseGPTKNConfig, needs_calibration=True, structured=True)
@torch.no_grad()
def sparsegpt_kn(ctx: PruneContext) -> Masks:
    """SparseGPT k:n baseline (OBS updates of the remaining weights)."""
    cfg = ctx.config
    batches, eligible = _setup(ctx)
    keeps = {}

    def prune_layer(layer, h):
        order = column_order(layer, cfg.conv_grouping)
        w = to_grouped(layer, layer.weight.detach(), order).cpu()
        hg = h if order is None else h[order][:, order]
        w_new, keep = sparsegpt_prune(w, hg, cfg.pattern, blocksize=cfg.blocksize, percdamp=cfg.percdamp)
        gn = cells(w, cfg.pattern.group).shape[1] * cfg.pattern.group
        keep[:, gn:] = to_grouped(layer, source_keep(layer, ctx.previous), order)[:, gn:].cpu()
        w_new[:, gn:] = w[:, gn:]
        layer.weight.copy_(from_grouped(layer, w_new, order).to(layer.weight.device))
        keeps[layer.name] = from_grouped(layer, keep, order)

    tm = sequential_hessians(ctx.model, eligible, batches, prune_layer)
    masks = {la.name: keeps.get(la.name, source_keep(la, ctx.previous)) for la in ctx.layers}
    _cost(ctx, calibration_forwards_s=tm.forward_s, hessians_s=tm.hessian_s, mask_choice_and_update_s=tm.solve_s)
    ctx.record["time_split"]["path"] = tm.path  # blocks or plain (why): the sequential path taken
    return finish_kn(ctx, Masks(masks, cfg.pattern), eligible, cfg.conv_grouping)
