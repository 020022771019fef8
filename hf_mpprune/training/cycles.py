"""The cyclic pipeline (prune → fine-tune → evaluate per grid step) and the train-step contract.

`run_cycles(pruner, grid, train_step=..., evaluate=..., selection_eval=...)` drives any registered method along a
sparsity grid. Every step: `pruner.prune(sparsity=s)` (one mask step; SER's phase A happens inside it), then the
keep fine-tune (phase B) done HERE for every method — magnitude steps with `CycleFinetune`'s settings (§11.1),
SER steps with the method config's `keep_ft_*` settings and the linear LR ramp across SER targets (§6.2 (e)).
Per-step records are merged into the ledger step that `prune` appended.
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from huggingface_hub.utils import tqdm
from torch import nn

from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.registry import get_method
from .steps import make_train_step


logger = logging.getLogger(__name__)

DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 15))  # 0.05 … 0.70
Evaluator = Callable[[nn.Module], dict[str, float]]


class TrainStep(Protocol):
    """What the cyclic pipeline and SER call to train. Returns a dict of metrics (e.g. steps, train_loss).

    `phase="finetune"`: train every parameter that requires grad, with `masks` frozen (`Masks.freeze_`).
    `phase="ser_phase_a"`: only the True entries of `trainable` ({layer name: bool mask in weight shape}) may
    move; everything else is frozen for the call and restored afterwards. Extra keywords: `batch_size`,
    `data_fraction` and `min_steps` (step budget), `min_lr_ratio` (cosine floor), `reference` (frozen model for
    a logit-L2 term) and `logit_l2_weight`.
    """

    def __call__(self, model: nn.Module, masks: Masks | None, *, phase: str, trainable: dict | None, epochs: float,
                 lr: float, optimizer: str, **kwargs: Any) -> dict: ...  # fmt: skip


@dataclass
class CycleFinetune:
    """Fine-tune of non-SER steps (§11.1: 1 epoch, SGD momentum 0.9, LR 3e-5). `epochs=0` skips it."""

    epochs: float = 1.0
    lr: float = 3e-5
    optimizer: str = "sgd"

    def __post_init__(self):
        if self.epochs < 0 or not self.lr > 0:
            raise ConfigError(f"CycleFinetune needs epochs >= 0 and lr > 0, got {self.epochs}, {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"CycleFinetune optimizer={self.optimizer!r} must be 'sgd' or 'adamw'")


# ---- pure pieces --------------------------------------------------------------------------------------------
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


def check_grid(grid: Sequence[float]) -> list[float]:
    grid = [float(g) for g in grid]
    if not grid or any(not 0 < g < 1 for g in grid) or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ConfigError(f"grid={grid} must be a non-empty, strictly increasing list of sparsities in (0, 1)")
    return grid


# ---- glue ---------------------------------------------------------------------------------------------------
def _config_for(base, method: str):
    """The config of `method` with every same-named field taken from the run's base config."""
    cls = get_method(method).config_cls
    if type(base) is cls:
        return base
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(base).items() if k in names and k != "method"})


def _finetune(pruner, stage: str, s: float, grid, ser_start, train_step, finetune: CycleFinetune) -> dict:
    cfg = pruner.config
    if stage == "ser":
        targets = [g for g in grid if g >= ser_start - 1e-9]
        lr = cfg.keep_ft_lr * ramp_multiplier(s, targets, cfg.keep_ft_lr_ramp)
        kw = {"epochs": cfg.keep_ft_epochs, "lr": lr, "optimizer": cfg.keep_ft_optimizer}
    else:
        kw = {"epochs": finetune.epochs, "lr": finetune.lr, "optimizer": finetune.optimizer}
    if kw["epochs"] <= 0:
        return {"skipped": True, **kw}
    out = train_step(pruner.model, pruner.masks, phase="finetune", trainable=None, **kw) or {}
    pruner.masks.apply_(pruner.model)  # a custom train step may not re-zero; masks stay exact
    return {**kw, **out}


def _switch_check(pruner, s: float, post_sel: dict | None, state: dict) -> dict | None:
    """Drop-threshold rule on the selection split; sets `transition_sparsity` when it fires."""
    cfg = pruner.config
    if getattr(cfg, "switch", None) != "drop_threshold" or cfg.transition_sparsity is not None:
        return None
    value = post_sel[cfg.selection_metric]
    mode = cfg.drop_reference
    if state.get("reference") is None:
        if mode == "first_completed" or (mode == "s20_start" and s >= cfg.switch_sparsity - 1e-9):
            state["reference"] = value
            return {"reference_set": value, "mode": mode}
        if mode != "baseline":
            return None
    if drop_fired(state["reference"], value, cfg.drop_threshold_pp):
        pruner.config = dataclasses.replace(cfg, transition_sparsity=s)
        return {"reference": state["reference"], "mode": mode, "threshold_pp": cfg.drop_threshold_pp,
                "transition_sparsity": s, "value": value, "reason": "post-FT selection metric dropped below "
                "reference - threshold"}  # fmt: skip
    return {"reference": state["reference"], "value": value, "fired": False}


def run_cycles(
    pruner,
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    train_step: TrainStep,
    evaluate: Evaluator | None = None,
    selection_eval: Evaluator | None = None,
    method_for: Callable[[float], str] | None = None,
    finetune: CycleFinetune | None = None,
    calibration: Any = None,
    progress: bool = True,
) -> list[dict]:
    """Prune → fine-tune → evaluate along `grid`; returns the per-step records (also in `pruner.ledger.steps`).

    Args:
        pruner ([`MPPruner`]): holds the model and a config (e.g. `HybridConfig`); pruned in place.
        grid: increasing target sparsities (default 0.05 … 0.70).
        train_step ([`TrainStep`]): e.g. `make_train_step(train_dataset, ...)`.
        evaluate: `model -> {metric: value}` on the REPORTED split: logged before and after each fine-tune, never
            used for any decision.
        selection_eval: `model -> {metric: value}` on a held-out split carved from the training data; the only
            input of the drop-threshold switch rule (`HybridConfig(switch="drop_threshold")`).
        method_for: optional `s -> method name` to change the method per step (fields carried over by name).
        finetune ([`CycleFinetune`]): fine-tune settings of non-SER steps.
        calibration: model inputs for calibration-based methods (`wanda`, `mp-wanda`, `sparsegpt`, ...), passed to
            every `prune` step; activations are re-collected each cycle on the current (pruned, fine-tuned) model.
    """
    grid, finetune = check_grid(grid), finetune or CycleFinetune()
    if getattr(pruner.config, "switch", None) == "drop_threshold" and selection_eval is None:
        raise ConfigError("switch='drop_threshold' decides on a selection split: pass run_cycles(selection_eval=...)")
    if pruner.spectra is None and any(get_method(m).needs_spectra for m in _methods(pruner, grid, method_for)):
        pruner.analyze(progress=False)  # dense-model spectra, computed once (the paper's static cache)
    state: dict[str, Any] = {"ser_start": None, "base": pruner.config}
    if getattr(pruner.config, "drop_reference", None) == "baseline" and selection_eval is not None:
        state["reference"] = selection_eval(pruner.model)[pruner.config.selection_metric]
    records = []
    for s in tqdm(grid, desc="cycles", disable=not progress):
        records.append(
            _one_cycle(pruner, s, grid, train_step, evaluate, selection_eval, method_for, finetune, calibration, state)
        )
    return records


def _methods(pruner, grid, method_for) -> set[str]:
    return {method_for(s) for s in grid} if method_for else {pruner.config.method}


def _one_cycle(pruner, s, grid, train_step, evaluate, selection_eval, method_for, finetune, calibration, state):
    t0 = time.perf_counter()
    if method_for is not None and method_for(s) != pruner.config.method:
        pruner.config = _config_for(state["base"], method_for(s))
    pruner.prune(calibration, train_step=train_step, sparsity=s)
    rec = pruner.ledger.steps[-1]
    stage = rec.get("stage", pruner.config.method)
    if stage == "ser" and state["ser_start"] is None:
        state["ser_start"] = s
    rec["stage"] = stage
    rec["pre_ft"] = evaluate(pruner.model) if evaluate else None
    rec["finetune"] = _finetune(pruner, stage, s, grid, state["ser_start"], train_step, finetune)
    rec["post_ft"] = evaluate(pruner.model) if evaluate else None
    rec["post_ft_selection"] = selection_eval(pruner.model) if selection_eval else None
    rec["switch"] = _switch_check(pruner, s, rec["post_ft_selection"], state)
    rec["zeros_post_ft"] = Masks.from_model(pruner.model, pruner.masks.names).sparsity()  # real zeros in weights
    rec["cycle_seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("cycle s=%.2f stage=%s post_ft=%s", s, stage, rec["post_ft"])
    return rec


__all__ = ["DEFAULT_GRID", "CycleFinetune", "TrainStep", "make_train_step", "run_cycles"]
