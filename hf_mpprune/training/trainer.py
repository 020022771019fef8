"""Frozen-mask distillation with the `transformers.Trainer` (ALGORITHMS.md §1.4, §11.2).

* `kd_loss` and `feature_loss`: pure loss functions, tested alone.
* `MaskFreezeCallback`: both mask-freezing steps of §1.4 — gradient masking during backward (tensor hooks, so
  clipping, gradient accumulation and DDP all-reduce only ever see masked gradients) and re-masking after every
  optimizer step (`on_optimizer_step`: weight decay and momentum cannot resurrect a pruned entry).
* `MPDistillationTrainer`: a thin `Trainer` subclass. The teacher goes through accelerate
  (`prepare_model(evaluation_mode=True)`, eval mode, no grad); masks travel with every checkpoint
  (`mpprune_masks.safetensors`) and are verified on `train(resume_from_checkpoint=...)`.

Launch on several processes with `accelerate launch your_script.py` (see the README).
"""

import dataclasses
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..core.constants import LIBRARY_TAG, MASKS_NAME
from ..core.errors import ConfigError, LedgerMismatchError, MPPruneWarning
from ..core.loading import load_model
from ..core.masks import Masks, weight_of
from .presets import get_preset, read_yaml_arguments


logger = logging.getLogger(__name__)

DISTILL_MODES = ("logits", "features")
FEATURE_LOSSES = ("cosine", "mse")


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


# ---- pure losses ----------------------------------------------------------------------------------------------
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    label_smoothing: float = 0.1,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """`(1−α)·CE_ls(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, averaged over items (ALGORITHMS.md §11.2).

    Logits are `(..., C)`; items are all leading positions (a batch for classifiers). Labels equal to -100 are
    ignored by both terms. The sum over items is divided by `num_items_in_batch` when given (the whole
    gradient-accumulation batch), else by the number of labelled items in this batch ("batch mean").
    `teacher_logits` may be None when `alpha == 0`; `labels` may be None when `alpha == 1`.
    """
    num_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, num_classes).float()  # (N, C)
    y = None if labels is None else labels.reshape(-1).to(s.device)  # (N,)
    valid = torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if y is None else y != -100
    denom = valid.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = s.new_zeros(())
    if alpha < 1:
        if y is None:
            raise ConfigError(f"kd_alpha={alpha} < 1 needs labels for the CE term; pass labels or set kd_alpha=1")
        loss = loss + (1 - alpha) * F.cross_entropy(s, y, label_smoothing=label_smoothing, reduction="sum")
    if alpha > 0:
        if teacher_logits is None:
            raise ConfigError(f"kd_alpha={alpha} > 0 needs teacher logits; give a teacher or set kd_alpha=0")
        if tuple(teacher_logits.shape) != tuple(student_logits.shape):
            raise ConfigError(
                f"teacher logits have shape {tuple(teacher_logits.shape)} but the student's are "
                f"{tuple(student_logits.shape)}; the teacher must share the student's label space"
            )
        t = teacher_logits.reshape(-1, num_classes).to(s)
        log_ps, log_pt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
        kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # (N,) KL(p_t ‖ p_s)
        loss = loss + alpha * temperature**2 * kl[valid].sum()
    return loss / denom


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-mask-weighted mean over the sequence: `(B, L, H) -> (B, H)`."""
    if attention_mask is None:
        return hidden.mean(1)
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between student and teacher embeddings `(B, H)`: mean `1 − cos` or mean squared error."""
    if student.shape != teacher.shape:
        raise ConfigError(
            f"teacher embeddings have shape {tuple(teacher.shape)} but the student's are {tuple(student.shape)}; "
            "feature distillation needs the same hidden size"
        )
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(s, t)
    raise ConfigError(f"feature_loss must be one of {FEATURE_LOSSES}, got {kind!r}")


def realised_sparsity(model: nn.Module, masks: Masks) -> float:
    """Fraction of exactly-zero entries over the masked weights (what §1.4 step 2 keeps from drifting)."""
    zeros = sum(int((weight_of(model, n) == 0).sum()) for n in masks)
    return zeros / max(1, masks.numel)


# ---- mask freezing ----------------------------------------------------------------------------------------------
class MaskFreezeCallback(TrainerCallback):
    """Keep `masks` frozen through any optimizer (ALGORITHMS.md §1.4, both steps).

    `on_train_begin` applies the masks (after a checkpoint was loaded) and registers gradient hooks;
    `on_optimizer_step` re-applies them with exact +0.0; `on_train_end` removes the hooks.
    """

    def __init__(self, masks: Masks):
        self.masks = masks
        self._device_masks: Masks | None = None
        self._handles: list = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._remove_hooks()
        self.masks.check_model(model)
        device = weight_of(model, self.masks.names[0]).device if len(self.masks) else torch.device("cpu")
        self._device_masks = self.masks.to(device)
        drift = sum(int((weight_of(model, n)[~m] != 0).sum()) for n, m in self._device_masks.items())
        if drift:
            logger.warning("%d pruned entries were nonzero at train start (re-zeroed)", drift)
        self._device_masks.apply_(model)
        self._handles = self._device_masks.freeze_(model)  # gradient masking; no optimizer: re-mask below

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._device_masks.apply_(model)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# ---- the trainer ----------------------------------------------------------------------------------------------
class MPDistillationTrainer(Trainer):
    """`Trainer` with frozen masks and knowledge distillation from a dense teacher (ALGORITHMS.md §11.2).

    Args:
        model: the (pruned) student; an ordinary `PreTrainedModel`.
        teacher (`nn.Module` or `str`, *optional*): the dense teacher, or a path/Hub id loaded with the class
            named in its config. Defaults to `args.teacher_model_name_or_path`. Not needed when `kd_alpha == 0`
            or when every batch carries a precomputed `teacher_logits` column.
        masks ([`Masks`], *optional*): frozen during training, saved into every checkpoint as
            `mpprune_masks.safetensors` and verified on resume. When omitted, masks found in the checkpoint
            passed to `train(resume_from_checkpoint=...)` are adopted.
        args ([`MPDistillationArguments`]): KD and Trainer arguments.
        **kwargs: everything else `Trainer` takes (datasets, collator, `compute_metrics`, callbacks, ...).
    """

    _tag_names = [LIBRARY_TAG, "pruned", "knowledge-distillation"]
    kd_loss = staticmethod(kd_loss)

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher: nn.Module | str | os.PathLike | None = None,
        masks: Masks | None = None,
        args: MPDistillationArguments | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, MPDistillationArguments):
            raise ConfigError(f"args must be MPDistillationArguments, got {type(args).__name__}")
        if masks is not None:
            masks.check_model(model)  # PatternError naming a missing layer / wrong shape, before any work
        teacher = teacher if teacher is not None else args.teacher_model_name_or_path
        if teacher is not None and teacher is model:
            raise ConfigError("the teacher is the student itself; pass a dense copy (copy.deepcopy before pruning)")
        owned = isinstance(teacher, (str, os.PathLike))
        if owned:
            teacher = load_model(teacher).requires_grad_(False)  # ours alone: frozen outright
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss, not the model's: no num_items_in_batch in forward
        self.masks: Masks | None = None
        if masks is not None:
            self._set_masks(masks)
        self.teacher = self._prepare_teacher(teacher) if teacher is not None else None

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Frozen teacher placed by accelerate (never `.to('cuda')`): eval mode, not DDP-wrapped, run under
        `torch.no_grad`. A caller's teacher keeps its `requires_grad` flags (the dense model stays copyable into
        further students); one loaded from a path is frozen outright."""
        teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        return teacher.eval()

    def _set_masks(self, masks: Masks) -> None:
        self.masks = masks
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
                teacher_logits = self._teacher_outputs(inputs).logits
            loss = kd_loss(
                outputs.logits, teacher_logits, labels, a.kd_alpha, a.kd_temperature, a.label_smoothing,
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
        # `_save` runs for `save_model` and for every checkpoint, before any push: the sidecar lands with the weights
        super()._save(output_dir, state_dict)
        if self.masks is not None and self.args.should_save:
            self.masks.save(os.path.join(output_dir or self.args.output_dir, MASKS_NAME))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`; on resume, the checkpoint's masks are verified against (or adopted as) ours."""
        ckpt = resume_from_checkpoint
        if ckpt is True:
            ckpt = get_last_checkpoint(self.args.output_dir)
        if isinstance(ckpt, (str, os.PathLike)):
            self._restore_masks(str(ckpt))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _restore_masks(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, MASKS_NAME)
        if not os.path.isfile(path):
            if self.masks is not None:
                warnings.warn(f"{checkpoint} has no {MASKS_NAME}; keeping the masks given", MPPruneWarning, 2)
            return
        saved = Masks.load(path)  # verifies the SHA-256 in its header
        if self.masks is None:
            saved.check_model(self.model)
            self._set_masks(saved)
        elif saved.sha256() != self.masks.sha256():
            raise LedgerMismatchError(
                f"masks in {path} (sha256 {saved.sha256()[:12]}…) differ from the masks given to the trainer "
                f"({self.masks.sha256()[:12]}…); resume with masks=None to adopt the checkpoint's masks"
            )
        logger.info("resuming with masks %s… from %s", saved.sha256()[:12], checkpoint)
