"""The fine-tuning / distillation step that a training run adds to the model's ledger (one ledger for pruning and
training). `save_pretrained`, `Trainer.save_model` and every Trainer checkpoint write the ledger that holds it."""

import time
from typing import Any

from torch import nn

from ..core.attached import attach, attached_ledger
from ..core.ledger import Ledger, environment
from ..core.masks import Masks
from .checkpoints import state_sha256


# TrainingArguments fields that change the numbers of a run (the rest is I/O and logging).
RECORDED_ARGS = (
    "kd_alpha", "kd_temperature", "label_smoothing", "distill_mode", "feature_loss", "learning_rate", "weight_decay",
    "warmup_steps", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "optim", "optim_args", "max_grad_norm", "seed", "data_seed", "bf16", "fp16",
    "teacher_model_name_or_path",
)  # fmt: skip


def model_ledger(model: nn.Module) -> Ledger:
    """The ledger attached to `model`, or a new one attached now (a model pruned outside `MPPruner`)."""
    ledger = attached_ledger(model)
    if ledger is None:
        ledger = Ledger(identity=environment())
        name = getattr(getattr(model, "config", None), "_name_or_path", "")
        if name:
            ledger.identity["base_model"] = name
        attach(model, ledger=ledger)
    return ledger


def dataset_provenance(dataset: Any) -> dict[str, Any] | None:
    """What identifies a training set: its type and size, plus `datasets` fingerprint / name / split if any."""
    if dataset is None:
        return None
    out: dict[str, Any] = {"type": type(dataset).__name__}
    try:
        out["num_rows"] = len(dataset)
    except TypeError:  # an IterableDataset
        pass
    for key in ("_fingerprint", "split"):
        value = getattr(dataset, key, None)
        if value is not None:
            out[key.lstrip("_")] = str(value)
    info = getattr(dataset, "info", None)
    for key in ("dataset_name", "config_name", "version"):
        value = getattr(info, key, None)
        if value is not None:
            out[key] = str(value)
    return out


def teacher_identity(teacher: nn.Module | None) -> dict[str, Any] | None:
    if teacher is None:
        return None
    name = getattr(getattr(teacher, "config", None), "_name_or_path", "") or type(teacher).__name__
    return {"id": name, "weights_sha256": state_sha256(teacher)}


def _cached_teacher(trainer: Any) -> dict[str, Any] | None:
    """The teacher's identity, hashed once per trainer (the teacher is frozen)."""
    if getattr(trainer, "_mpprune_teacher_identity", None) is None:
        trainer._mpprune_teacher_identity = teacher_identity(getattr(trainer, "teacher", None))
    return trainer._mpprune_teacher_identity


def training_step(trainer: Any, masks: Masks | None, masks_source: str, *, status: str, t0: float,
                  train_loss: float | None = None, resumed_from: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The ledger record of a training run (also written, with `status="running"`, into every checkpoint)."""
    args, state = trainer.args, trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    evals = [h for h in state.log_history if any(k.startswith("eval_") for k in h)]
    kd = args.distill_mode == "features" or args.kd_alpha > 0
    record: dict[str, Any] = {
        "method": "distill" if kd else "finetune",
        "kind": "distill" if kd else "finetune",
        "status": status,
        "trainer": type(trainer).__name__,
        "global_step": int(state.global_step),
        "total_steps": int(state.max_steps),
        "epoch": None if state.epoch is None else round(float(state.epoch), 4),
        "train_loss": train_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "eval_metrics": evals[-1] if evals else {},
        "teacher": _cached_teacher(trainer) if kd else None,
        "train_dataset": dataset_provenance(trainer.train_dataset),
        "eval_dataset": dataset_provenance(trainer.eval_dataset),
        "masks_source": masks_source,
        "mask_sha256": None if masks is None else masks.sha256(),
        "achieved_sparsity": None if masks is None else masks.sparsity(),
        "world_size": int(args.world_size),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    record.update({k: _plain(getattr(args, k, None)) for k in RECORDED_ARGS})  # the arguments, flat
    if resumed_from:
        record["resumed_from"] = resumed_from
    return record


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
