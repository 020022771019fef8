"""CAST: certificate-aware k:n projection (docs/algorithms.md §8), Stage 1 (gradient-free). Math in `cast_math.py`."""

import logging
import math
import time
import warnings
from dataclasses import dataclass

import torch
from huggingface_hub.utils import tqdm

from ...core.calibration import as_batches, capture, run_batches
from ...core.errors import ConfigError, MPPruneWarning, PatternError
from ...core.layers import LayerSet
from ...core.masks import Masks
from ...core.obs import obs_reconstruct
from ...core.refine import LayerRefiner, RefineOptions
from ...core.refit import RefitOptions, hessian_dtype, refit_record, tune_split
from ...core.registry import PruneContext, register_method
from ...core.sequential import sequential_hessians
from .cast_math import COST_FORMS, PRIOR_SCALES, l2_cell_costs, search, source_tuple
from .geometry import (
    KNMethodConfig,
    candidates,
    cells,
    column_order,
    from_grouped,
    plan,
    source_keep,
    to_grouped,
    topk_cells,
    unwrap,
)  # fmt: skip
from .legality import legality_audit
from .permute import (
    PermuteOptions,
    bucket_permutation,
    channel_importance,
    fold,
    fold_pairs,
    in_axis,
    permute_tensor,
    permute_with_hook,
)  # fmt: skip


logger = logging.getLogger(__name__)
ROW_CAP = 4096


@dataclass
class CASTConfig(RefineOptions, RefitOptions, PermuteOptions, KNMethodConfig):
    """CAST k:n projection (experimental: the canonical runner is unpublished, docs/algorithms.md [R]).

    Args:
        free_restoration (`bool`, defaults to `True`): slots zeroed by an unstructured source but kept by the k:n
            pattern get their dense value back. Needs the dense weights via `KNCalibration(data, dense_weights)`;
            without them restored slots stay 0 (a warning says so) [D: the pruner keeps no dense copy].
        alpha_ser (`float`, defaults to 0.0): Hamming prior towards the source mask (0.1 canonical 2:4 rows).
            It needs a sparse source (an earlier unstructured step): at a dense source it is refused.
        prior_scale (`str`, defaults to `"repo"`): `"repo"` = mean candidate cost of the cell (× the layer factor
            clip(density/mean density, 0.25, 4) at 2:4, as the repo's 2:4 path); `"paper"` = mean u²·E[h²] of
            the group [D §8.6]. Only with `alpha_ser > 0`; `permute_unfoldable` and `perm_importance` only with
            `permute_align=True` (otherwise refused).
        cost_form (`str`, defaults to `"l2"`): `"l2"` rᵀC_g r, or `"linf"` max_x (r·h_g)² (slow, small layers).
        max_patterns (`int`, defaults to 5000), num_sampled_patterns (`int`, defaults to 1024): above
            `max_patterns` candidates, search `num_sampled_patterns` distinct seeded k-subsets (shared by all cells)
            plus every cell's magnitude top-k pattern [D §8.7].
        permute_align, permute_unfoldable, perm_importance: the §8.8 input-channel permutation, see
            `hf_mpprune.methods.kn.permute.PermuteOptions` (`perm_importance="ria"`: RIA's channel reallocation).
        reconstruct (`bool`, defaults to `False`): after the patterns are chosen, least-squares re-fit of the kept
            slots (`obs.obs_reconstruct`), sequentially in forward order on the already-projected model;
            reconstruct_solver, reconstruct_iters, percdamp: see `hf_mpprune.core.refit.RefitOptions`.
        refine, refine_iters: k:n mask refinement after the projection, from CAST's patterns and the source
            weights, k:n projection inside every iteration (`hf_mpprune.core.refine.RefineOptions`).
        block_epochs, block_lr: block output reconstruction inside that sequential pass; the target is each block
            with the source weights (the ones the re-fit aims at) swapped in (`hf_mpprune.core.blocktune`).

    Decisions [D]: ≤ 4096 calibration rows per layer, stratified per batch (⌊4096/#batches⌋ rows drawn without
    replacement from each batch with the seed); calibration is captured once on the (permuted) source model; the
    fine-tuning mask is the kept-slot pattern; the task head is skipped structurally; ineligible convs
    (groups ≠ 1, C_in mod n ≠ 0) are skipped with a reason; a layer with fewer rows than n is an error; a tail of
    `N mod n` columns is left as it was (`strict_tail=True` makes it an error).
    """

    method: str = "cast"
    free_restoration: bool = True
    alpha_ser: float = 0.0
    prior_scale: str = "repo"
    cost_form: str = "l2"
    max_patterns: int = 5000
    num_sampled_patterns: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if not (self.alpha_ser >= 0 and math.isfinite(self.alpha_ser)):
            raise ConfigError(f"alpha_ser={self.alpha_ser} must be a finite number >= 0 (0, 0.1, 0.5 are usual)")
        for name, value, allowed in (
            ("prior_scale", self.prior_scale, PRIOR_SCALES),
            ("cost_form", self.cost_form, COST_FORMS),
        ):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} must be one of {allowed}")
        if self.max_patterns < 1 or self.num_sampled_patterns < 1:
            raise ConfigError(f"max_patterns={self.max_patterns}, num_sampled_patterns must be >= 1")
        self._check_refit()
        if self.refit_target != "sequential":  # CAST writes its projections before the re-fit: no dense pass exists
            raise ConfigError(
                f"refit_target={self.refit_target!r} is not supported on method 'cast': its k:n projections are written "
                "into the model before the re-fit, so the blocks are no longer dense when the re-fit reaches them"
            )
        self._check_refine()
        for option, idle, needs in (  # every option acts or is refused
            ("prior_scale", self.prior_scale != "repo" and not self.alpha_ser, "alpha_ser > 0"),
            ("permute_unfoldable", self.permute_unfoldable and not self.permute_align, "permute_align=True"),
            ("perm_importance", self.perm_importance != "act_sq" and not self.permute_align, "permute_align=True"),
        ):
            if idle:
                raise ConfigError(
                    f"{option}={getattr(self, option)!r} has no effect on method 'cast' without {needs}: set {needs} "
                    "or drop the option"
                )
        self._check_permute()  # the values of the permutation options


# ---- calibration statistics ---------------------------------------------------------------------------------
def capture_stats(model, layers, batches, *, n: int | None, conv_grouping: str, seed: int, keep_rows: bool = False):
    """One pass over `batches`: per layer, in grouping order, the sum of h h^T per group (`n` given), Σh², Σ|h|,
    the row count, and (keep_rows) the sampled rows themselves. At most ROW_CAP rows per layer."""
    quota = max(1, ROW_CAP // max(1, len(batches.batches)))
    stats = {la.name: {"count": 0, "rows": []} for la in layers}
    gens = {la.name: torch.Generator().manual_seed(seed * 1_000_003 + i) for i, la in enumerate(layers)}
    orders = {la.name: column_order(la, conv_grouping) for la in layers}

    def add(layer, rows):
        s, order = stats[layer.name], orders[layer.name]
        x = rows[torch.randperm(rows.shape[0], generator=gens[layer.name])[:quota].to(rows.device)].double().cpu()
        x = x if order is None else x[:, order]
        for key, val in (("sq", x.square().sum(0)), ("abs", x.abs().sum(0))):
            s[key] = s[key] + val if key in s else val
        if n is not None:
            xc = cells(x, n)
            gram = torch.einsum("rgi,rgj->gij", xc, xc)
            s["gram"] = s["gram"] + gram if "gram" in s else gram
        if keep_rows:
            s["rows"].append(cells(x, n))
        s["count"] += x.shape[0]

    with capture(model, LayerSet(list(layers)), add):
        run_batches(model, batches)
    missing = [name for name, s in stats.items() if s["count"] == 0]
    if missing:
        raise ConfigError(f"calibration forwards never reached layer(s) {missing[:10]}")
    return stats


# ---- permutation alignment ----------------------------------------------------------------------------------
def align(ctx: PruneContext, eligible, batches, src: dict, dense: dict | None) -> dict:
    """§8.8: choose and apply input permutations; permute source masks / dense weights alike. Returns the record."""
    cfg, model = ctx.config, ctx.model
    pairs = fold_pairs(model, eligible)
    chosen = [la for la in eligible if la.name in pairs or cfg.permute_unfoldable]
    if not chosen:
        return {}
    stats = capture_stats(model, chosen, batches, n=None, conv_grouping="flattened", seed=cfg.seed)
    out = {}
    for layer in chosen:
        w = layer.weight.detach().double()
        w = w.transpose(0, 1) if in_axis(layer) == 0 else w
        channels = w.shape[1]
        s = stats[layer.name]
        act_sq = s["sq"].reshape(channels, -1).mean(1) / s["count"]
        act_abs = s["abs"].reshape(channels, -1).mean(1) / s["count"]
        wf = w.reshape(w.shape[0], channels, -1)
        imp = channel_importance(wf.square().sum((0, 2)), act_sq.cpu(), act_abs.cpu(), wf.abs().sum((0, 2)).cpu(),
                                 cfg.perm_importance, w.cpu(), s["sq"].cpu() / s["count"])  # fmt: skip
        perm = bucket_permutation(imp.cpu(), cfg.pattern.group, snake=cfg.perm_importance == "ria")
        if torch.equal(perm, torch.arange(channels)):
            continue
        pair = pairs.get(layer.name)
        fold(model, layer, pair, perm) if pair else permute_with_hook(model, layer, perm)
        for table in (src, dense or {}):
            if layer.name in table:
                table[layer.name] = permute_tensor(table[layer.name], layer, perm, producer=False)
            if pair and pair.producer in table:
                prod = ctx.layers[pair.producer]
                table[pair.producer] = permute_tensor(table[pair.producer], prod, perm, producer=True)
        out[layer.name] = {"perm": perm.tolist(), "folded_into": pair.producer if pair else None}
    return out


# ---- projection of one layer --------------------------------------------------------------------------------
def project(layer, stat, keep_src, w_dense, cfg, cand, layer_factor: float):
    """Choose the pattern of one layer. Returns (new weight, keep mask, u matrix, record) in weight shape/order."""
    k, n = cfg.pattern.keep, cfg.pattern.group
    order = column_order(layer, cfg.conv_grouping)
    ws = to_grouped(layer, layer.weight.detach(), order).double().cpu()
    ms = to_grouped(layer, keep_src, order).cpu()
    wd = to_grouped(layer, w_dense, order).double().cpu() if w_dense is not None else None
    u = source_tuple(ws, ms, wd if cfg.free_restoration else None)
    uc, sc = cells(u, n), cells(ms, n)
    c = stat["gram"] / stat["count"]
    mag = topk_cells(uc.abs(), k)
    x = torch.cat(stat["rows"]) if cfg.cost_form == "linf" else c
    keep = search(uc, x, cand, mag, cost_form=cfg.cost_form, src=sc, alpha_ser=cfg.alpha_ser,
                  prior_scale=cfg.prior_scale, layer_factor=layer_factor)  # fmt: skip
    gn = uc.shape[1] * n
    new, full_keep = ws.clone(), ms.clone()
    new[:, :gn] = torch.where(keep, uc, 0.0).reshape(ws.shape[0], gn)
    full_keep[:, :gn] = keep.reshape(ws.shape[0], gn)
    revived = keep & ~sc
    rec = {
        "cost": float(l2_cell_costs(uc, c, keep).sum()),
        "cost_magnitude": float(l2_cell_costs(uc, c, mag).sum()),
        "revived_slots": int(revived.sum()),
        "restored_nonzero": int((revived & (uc != 0)).sum()),
        "tail_columns": ws.shape[1] - gn,
    }
    dtype = layer.weight.dtype
    return (
        from_grouped(layer, new.to(dtype), order),
        from_grouped(layer, full_keep, order),
        from_grouped(layer, u.to(dtype), order),
        rec,
    )


def _layer_factors(eligible, src, cfg) -> dict[str, float]:
    """Repo 2:4 prior factor clip(density_ℓ / mean density, 0.25, 4) from the source keep-fractions."""
    dens = {la.name: float(src[la.name].float().mean()) for la in eligible}
    if cfg.prior_scale != "repo" or (cfg.pattern.keep, cfg.pattern.group) != (2, 4) or not dens:
        return dict.fromkeys(dens, 1.0)
    mean = sum(dens.values()) / len(dens)
    return {k: min(4.0, max(0.25, v / mean)) if mean > 0 else 1.0 for k, v in dens.items()}


def _dense_table(dense, eligible, src) -> dict | None:
    if dense is None:
        if any(not bool(src[la.name].all()) for la in eligible):
            warnings.warn("CAST free_restoration: the source is sparse but no dense weights were given "
                          "(KNCalibration(data, dense_weights)); pruned slots kept by k:n stay 0", MPPruneWarning,
                          stacklevel=3)  # fmt: skip
        return None
    table = {}
    for la in eligible:
        if la.name not in dense:
            raise ConfigError(f"dense_weights lacks layer {la.name!r}; give every projected layer's dense weight")
        w = dense[la.name].detach().to(la.weight.device)
        if tuple(w.shape) != tuple(la.weight.shape):
            raise ConfigError(
                f"dense weight of {la.name!r} has shape {tuple(w.shape)}, expected {tuple(la.weight.shape)}"
            )
        table[la.name] = w.clone()
    return table


@register_method("cast", CASTConfig, needs_calibration=True, structured=True, experimental=True, writes="model")
@torch.no_grad()
def cast(ctx: PruneContext) -> Masks:
    """CAST: per (row, group) k:n pattern minimising the calibration cost rᵀC_g r (+ α_ser prior)."""
    cfg = ctx.config
    if ctx.model is None:
        raise ConfigError("CAST needs the model (it captures calibration inputs): run it through MPPruner")
    data, dense = unwrap(ctx.calibration)
    if data is None:
        raise ConfigError("CAST needs calibration data: MPPruner(...).prune(calibration=<dataset or batches>)")
    batches = as_batches(data, num_samples=cfg.calibration_samples, batch_size=cfg.calibration_batch_size,
                         seed=cfg.seed)  # fmt: skip
    eligible, skipped = plan(ctx.layers, cfg.pattern, skip_head=cfg.skip_head, conv_grouping=cfg.conv_grouping,
                             strict_tail=cfg.strict_tail)  # fmt: skip
    src = {la.name: source_keep(la, ctx.previous) for la in ctx.layers}
    if cfg.alpha_ser > 0 and all(bool(src[la.name].all()) for la in eligible):
        raise ConfigError(
            f"alpha_ser={cfg.alpha_ser} (and prior_scale) has no effect on method 'cast' here: the source is dense "
            "(no earlier unstructured step left zeros), so there is no source mask to pull towards; set "
            "alpha_ser=0, or prune unstructured first (e.g. a 'ser' or 'magnitude' step before 'cast')"
        )
    dense = _dense_table(dense, eligible, src) if cfg.free_restoration else None
    perms = align(ctx, eligible, batches, src, dense) if cfg.permute_align else {}
    t0 = time.perf_counter()
    stats = capture_stats(ctx.model, eligible, batches, n=cfg.pattern.group, conv_grouping=cfg.conv_grouping,
                          seed=cfg.seed, keep_rows=cfg.cost_form == "linf")  # fmt: skip
    t1 = time.perf_counter()
    cand, mode = candidates(cfg.pattern, cfg.max_patterns, cfg.num_sampled_patterns, cfg.seed)
    factors = _layer_factors(eligible, src, cfg)
    masks, sources, layer_rec = {}, {}, {}
    for layer in tqdm(eligible, desc=f"CAST {cfg.pattern}", disable=len(eligible) < 8):
        w_new, keep, u, rec = project(layer, stats.pop(layer.name), src[layer.name],
                                      (dense or {}).get(layer.name), cfg, cand, factors[layer.name])  # fmt: skip
        layer.weight.copy_(w_new.to(layer.weight.device))
        masks[layer.name], sources[layer.name], layer_rec[layer.name] = keep, u, rec
    t2 = time.perf_counter()
    tm = _reconstruct(ctx, eligible, batches, masks, sources) if cfg.reconstruct or cfg.refine else None
    split = {
        "calibration_forwards_and_moments_s": round(t1 - t0, 3),  # one forward; per-group second moments
        "mask_choice_s": round(t2 - t1, 3),
        "reconstruction": tm.record() if tm is not None else None,
    } | tune_split(tm)
    for la in ctx.layers:
        masks.setdefault(la.name, src[la.name])
    out = Masks({la.name: masks[la.name] for la in ctx.layers}, cfg.pattern)
    audit = legality_audit(ctx.model, cfg.pattern, layers=Masks({la.name: masks[la.name] for la in eligible}),
                           conv_grouping=cfg.conv_grouping)  # fmt: skip
    ctx.record.update(_record(cfg, batches, mode, cand, skipped, perms, layer_rec, audit))
    ctx.record["time_split"] = split
    if not audit.ok:
        raise PatternError(f"CAST produced an illegal {cfg.pattern} model (a bug): {audit.totals()}")
    return out


def _reconstruct(ctx, eligible, batches, masks, sources) -> None:
    cfg = ctx.config
    kwargs, solver_stats = cfg.refit_kwargs(), {}
    refiner = LayerRefiner(cfg, kwargs, solver_stats) if cfg.refine else None

    def refit(layer, h):
        if refiner is None:
            mat = obs_reconstruct(layer.matrix_view(sources[layer.name]), h, layer.matrix_view(masks[layer.name]),
                                  stats=solver_stats, **kwargs)  # fmt: skip
            layer.weight.copy_(layer.from_matrix(mat).to(layer.weight.device, layer.weight.dtype))
            return
        order = column_order(layer, cfg.conv_grouping)  # the k:n groups are contiguous in grouping order
        hg = h if order is None else h[order][:, order]
        new, keep = refiner(layer.name, to_grouped(layer, sources[layer.name], order), hg,
                            to_grouped(layer, masks[layer.name], order), pattern=cfg.pattern)  # fmt: skip
        masks[layer.name] = from_grouped(layer, keep, order)
        layer.weight.copy_(from_grouped(layer, new, order).to(layer.weight.device, layer.weight.dtype))

    tune = cfg.block_tune()  # aimed at the blocks with the source weights (what the re-fit aims at) swapped in
    tm = sequential_hessians(ctx.model, eligible, batches, refit, hessian_dtype=hessian_dtype(eligible), tune=tune,
                             dense_weights=sources if tune else None)  # fmt: skip
    if refiner is None or refiner.refits:
        ctx.record["reconstruct"] = refit_record(kwargs, solver_stats)
    if refiner is not None:
        ctx.record["refine"] = refiner.record()
    return tm


def _record(cfg, batches, mode, cand, skipped, perms, layer_rec, audit) -> dict:
    return {
        "calibration": batches.record() | {"row_cap_per_layer": ROW_CAP, "row_sampling": "stratified per batch"},
        "cast": {
            "pattern": str(cfg.pattern),
            "search": mode,
            "num_candidates": len(cand),
            "magnitude_candidate_per_cell": True,
            "skipped": skipped,
            "layers": layer_rec,
            "decisions": {
                "mask": "kept-slot pattern",
                "head": "skipped by registry role 'head'" if cfg.skip_head else "projected",
                "prior": f"alpha_ser={cfg.alpha_ser}, scale={cfg.prior_scale}, only on cells with a sparse source",
                "permutation": f"{cfg.perm_importance}; folded where exact; unfoldable permuted={cfg.permute_unfoldable}",
                "reconstruct": f"OBS re-fit of kept slots, sequential, {cfg.reconstruct_solver}"
                if cfg.reconstruct or cfg.refine in ("admm", "alps")
                else "off",
                "refine": cfg.refine or "off",
            },
        },
        "permutations": {k: v["perm"] for k, v in perms.items() if v["folded_into"] is None},
        "folded_permutations": {k: v["folded_into"] for k, v in perms.items() if v["folded_into"]},
        "legality": audit.to_dict(),
    }
