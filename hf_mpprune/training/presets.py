"""Fine-tuning presets: the paper's recipes (docs/algorithms.md §11) as plain `MPDistillationArguments` overrides.

Use them from Python, `MPDistillationArguments.from_preset("vit_kd_canonical", output_dir="out")`, or from YAML,
`MPDistillationArguments.from_yaml("ft.yaml")` with a file such as::

    preset: vit_kd_canonical   # optional; any other key overrides the preset
    output_dir: runs/vit-24
    num_train_epochs: 5        # the paper's pilot: 5-10 epochs add +0.1-0.3 pp

Deviations from the paper that `TrainingArguments` cannot express are listed per preset in `NOTES`.
"""

import os
from typing import Any

import yaml

from ..core.errors import ConfigError


# §11.1: per-cycle fine-tune of the unstructured (magnitude prefix / Hybrid) cycles. Plain CE with label
# smoothing (kd_alpha = 0: no teacher), SGD momentum 0.9 (no Nesterov), wd 1e-6 on all params, LR 3e-5,
# warmup from 1% of base LR then cosine down to 1% of base LR, 1 epoch, batch 128/256, clip 1.0, seed 42.
_CYCLE_FT = {
    "kd_alpha": 0.0,
    "label_smoothing": 0.1,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "learning_rate": 3e-5,
    "weight_decay": 1e-6,
    "lr_scheduler_type": "cosine_warmup_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 0.01, "warmup_lr_rate": 0.01},
    "warmup_steps": 500,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "max_grad_norm": 1.0,
    "seed": 42,
}

# §11.2: 3-epoch frozen-mask KD from the dense teacher (alpha 0.5, T 2, LS 0.1), linear warmup to the base LR
# then half-cosine to 0, fp32, no grad clipping. One entry per table row.
_KD = {
    "kd_alpha": 0.5,
    "kd_temperature": 2.0,
    "label_smoothing": 0.1,
    "optim": "adamw_torch",
    "learning_rate": 1e-5,
    "weight_decay": 0.01,
    "warmup_steps": 1000,
    "lr_scheduler_type": "cosine",
    "num_train_epochs": 3,
    "max_grad_norm": 0.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    "magnitude_cycle_ft": _CYCLE_FT,
    "vit_kd_canonical": {**_KD, "per_device_train_batch_size": 32},
    "vitl_kd": {**_KD, "per_device_train_batch_size": 8},
    "vitl_kd_dense_perm": {**_KD, "per_device_train_batch_size": 16},
    "resnet_kd_dense_perm": {
        **_KD,
        "optim": "sgd",
        "optim_args": "momentum=0.9,nesterov=True",
        "learning_rate": 1e-3,
        "weight_decay": 1e-4,
        "warmup_steps": 500,
        "per_device_train_batch_size": 256,
    },  # fmt: skip
    "resnet_kd_cast_conv": {**_KD, "warmup_steps": 0, "per_device_train_batch_size": 64},
    "convnextv2_kd": {**_KD, "per_device_train_batch_size": 32},
}

NOTES: dict[str, str] = {
    "magnitude_cycle_ft": "paper warmup is min(500, total_steps/4); set warmup_steps=0.25 for runs under 2000 steps. "
    "bf16 autocast in the paper (set bf16=True on a GPU).",
    "resnet_kd_cast_conv": "the paper decays all parameters (no no-decay groups); Trainer exempts bias/norm weights.",
    "resnet_kd_dense_perm": "the paper also exempts 1-D/BN parameters from decay, as the Trainer does.",
    "convnextv2_kd": "the paper adds Mixup 0.8 in the data pipeline (not a Trainer argument).",
}


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the named preset's argument overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}


def read_yaml_arguments(path: str | os.PathLike) -> dict[str, Any]:
    """Keyword arguments from a YAML file: an optional `preset:` key, every other key overriding it."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}")
    name = data.pop("preset", None)
    return {**(get_preset(name) if name else {}), **data}
