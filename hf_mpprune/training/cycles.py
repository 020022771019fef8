"""The cyclic pipeline (prune → fine-tune → evaluate per grid step) and the train-step contract.

`run_cycles(pruner, grid, train_step=..., evaluate=..., selection_eval=...)` drives any registered method along a
sparsity grid. Every step: `pruner.prune(sparsity=s)` (one mask step; SER's phase A happens inside it), then the
keep fine-tune (phase B) done HERE for every method, with `CycleFinetune`'s settings (§11.1) unless the method's
registered `CycleHooks.finetune` says otherwise (SER steps: the config's `keep_ft_*` settings and the LR ramp,
§6.2 (e)); a method's `CycleHooks.start/after` hooks run before the grid and after each fine-tune (Hybrid's
drop-threshold switch). The driver never tests a method's name.
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


def _finetune(pruner, stage: str, s: float, grid, state: dict, train_step, finetune: CycleFinetune) -> dict:
    hook = get_method(pruner.config.method).cycle.finetune
    kw = hook(pruner.config, stage, s, grid, state) if hook else None
    if kw is None:
        kw = {"epochs": finetune.epochs, "lr": finetune.lr, "optimizer": finetune.optimizer}
    if kw["epochs"] <= 0:
        return {"skipped": True, **kw}
    out = train_step(pruner.model, pruner.masks, phase="finetune", trainable=None, **kw) or {}
    pruner.masks.apply_(pruner.model)  # a custom train step may not re-zero; masks stay exact
    return {**kw, **out}


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
    state: dict[str, Any] = {"base": pruner.config}
    start = get_method(pruner.config.method).cycle.start
    if start is not None:
        start(pruner.config, selection_eval, pruner.model, state)
    if pruner.spectra is None and any(get_method(c.method).uses_spectra(c) for c in _configs(state, grid, method_for)):
        pruner.analyze(progress=False)  # dense-model spectra, computed once (the paper's static cache)
    records = []
    for s in tqdm(grid, desc="cycles", disable=not progress):
        records.append(
            _one_cycle(pruner, s, grid, train_step, evaluate, selection_eval, method_for, finetune, calibration, state)
        )
    return records


def _configs(state, grid, method_for) -> list:
    """The config of every step (the base config, or each step's method with the base's fields)."""
    return [_config_for(state["base"], method_for(s)) for s in grid] if method_for else [state["base"]]


def _one_cycle(pruner, s, grid, train_step, evaluate, selection_eval, method_for, finetune, calibration, state):
    t0 = time.perf_counter()
    if method_for is not None and method_for(s) != pruner.config.method:
        pruner.config = _config_for(state["base"], method_for(s))
    pruner.prune(calibration, train_step=train_step, sparsity=s)
    rec = pruner.ledger.steps[-1]
    stage = rec.get("stage", pruner.config.method)
    rec["stage"] = stage
    rec["pre_ft"] = evaluate(pruner.model) if evaluate else None
    rec["finetune"] = _finetune(pruner, stage, s, grid, state, train_step, finetune)
    rec["post_ft"] = evaluate(pruner.model) if evaluate else None
    rec["post_ft_selection"] = selection_eval(pruner.model) if selection_eval else None
    after = get_method(pruner.config.method).cycle.after
    new_config, rec["switch"] = after(pruner.config, s, rec["post_ft_selection"], state) if after else (None, None)
    if new_config is not None:
        pruner.config = new_config
    rec["zeros_post_ft"] = Masks.from_model(pruner.model, pruner.masks.names).sparsity()  # real zeros in weights
    rec["cycle_seconds"] = round(time.perf_counter() - t0, 3)
    logger.info("cycle s=%.2f stage=%s post_ft=%s", s, stage, rec["post_ft"])
    return rec


__all__ = ["DEFAULT_GRID", "CycleFinetune", "TrainStep", "make_train_step", "run_cycles"]
