"""Layer allocations: how the one-shot pruners (wanda, sparsegpt) split the global budget over the registered layers
(docs/algorithms.md §18.6).

Every allocation gives each layer ℓ a weight w_ℓ (a sparsity before renormalisation); the prune counts are then
c_ℓ ∝ w_ℓ·n_ℓ, capped, with exactly floor(s·P) in total (`common.layer_budgets`: water-filling plus largest
remainder). The within-layer pruner (Wanda's rows, SparseGPT's OBS sweep) and the optional re-fit do not change.

* `"uniform"`: w_ℓ = 1 (every layer at s, up to rounding; the default).
* `"owl"` (Yin et al. 2024): per transformer block, the outlier ratio D_b = share of the block's Wanda scores
  |W_ij|·‖x_j‖₂ (all its layers together) above M × their mean; D min–max scaled to [0, 2λ] and centred;
  block sparsity s − (scaled D_b − mean); every layer of the block gets it. Layers outside the blocks keep s.
* `"alphapruning"` (Lu et al. 2024): PL_Alpha_Hill of each layer's ESD (`spectral.tail`); for text models
  averaged over the layers of each block; min–max mapped to [1 − ε, 1 + ε] (larger α ⇒ pruned more).
* `"mp"`: the MP layer weights of `common.layer_weights` (the MP budget of mp-wanda `mapping="layer"` and
  mp-sparsegpt; default MP settings unless the config carries its own).
"""

import logging
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.calibration import input_sq_norms
from ..core.errors import ConfigError
from ..core.joined import block_index, find_blocks
from ..core.registry import PruneContext
from ..spectral.tail import XMIN_RULES, pl_alpha_hill
from .common import MPBudgetOptions, layer_budgets, layer_weights, wanda_score


logger = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "owl", "alphapruning", "mp")
SPECTRAL_ALLOCATIONS = ("alphapruning", "mp")
OPTIONS = {"owl": ("owl_m", "owl_lambda"), "alphapruning": ("alpha_epsilon", "alpha_xmin")}
OWL_M, OWL_LAMBDA = 5.0, 0.08  # the paper's defaults
ALPHA_DEFAULTS = {"text": (0.3, "peak"), "vision": (0.2, "median")}  # (ε, x_min rule) by modality
MAX_LAYER_SPARSITY = 0.95  # cap of owl / alphapruning layers (raised to s when s is above it)
MIN_BLOCK_SPARSITY = 0.01  # OWL's floor for a block whose centred rate falls to 0 or below


@dataclass
class AllocationOptions:
    """How the budget floor(s·P) is split over layers (mixed into `WandaConfig` and `SparseGPTConfig`).

    Args:
        allocation (`str`, defaults to `"uniform"`): `"uniform"`, `"owl"`, `"alphapruning"` or `"mp"` (see
            `hf_mpprune.methods.allocation`). Not with a k:n `pattern` (it fixes every layer's density).
        owl_m (`float`, *optional*): OWL's outlier threshold M (a score is an outlier above M × the block mean);
            default 5. Only with `allocation="owl"`.
        owl_lambda (`float`, *optional*): OWL's λ (block sparsities spread over 2λ); default 0.08.
        alpha_epsilon (`float`, *optional*): AlphaPruning's ε (multipliers in [1 − ε, 1 + ε]); default 0.2 for
            vision models (main input `pixel_values`), 0.3 otherwise. Only with `allocation="alphapruning"`.
        alpha_xmin (`str`, *optional*): the Hill cut-off rule, `"peak"` (fix-finger search) or `"median"`;
            default `"median"` for vision models, `"peak"` otherwise.
    """

    allocation: str = "uniform"
    owl_m: float | None = None
    owl_lambda: float | None = None
    alpha_epsilon: float | None = None
    alpha_xmin: str | None = None

    _fixed_allocation: ClassVar[str | None] = None  # a method built on one allocation (mp-sparsegpt: "mp")

    def _check_allocation(self) -> None:
        fixed = self._fixed_allocation
        if fixed is not None and self.allocation != fixed:
            raise ConfigError(
                f"{self.method} always uses allocation={fixed!r}; for allocation={self.allocation!r} use "
                f"method={self.method.removeprefix('mp-')!r}"
            )
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation={self.allocation!r} must be one of {ALLOCATIONS}")
        stray = [
            n for a, names in OPTIONS.items() if a != self.allocation for n in names if getattr(self, n) is not None
        ]
        if stray:
            raise ConfigError(f"{stray} do nothing with allocation={self.allocation!r}: remove them")
        if fixed is None and self.allocation != "uniform" and self.pattern is not None:
            raise ConfigError(
                f"allocation={self.allocation!r} cannot be combined with pattern={str(self.pattern)!r}: a k:n "
                "pattern fixes every layer's density"
            )
        if self.owl_m is not None and not self.owl_m > 0:
            raise ConfigError(f"owl_m={self.owl_m} must be > 0 (the paper uses 5)")
        if self.owl_lambda is not None and not 0 <= self.owl_lambda < 0.5:
            raise ConfigError(f"owl_lambda={self.owl_lambda} must be in [0, 0.5) (the paper uses 0.08)")
        if self.alpha_epsilon is not None and not 0 <= self.alpha_epsilon < 1:
            raise ConfigError(f"alpha_epsilon={self.alpha_epsilon} must be in [0, 1) (0.2 vision, 0.3 text)")
        if self.alpha_xmin is not None and self.alpha_xmin not in XMIN_RULES:
            raise ConfigError(f"alpha_xmin={self.alpha_xmin!r} must be one of {XMIN_RULES}")


def uses_spectra(config) -> bool:
    """Whether `config`'s allocation reads the dense model's spectra (the pruner fits them first)."""
    return getattr(config, "allocation", "uniform") in SPECTRAL_ALLOCATIONS


# ---- pure pieces ---------------------------------------------------------------------------------------------
def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of all entries of `scores` (taken together) above m × their mean."""
    total = sum(float(s.sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    thr = m * total / count
    return sum(int((s > thr).sum()) for s in scores) / count


def owl_block_sparsity(ratios: dict, sparsity: float, lam: float) -> dict:
    """s_b = s − (D̃_b − mean D̃) with D̃ = 2λ·(D − min D)/(max D − min D), floored at `MIN_BLOCK_SPARSITY`.
    Equal ratios give every block s."""
    d = torch.tensor(list(ratios.values()), dtype=torch.float64)
    span = float(d.max() - d.min())
    scaled = (d - d.min()) / span * 2 * lam if span > 0 else torch.zeros_like(d)
    s = sparsity - (scaled - scaled.mean())
    return {b: max(MIN_BLOCK_SPARSITY, float(v)) for b, v in zip(ratios, s)}


def alpha_multipliers(alphas: dict[str, float | None], eps: float) -> dict[str, float]:
    """(α − min α)/(max α − min α) mapped linearly onto [1 − ε, 1 + ε]; a missing α (or equal α's) gives 1."""
    ok = [a for a in alphas.values() if a is not None and math.isfinite(a)]
    lo, hi = (min(ok), max(ok)) if ok else (0.0, 0.0)
    if hi <= lo:
        return dict.fromkeys(alphas, 1.0)
    return {
        n: 1.0 if a is None or not math.isfinite(a) else 1.0 - eps + 2 * eps * (a - lo) / (hi - lo)
        for n, a in alphas.items()
    }


# ---- the allocations -----------------------------------------------------------------------------------------
def block_of(ctx: PruneContext) -> tuple[str | None, dict[str, int | None]]:
    """(path of the repeated blocks, block index of every layer or None outside them) (`core.joined.find_blocks`)."""
    found = find_blocks(ctx.model, list(ctx.layers)) if ctx.model is not None else None
    if found is None:
        return None, dict.fromkeys(ctx.layers.names)
    prefix = found[0]
    return prefix, {la.name: block_index(la.name, prefix) for la in ctx.layers}


def _owl(ctx: PruneContext, scores, batches) -> tuple[dict[str, float], dict]:
    cfg = ctx.config
    m = OWL_M if cfg.owl_m is None else cfg.owl_m
    lam = OWL_LAMBDA if cfg.owl_lambda is None else cfg.owl_lambda
    prefix, blocks = block_of(ctx)
    if prefix is None:
        raise ConfigError("allocation='owl' allocates per transformer block, and this model has no repeated blocks")
    sq = input_sq_norms(ctx.model, ctx.layers, batches) if scores is None else None  # SparseGPT: dense inputs

    def score(la) -> torch.Tensor:
        return scores[la.name] if scores is not None else wanda_score(la, sq[la.name])

    members: dict[int, list] = {}
    for la in ctx.layers:
        if blocks[la.name] is not None:
            members.setdefault(blocks[la.name], []).append(la)
    ratios = {b: outlier_ratio([score(la) for la in las], m) for b, las in sorted(members.items())}
    block_s = owl_block_sparsity(ratios, cfg.sparsity, lam)
    weights = {n: cfg.sparsity if b is None else block_s[b] for n, b in blocks.items()}
    record = {"owl_m": m, "owl_lambda": lam, "blocks": prefix, "outlier_ratio": ratios, "block_sparsity": block_s}
    return weights, record


def modality(ctx: PruneContext) -> str:
    """`"vision"` for models whose main input is `pixel_values`, `"text"` otherwise."""
    return "vision" if getattr(ctx.model, "main_input_name", None) == "pixel_values" else "text"


def _alphapruning(ctx: PruneContext) -> tuple[dict[str, float], dict]:
    cfg, kind = ctx.config, modality(ctx)
    eps = ALPHA_DEFAULTS[kind][0] if cfg.alpha_epsilon is None else cfg.alpha_epsilon
    xmin = ALPHA_DEFAULTS[kind][1] if cfg.alpha_xmin is None else cfg.alpha_xmin
    fits = spectra_fits(ctx)
    alphas: dict[str, float | None] = {}
    for la in ctx.layers:
        fit = fits.get(la.name)
        if fit is not None and len(fit.singular_values) == 0:
            raise ConfigError(f"the spectra of {la.name!r} carry no singular values: re-run MPPruner.analyze()")
        alphas[la.name] = pl_alpha_hill(fit.singular_values**2, xmin)[0] if fit is not None else None
    prefix, blocks = block_of(ctx) if kind == "text" else (None, {})
    signal = dict(alphas)
    if prefix is not None:  # text: every layer of a block takes the block's mean α (the paper's LLM mapping)
        means: dict[int, list[float]] = {}
        for n, b in blocks.items():
            if b is not None and alphas[n] is not None:
                means.setdefault(b, []).append(alphas[n])
        signal = {
            n: alphas[n] if b is None or b not in means else sum(means[b]) / len(means[b]) for n, b in blocks.items()
        }
    record = {
        "modality": kind, "alpha_epsilon": eps, "alpha_xmin": xmin, "alpha": alphas,
        "mapping": f"block mean ({prefix})" if prefix is not None else "per matrix",
    }  # fmt: skip
    return alpha_multipliers(signal, eps), record


def spectra_fits(ctx: PruneContext) -> dict:
    """Registered layer name -> its dense-model MP fit; `ConfigError` when the spectra were never fitted."""
    if ctx.spectra is None:
        raise ConfigError(f"allocation={ctx.config.allocation!r} needs the dense model's spectra: MPPruner.analyze()")
    return ctx.spectra.by_layer()


def layer_counts(ctx: PruneContext, *, scores: dict | None = None, batches=None) -> dict[str, int]:
    """Prune count of every layer under the config's allocation, exactly floor(s·P) in total; the allocation, its
    settings, the statistic, each layer's allocated sparsity and the seconds spent go to `ctx.record["allocation"]`.

    `scores`: the layers' Wanda scores when the caller has them (OWL); otherwise OWL computes them from `batches`.
    """
    cfg = ctx.config
    name = cfg.allocation
    t0 = time.perf_counter()
    numel = {la.name: la.numel for la in ctx.layers}
    cap = max(MAX_LAYER_SPARSITY, cfg.sparsity)
    record: dict = {}
    if name == "uniform":
        weights, cap = dict.fromkeys(numel, 1.0), 1.0
    elif name == "owl":
        weights, record = _owl(ctx, scores, batches)
    elif name == "alphapruning":
        weights, record = _alphapruning(ctx)
    else:  # "mp": the config's MP settings when it has them (mp-sparsegpt), the defaults otherwise
        spectra_fits(ctx)
        opts = ctx.config if isinstance(ctx.config, MPBudgetOptions) else MPBudgetOptions()
        weights, cap = layer_weights(ctx, opts), max(opts.max_layer_sparsity, cfg.sparsity)
        record = {"signal": opts.signal, "beta": opts.beta, "decay_end": opts.decay_end}
    counts = layer_budgets(numel, weights, cfg.sparsity, cap)
    ctx.record["allocation"] = {"allocation": name, **record}
    if name != "uniform":
        ctx.record["allocation"] |= {
            "layer_weights": weights, "max_layer_sparsity": cap,
            "layer_sparsity": {n: counts[n] / numel[n] for n in counts},
            "seconds": round(time.perf_counter() - t0, 3),  # OWL with SparseGPT: includes its extra forward
        }  # fmt: skip
        logger.info("allocation %s: layer sparsity %.3f … %.3f", name, *_range(counts, numel))
    return counts


def _range(counts: dict[str, int], numel: dict[str, int]) -> tuple[float, float]:
    r = [counts[n] / numel[n] for n in counts]
    return min(r), max(r)
