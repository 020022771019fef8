"""The data of a recipe run: which roles are needed (training, selection, calibration, evaluation), their specs
(missing ones derived from the others), loading and carving them (`hf_mpprune.data.DataPlan`), preprocessing with
the model's own processor and one probe forward per role, all before any work is done or file written."""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ..core.calibration import CalibrationBatches
from ..core.errors import ConfigError
from ..core.ledger import indices_sha256
from ..core.outputs import is_causal_lm
from ..core.registry import get_method
from ..data.columns import detect_columns
from ..data.evaluation import task_of
from ..data.lm import prepare_lm, window_length
from ..data.preprocess import load_processor, modality, prepare, probe
from ..data.spec import DatasetSpec
from ..data.splits import DataPlan
from .schema import Recipe


logger = logging.getLogger(__name__)


@dataclass
class Needs:
    calibration: bool
    train: bool  # per-cycle fine-tune or distillation
    cyclic: bool  # a step that runs through run_cycles (needs the selection split)


def is_cyclic(step) -> bool:
    cfg = step.build()
    return cfg.pattern is None and (get_method(cfg.method).needs_training or len(step.targets()) > 1)


def needs(recipe: Recipe) -> Needs:
    cyclic = any(is_cyclic(s) for s in recipe.pruning)
    calib = any(get_method(s.method).needs_calibration for s in recipe.pruning) or recipe.calibration is not None
    has_train_source = any(x is not None for x in (recipe.train, recipe.calibration, recipe.evaluation))
    train = recipe.distill is not None or (cyclic and (has_train_source or _must_train(recipe)))
    return Needs(calib, train, cyclic and train)


def _must_train(recipe: Recipe) -> bool:
    return any(get_method(s.method).needs_training for s in recipe.pruning)


def _derive(recipe: Recipe, role: str) -> DatasetSpec | None:
    """A training (or calibration) spec taken from the other sections: same dataset, split `train`."""
    sources = (recipe.train, recipe.calibration, recipe.evaluation) if role == "calibration" else (
        recipe.calibration, recipe.evaluation)  # fmt: skip
    src = next((s for s in sources if s is not None), None)
    if src is None:
        return None
    keep = ("dataset", "config", "revision", "image_column", "text_column", "text_pair_column", "label_column",
            "max_length", "extra")  # fmt: skip
    return DatasetSpec(**{k: getattr(src, k) for k in keep}, seed=recipe.seed)


def train_spec(recipe: Recipe) -> DatasetSpec:
    spec = recipe.train or _derive(recipe, "train")
    if spec is None:
        raise ConfigError(
            "this recipe trains (distill, or a method that fine-tunes between steps) but names no data: add a "
            "'train' section (e.g. train: {dataset: imagenet-1k, split: train})"
        )
    return spec


def build_plan(recipe: Recipe, model: nn.Module, need: Needs, dataset_override: Any = None) -> DataPlan:
    """Load and carve every role the recipe needs (`ConfigError` naming the problem; nothing written)."""
    plan = DataPlan()
    if need.train:
        plan.add_train(train_spec(recipe), selection=need.cyclic)
    if need.calibration:
        spec = recipe.calibration or _derive(recipe, "calibration")
        if spec is None:
            methods = [s.method for s in recipe.pruning if get_method(s.method).needs_calibration]
            raise ConfigError(
                f"method(s) {methods} need calibration data: add a 'calibration' section "
                "(e.g. calibration: {dataset: imagenet-1k, split: train, size: 256}) or pass --dataset"
            )
        plan.add_calibration(spec, windows=is_causal_lm(model))
    if recipe.evaluation is not None:
        plan.add_evaluation(recipe.evaluation)
    return plan


def prepare_plan(plan: DataPlan, model: nn.Module, processor_src: str, processor=None):
    """Attach the model's processor to every role and probe one batch of each; returns the processor."""
    if not plan.roles:
        return processor
    kind = modality(model)
    if processor is None:
        processor = load_processor(processor_src, kind)
    channels = getattr(getattr(model, "config", None), "num_channels", None)
    lm = is_causal_lm(model)
    for name, r in plan.roles.items():
        source = f"{r.info['dataset']!r} ({r.info['split']}, {name} rows)"
        if r.spec.stride is not None and not (lm and name == "evaluation"):
            raise ConfigError(f"{source}: stride applies to the perplexity of decoder language models only")
        cols = detect_columns(r.split.base.features, kind, spec=r.spec, source=source)
        if name in ("train", "selection") and cols.label is None and _classifier(model):
            raise ConfigError(
                f"{source} has no label column but {type(model).__name__} is trained on labels; set label_column"
            )
        if lm:  # token windows (docs/llm.md); the rows actually used replace the drawn ones
            length = window_length(model, r.spec.max_length)
            r.prepared, r.indices = prepare_lm(
                r.split.base, r.indices, processor, cols, name, max_length=length, stride=r.spec.stride,
                size=r.spec.size,
            )  # fmt: skip
            r.args = {"max_length": length, **({"stride": r.spec.stride or length} if name == "evaluation" else {})}
        else:
            r.prepared = prepare(r.rows(), processor, cols, kind, channels=channels, max_length=r.spec.max_length,
                                 pad_to_max_length=kind == "text" and name in ("train", "selection"),
                                 with_labels=name != "calibration")  # fmt: skip
        probe(model, r.prepared, r.rows(), source, processor)
    return processor


def _classifier(model: nn.Module) -> bool:
    return "Classification" in type(model).__name__


def calibration_batches(plan: DataPlan) -> CalibrationBatches | None:
    if "calibration" not in plan:
        return None
    r = plan["calibration"]
    batches = list(r.prepared.batches(r.spec.batch_size))
    return CalibrationBatches(batches, len(r.prepared), "indexed", indices_sha256(r.indices), r.spec.seed)


def eval_task(model: nn.Module, plan: DataPlan, role: str = "evaluation") -> str | None:
    return task_of(model, plan[role].prepared) if role in plan else None


def one_input(plan: DataPlan) -> dict | None:
    """A batch of one row (MAC counting), from evaluation, else calibration, else training data."""
    for name in ("evaluation", "calibration", "train"):
        if name in plan:
            return {k: v for k, v in plan[name].prepared.batch(0, 1).items() if k != "labels"}
    return None


def audit_rows(plan: DataPlan, n: int = 256) -> dict | None:
    """Up to `n` evaluation rows as one batch of inputs (the data-path certificate's audit set)."""
    if "evaluation" not in plan:
        return None
    r = plan["evaluation"].prepared
    return {k: v for k, v in r.batch(0, min(n, len(r))).items() if k != "labels"}


def describe(plan: DataPlan) -> dict[str, Any]:
    return {
        name: {**r.info, "indices_sha256": indices_sha256(np.asarray(r.indices))} for name, r in plan.roles.items()
    }
