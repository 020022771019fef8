"""A small default `TrainStep` (see `hf_mpprune.training.cycles.TrainStep`): a plain, seeded torch loop with frozen masks.

Two phases share one loop:
- `"finetune"`: every trainable parameter moves; registered weights keep their masks (gradient masking and
  post-step re-zeroing, docs/algorithms.md §1.4). Loss: CE with label smoothing, or KD
  `(1-α)·CE_ls + α·T²·KL(teacher‖student)` (α = 0.5, T = 2, LS 0.1, §11.2).
- `"ser_phase_a"` (SER selection phase, §6.2 (c)): only the entries flagged in `trainable` move. Every other
  parameter gets `requires_grad=False` for the duration (restored afterwards); gradients of the registered
  weights are multiplied by the reservoir mask and, after each step, every non-reservoir entry is copied back
  from a snapshot, so nothing else can drift. Loss: CE_ls + `logit_l2_weight`·mean‖z − z_ref‖² against a frozen
  `reference` copy.

The KD Trainer (issue 3) is the production path for Hugging Face training; this loop exists so that cycles run
without it (tests, CPU benchmarks).
"""

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..core.errors import ConfigError
from ..core.masks import Masks
from ..core.outputs import logits_of
from .losses import kd_loss


logger = logging.getLogger(__name__)

PHASES = ("finetune", "ser_phase_a")


# ---- pure pieces --------------------------------------------------------------------------------------------
def lr_factor(step: int, total: int, *, warmup: int, start: float, end: float) -> float:
    """Linear warmup from `start` to 1 over `warmup` steps, then half-cosine from 1 down to `end`."""
    if step < warmup:
        return start + (1 - start) * step / max(1, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def num_steps(n_train: int, batch_size: int, epochs: float, data_fraction: float = 1.0, min_steps: int = 0) -> int:
    """Optimiser steps for `epochs` passes over `data_fraction` of the data, at least `min_steps` (and 1)."""
    return max(1, min_steps, math.ceil(epochs * data_fraction * n_train / batch_size))


# ---- glue ---------------------------------------------------------------------------------------------------
def _as_inputs(batch, input_key: str, label_key: str) -> tuple[dict, torch.Tensor]:
    if isinstance(batch, dict):
        batch = dict(batch)
        return batch, batch.pop(label_key)
    x, y = batch
    return {input_key: x}, y


def _batches(dataset, batch_size: int, generator: torch.Generator) -> Iterator:
    while True:  # cycles through reshuffled epochs until the caller stops
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=False)


def _optimizer(name: str, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer={name!r} is not supported by the default train step; use 'sgd' or 'adamw'")


@contextlib.contextmanager
def _phase_a_freeze(model: nn.Module, trainable: dict[str, torch.Tensor]):
    """Only reservoir entries train: freeze all other params, mask gradients; yields (params, post-step hook)."""
    saved = {p: p.requires_grad for p in model.parameters()}
    handles, params, snaps = [], [], []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, mask in trainable.items():
            w = model.get_submodule(name).weight
            m = mask.to(w.device)
            if not bool(m.any()):
                continue
            w.requires_grad_(True)
            params.append(w)
            snaps.append((w, m, w.detach().clone()))
            handles.append(w.register_hook(lambda g, m=m: g * m))

        @torch.no_grad()
        def restore_frozen(*_):
            for w, m, snap in snaps:
                w.copy_(torch.where(m, w, snap))

        yield params, restore_frozen
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)


def make_train_step(
    train_dataset,
    *,
    batch_size: int = 128,
    loss: str = "ce",
    teacher: nn.Module | None = None,
    seed: int = 0,
    label_smoothing: float = 0.1,
    kd_alpha: float = 0.5,
    kd_temperature: float = 2.0,
    weight_decay: float = 1e-6,
    grad_clip: float | None = 1.0,
    input_key: str = "pixel_values",
    label_key: str = "labels",
):
    """Build a `TrainStep` over `train_dataset` (items: input dicts with `label_key`, or `(x, y)` tuples).

    Fine-tune schedule (§11.1): linear warmup over `min(500, steps/4)` steps from 1% of the LR, then cosine to 1%.
    Phase-A schedule (§6.2): cosine from the LR to `min_lr_ratio`·LR, no weight decay. Each call draws its batches
    from `torch.Generator(seed + call_index)`, so a run is reproducible call by call.
    """
    if loss not in ("ce", "kd"):
        raise ConfigError(f"loss={loss!r} must be 'ce' or 'kd'")
    if loss == "kd" and teacher is None:
        raise ConfigError("loss='kd' needs teacher=<the dense model> (frozen, eval mode)")
    calls = {"n": 0}

    def train_step(model, masks: Masks | None, *, phase: str = "finetune", trainable=None, epochs: float = 1.0,
                   lr: float = 3e-5, optimizer: str = "sgd", batch_size: int = batch_size, data_fraction: float = 1.0,
                   min_steps: int = 0, min_lr_ratio: float | None = None, reference: nn.Module | None = None,
                   logit_l2_weight: float = 0.0) -> dict:  # fmt: skip
        if phase not in PHASES:
            raise ConfigError(f"phase={phase!r} must be one of {PHASES}")
        if phase == "ser_phase_a" and not trainable:
            raise ConfigError("phase 'ser_phase_a' needs trainable={layer name: bool reservoir mask}")
        gen = torch.Generator().manual_seed(seed + calls["n"])
        calls["n"] += 1
        total = num_steps(len(train_dataset), batch_size, epochs, data_fraction, min_steps)
        was_training = model.training
        model.train()
        try:
            if phase == "ser_phase_a":
                with _phase_a_freeze(model, trainable) as (params, post):
                    opt = _optimizer(optimizer, params, lr, 0.0)
                    opt.register_step_post_hook(post)
                    sched = {"warmup": 0, "start": 1.0, "end": 0.25 if min_lr_ratio is None else min_lr_ratio}
                    return _loop(model, opt, total, sched, _batches(train_dataset, batch_size, gen), reference,
                                 logit_l2_weight)  # fmt: skip
            params = [p for p in model.parameters() if p.requires_grad]
            opt = _optimizer(optimizer, params, lr, weight_decay)
            handles = masks.freeze_(model, opt) if masks is not None else []
            try:
                end = 0.01 if min_lr_ratio is None else min_lr_ratio
                sched = {"warmup": min(500, total // 4), "start": 0.01, "end": end}
                return _loop(model, opt, total, sched, _batches(train_dataset, batch_size, gen), None, 0.0)
            finally:
                for h in handles:
                    h.remove()
        finally:
            model.train(was_training)

    def _loop(model, opt, total, sched, batches, reference, l2w) -> dict:
        base = [g["lr"] for g in opt.param_groups]
        running, n = 0.0, 0
        for step in range(total):
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * lr_factor(step, total, **sched)
            inputs, labels = _as_inputs(next(batches), input_key, label_key)
            z = logits_of(model(**inputs))
            if loss == "kd" and reference is None:
                with torch.no_grad():
                    zt = logits_of(teacher(**inputs))
                value = kd_loss(z, zt, labels, kd_alpha, kd_temperature, label_smoothing)
            else:
                value = F.cross_entropy(z, labels, label_smoothing=label_smoothing)
            if reference is not None and l2w > 0:
                with torch.no_grad():
                    zr = logits_of(reference(**inputs))
                value = value + l2w * (z - zr).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
            opt.step()
            running += float(value.detach())
            n += 1
        return {"steps": total, "train_loss": running / max(1, n)}

    return train_step
