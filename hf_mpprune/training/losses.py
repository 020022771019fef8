"""The training losses, in one place: knowledge distillation, feature distillation, pooling and logits extraction.

Both the `MPDistillationTrainer` and the small `make_train_step` loop use these functions (docs/algorithms.md §11.2).
"""

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError


FEATURE_LOSSES = ("cosine", "mse")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    label_smoothing: float = 0.1,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """`(1−α)·CE_ls(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`, averaged over items (docs/algorithms.md §11.2).

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
