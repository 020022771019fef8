"""Frozen-mask distillation with the `transformers.Trainer` (docs/algorithms.md §1.4, §11.2).

* `MPDistillationTrainer`: a thin `Trainer` subclass. The masks it freezes come from `masking.resolve_masks`
  (given, attached to the model by `MPPruner`, from a resumed checkpoint, or from exact zeros; a dense model is
  refused), frozen by `masking.MaskFreezeCallback`. The teacher goes through accelerate
  (`prepare_model(evaluation_mode=True)`, eval mode, no grad). Losses live in `losses`.
* Checkpoints carry masks and ledger, are marked complete last (`checkpoints`), resume through the model's own
  `from_pretrained` (transformers 5 legacy keys), and `train()` appends its step to the model's ledger (`record`).

Launch on several processes with `torchrun` or `accelerate launch your_script.py` (see docs/training.md).
"""

import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from ..core.attached import attach, attached_ledger, unwrap_model
from ..core.constants import LEDGER_NAME, LIBRARY_TAG, MASKS_NAME
from ..core.errors import ConfigError, LedgerMismatchError, MPPruneWarning
from ..core.ledger import Ledger, weights_sha256
from ..core.loading import load_model
from ..core.masks import Masks
from ..core.outputs import is_causal_lm, logits_of
from .checkpoints import latest_complete_checkpoint, load_weights, mark_complete
from .losses import FEATURE_LOSSES, feature_loss, kd_loss, mean_pool
from .masking import MaskFreezeCallback, dense_error, realised_sparsity, resolve_masks
from .presets import get_preset, read_yaml_arguments
from .record import model_ledger, training_step


logger = logging.getLogger(__name__)

DISTILL_MODES = ("logits", "features")
__all__ = [
    "MPDistillationArguments", "MPDistillationTrainer", "MaskFreezeCallback", "feature_loss", "kd_loss",
    "mean_pool", "realised_sparsity",
]  # fmt: skip


@dataclass
class MPDistillationArguments(TrainingArguments):
    """`TrainingArguments` for frozen-mask fine-tuning/distillation; defaults are the §11.2 canonical ViT row.

    Loss (logits mode): `(1−α)·CE_ls(z_S, y) + α·T²·KL(softmax(z_T/T) ‖ softmax(z_S/T))`, batch mean.
    `kd_alpha=0` is plain label-smoothed CE fine-tuning (no teacher needed; the §11.1 per-cycle recipe).

    Decisions [D]:
    * `distill_mode="features"` (sentence encoders, no logits): the embedding is the attention-mask-weighted mean
      of `last_hidden_state` (the sentence-transformers pooling of all-MiniLM-L6-v2; BERT's `pooler_output` is
      untrained there), and the loss is `feature_loss` between student and teacher embeddings: `"cosine"`
      (default, `1 − cos`, scale-free and the same quantity the embedding-agreement metric reports) or `"mse"`.
      Labels are not used in this mode.
    * `warmup_steps=0.01`: the paper's 1000 steps are ~1% of its 3 ImageNet epochs at batch 32; a ratio keeps
      short runs sane (`from_preset("vit_kd_canonical")` restores the literal 1000).
    * `max_grad_norm=1.0` (Trainer default) as a safety net; the paper clips nothing (the presets follow it).
    * `remove_unused_columns=False`: image pipelines and the optional `teacher_logits` column must reach us.
    """

    kd_alpha: float = field(default=0.5, metadata={"help": "Weight α of the distillation term, in [0, 1]."})
    kd_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T > 0."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the CE term, in [0, 1)."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher to load when none is passed to the trainer (dense checkpoint)."}
    )
    distill_mode: str = field(default="logits", metadata={"help": "'logits' (KD) or 'features' (encoders)."})
    feature_loss: str = field(default="cosine", metadata={"help": "Feature mode loss: 'cosine' or 'mse'."})
    # TrainingArguments defaults replaced by the §11.2 canonical ViT row
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate (§11.2: 1e-5)."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay, bias/norm excluded (§11.2)."})
    warmup_steps: float = field(default=0.01, metadata={"help": "Warmup steps (>=1) or ratio (<1)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Linear warmup, then half-cosine to 0."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "§11.2: 3 epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "§11.2 canonical ViT: 32."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (§11.2: AdamW)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Logging integrations."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image/teacher_logits columns."})

    def __post_init__(self):
        _check_kd_fields(self)
        super().__post_init__()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MPDistillationArguments":
        """Arguments of a named recipe (`hf_mpprune.training.presets.PRESETS`), with keyword overrides."""
        return cls._from_kwargs({**get_preset(name), **overrides})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "MPDistillationArguments":
        """Arguments from a YAML file (optional `preset:` key plus overrides), with keyword overrides."""
        return cls._from_kwargs({**read_yaml_arguments(path), **overrides})

    @classmethod
    def _from_kwargs(cls, kwargs: dict[str, Any]) -> "MPDistillationArguments":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(f"unknown argument(s) {unknown}; they must be MPDistillationArguments fields")
        return cls(**kwargs)


def _check_kd_fields(a: MPDistillationArguments) -> None:
    if not 0.0 <= a.kd_alpha <= 1.0:
        raise ConfigError(f"kd_alpha must be in [0, 1], got {a.kd_alpha}; 0 = plain CE, 0.5 = the paper's mix")
    if not (math.isfinite(a.kd_temperature) and a.kd_temperature > 0):
        raise ConfigError(f"kd_temperature must be a finite number > 0, got {a.kd_temperature}; the paper uses 2.0")
    if not 0.0 <= a.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {a.label_smoothing}; the paper uses 0.1")
    if a.distill_mode not in DISTILL_MODES:
        raise ConfigError(f"distill_mode must be one of {DISTILL_MODES}, got {a.distill_mode!r}")
    if a.feature_loss not in FEATURE_LOSSES:
        raise ConfigError(f"feature_loss must be one of {FEATURE_LOSSES}, got {a.feature_loss!r}")
    if a.label_smoothing_factor:
        raise ConfigError(
            f"label_smoothing_factor={a.label_smoothing_factor} would smooth a second time; "
            "set label_smoothing instead and leave label_smoothing_factor at 0"
        )


# ---- the trainer ----------------------------------------------------------------------------------------------
class MPDistillationTrainer(Trainer):
    """`Trainer` with frozen masks and knowledge distillation from a dense teacher (docs/algorithms.md §11.2).

    Args:
        model: the (pruned) student; an ordinary `PreTrainedModel`.
        teacher (`nn.Module` or `str`, *optional*): the dense teacher, or a path/Hub id loaded with the class
            named in its config. Defaults to `args.teacher_model_name_or_path`. Not needed when `kd_alpha == 0`
            or when every batch carries a precomputed `teacher_logits` column.
        masks ([`Masks`] or `False`, *optional*): frozen during training, saved into every checkpoint as
            `mpprune_masks.safetensors` and verified on resume. When omitted: the masks attached to the model by
            `MPPruner` (after `prune()` or `from_pretrained`), else those of the checkpoint passed to
            `train(resume_from_checkpoint=...)`, else masks derived from the exact zeros of the registered layers
            (logged at WARNING). A model with none of these is dense and `train()` raises `ConfigError`;
            `masks=False` trains without masks on purpose.
        args ([`MPDistillationArguments`]): KD and Trainer arguments.
        **kwargs: everything else `Trainer` takes (datasets, collator, `compute_metrics`, callbacks, ...).
    """

    _tag_names = [LIBRARY_TAG, "pruned", "knowledge-distillation"]
    kd_loss = staticmethod(kd_loss)

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher: nn.Module | str | os.PathLike | None = None,
        masks: Masks | bool | None = None,
        args: MPDistillationArguments | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, MPDistillationArguments):
            raise ConfigError(f"args must be MPDistillationArguments, got {type(args).__name__}")
        resolved, source = resolve_masks(model, masks)  # PatternError naming a bad layer, before any work
        teacher = teacher if teacher is not None else args.teacher_model_name_or_path
        if teacher is not None and teacher is model:
            raise ConfigError("the teacher is the student itself; pass a dense copy (copy.deepcopy before pruning)")
        owned = isinstance(teacher, (str, os.PathLike))
        if owned:
            teacher = load_model(teacher).requires_grad_(False)  # ours alone: frozen outright
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss, not the model's: no num_items_in_batch in forward
        self.masks: Masks | None = None
        self._dense_ok, self._masks_source = masks is False, source
        self._t0: float | None = None
        self._resumed_from: str | None = None
        if resolved is not None:
            self._set_masks(resolved)
        self.teacher = self._prepare_teacher(teacher) if teacher is not None else None

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Frozen teacher placed by accelerate (never `.to('cuda')`): eval mode, not DDP-wrapped, run under
        `torch.no_grad`. A caller's teacher keeps its `requires_grad` flags (the dense model stays copyable into
        further students); one loaded from a path is frozen outright."""
        teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        return teacher.eval()

    def _set_masks(self, masks: Masks) -> None:
        self.masks = masks
        self.remove_callback(MaskFreezeCallback)
        self.add_callback(MaskFreezeCallback(masks))

    # ---- loss -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _teacher_outputs(self, inputs: dict[str, Any]):
        if self.teacher is None:
            raise ConfigError(
                "distillation needs a teacher: pass teacher=..., set teacher_model_name_or_path, add a "
                "'teacher_logits' column, or set kd_alpha=0 for plain fine-tuning"
            )
        self.teacher.eval()  # Trainer.train() calls model.train() on the student only; be explicit anyway
        return self.teacher(**inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """KD (logits mode) or embedding distillation (features mode); see `MPDistillationArguments`."""
        inputs = dict(inputs)  # the caller's dict keeps its labels (prediction_step reads them)
        labels = inputs.pop("labels", None)
        teacher_logits = inputs.pop("teacher_logits", None)
        causal = is_causal_lm(model)
        if causal:  # decoder LMs: no KV cache while training
            inputs.setdefault("use_cache", False)
        outputs = model(**inputs)
        a = self.args
        if a.distill_mode == "features":
            mask = inputs.get("attention_mask")
            student = mean_pool(outputs.last_hidden_state, mask)
            teacher = mean_pool(self._teacher_outputs(inputs).last_hidden_state, mask)
            loss = feature_loss(student, teacher, a.feature_loss)
            outputs = {"student_embedding": student, "teacher_embedding": teacher}
        else:
            if a.kd_alpha > 0 and teacher_logits is None:
                teacher_logits = logits_of(self._teacher_outputs(inputs))
            student_logits = logits_of(outputs)
            if causal:  # position t predicts token t + 1: both terms on the shifted positions
                student_logits = student_logits[:, :-1]
                teacher_logits = None if teacher_logits is None else teacher_logits[:, :-1]
                labels = None if labels is None else labels[:, 1:]
            loss = kd_loss(
                student_logits, teacher_logits, labels, a.kd_alpha, a.kd_temperature, a.label_smoothing,
                num_items_in_batch,
            )  # fmt: skip
        # a sum divided by the whole accumulated batch is already scaled for gradient accumulation
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Features mode: predictions are the student embeddings and "labels" the teacher's, so that
        `make_compute_metrics("embedding")` reports their agreement (encoders usually have no labels)."""
        if self.args.distill_mode != "features":
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), out["student_embedding"].detach(), out["teacher_embedding"]

    # ---- logging, saving, resuming ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.masks is not None:
            logs["sparsity"] = realised_sparsity(self.model, self.masks)
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # `_save` runs for `save_model` and for every checkpoint, before any push: the sidecars land with the weights
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        ledger = Ledger.from_dict(model_ledger(self.model).to_dict())  # a copy: the running step is provisional
        ledger.identity["weights_sha256"] = weights_sha256(output_dir, exclude=(MASKS_NAME,))
        if self.masks is not None:
            ledger.identity["mask_sha256"] = self.masks.save(os.path.join(output_dir, MASKS_NAME))
        if getattr(self, "_t0", None) is not None:  # inside train(): the step so far
            ledger.add_step(**self._step_record("running"))
        ledger.to_json(os.path.join(output_dir, LEDGER_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, then the completion marker (last), then rotation: a kill -9 at any moment
        leaves the previous complete checkpoint in place and this one without a marker."""
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once this checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            mark_complete(os.path.join(run_dir, f"checkpoint-{self.state.global_step}"), self.masks,
                          self.state.global_step)  # fmt: skip
            rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Weights through the model's own `from_pretrained` (its key conversion; transformers issue 43701)."""
        model = model if model is not None else self.model
        if isinstance(model, PreTrainedModel) and not hasattr(model, "peft_config") and not self.is_fsdp_enabled:
            load_weights(model, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: the same key conversion as resume (transformers' own path misses it)."""
        best = self.state.best_model_checkpoint
        if isinstance(self.model, PreTrainedModel) and not hasattr(self.model, "peft_config") and best:
            if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
                logger.info("loading the best model from %s (metric %s)", best, self.state.best_metric)
                load_weights(self.model, best)
                return
        super()._load_best_model()

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train` with frozen masks; appends a fine-tune/distill step to the model's ledger.

        `resume_from_checkpoint=True` picks the newest *complete* checkpoint (see `training.checkpoints`); its
        masks are verified against (or adopted as) ours and its ledger is restored when the model has none.
        """
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = latest_complete_checkpoint(self.args.output_dir, quarantine=self.args.should_save)
            if ckpt is None:
                raise ConfigError(
                    f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint; "
                    "pass resume_from_checkpoint=None to start afresh"
                )
        if isinstance(ckpt, (str, os.PathLike)):
            ckpt = os.fspath(ckpt)
            self._restore_masks(ckpt)
            self._restore_ledger(ckpt)
        if self.masks is None and not self._dense_ok:
            raise dense_error(self.model)
        self._t0, self._resumed_from = time.perf_counter(), ckpt if isinstance(ckpt, str) else None
        try:
            out = super().train(resume_from_checkpoint=ckpt, **kwargs)
            model_ledger(self.model).add_step(**self._step_record("done", out.training_loss))
        finally:
            self._t0 = None
        return out

    def _run_epoch(self, *args: Any, **kwargs: Any):
        """A run resumed from its final checkpoint (`global_step == max_steps`) must not take one more step:
        transformers only checks `max_steps` after a step, which ended a 40-step run at 41 when step 40 fell
        inside an epoch."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _step_record(self, status: str, train_loss: float | None = None) -> dict[str, Any]:
        return training_step(self, self.masks, self._masks_source, status=status, t0=self._t0,
                             train_loss=train_loss, resumed_from=self._resumed_from)  # fmt: skip

    def _restore_ledger(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, LEDGER_NAME)
        if attached_ledger(self.model) is not None or not os.path.isfile(path):
            return
        ledger = Ledger.from_json(path)
        ledger.steps = [s for s in ledger.steps if s.get("status") != "running"]
        attach(self.model, ledger=ledger)

    def _restore_masks(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, MASKS_NAME)
        if not os.path.isfile(path):
            if self.masks is not None:
                warnings.warn(f"{checkpoint} has no {MASKS_NAME}; keeping the masks given", MPPruneWarning, 2)
            return
        saved = Masks.load(path)  # verifies the SHA-256 in its header
        if self.masks is None or self._masks_source == "zeros":
            saved.check_model(unwrap_model(self.model))
            self._set_masks(saved)
            self._masks_source = "checkpoint"
            attach(self.model, masks=saved)
        elif saved.sha256() != self.masks.sha256():
            raise LedgerMismatchError(
                f"masks in {path} (sha256 {saved.sha256()[:12]}…) differ from the masks of the trainer "
                f"({self.masks.sha256()[:12]}…, {self._masks_source}); resume with a model without masks "
                "(and masks=None) to adopt the checkpoint's masks"
            )
        logger.info("resuming with masks %s… from %s", saved.sha256()[:12], checkpoint)
