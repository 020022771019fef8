"""What a model is for and what it takes, answered by optimum: its task (`TasksManager.infer_task_from_model`), the
`AutoModelFor*` class of a task (`TasksManager.get_model_class_for_task`), and dummy inputs with the right names,
shapes and dtypes (`optimum.utils.input_generators` over `optimum.utils.normalized_config`).

Dummy inputs feed the export checks, MAC counts, the speed audit, ToMe's checks and the random audit set of the
certificates. Ours only where optimum has nothing: the image size of timm models (optimum has no normalized config for
`timm_wrapper`; the size comes from the timm data config in `config.pretrained_cfg`), which text inputs a model takes
(token type ids only when the config has more than one type), and a fixed seed around optimum's generators (they draw
from the global random generators, which are restored afterwards).
"""

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import torch
from optimum.exporters.tasks import TasksManager
from optimum.utils.input_generators import DummyTextInputGenerator, DummyVisionInputGenerator
from optimum.utils.normalized_config import NormalizedConfigManager, NormalizedTextConfig, NormalizedVisionConfig
from torch import nn

from .errors import ConfigError


DEFAULT_TASK = "feature-extraction"  # a model class TasksManager cannot place is used as a feature extractor


def infer_task(model: nn.Module) -> str:
    """The task of a model object (`"image-classification"`, `"text-classification"`, `"feature-extraction"`, ...),
    from optimum's `TasksManager`; `DEFAULT_TASK` for a class it does not know."""
    try:
        return TasksManager.infer_task_from_model(model)
    except (ValueError, KeyError):
        pass
    # optimum 2.3.0 compares the class name with each entry of its task -> model type -> class table, and misses the
    # entries that transformers 5 made tuples (several classes for one model type: DeiT's two image classifiers)
    name = type(model).__name__
    for task, mapping in TasksManager._TRANSFORMERS_TASKS_TO_MODEL_MAPPINGS.items():
        if any(isinstance(v, tuple) and name in v for v in mapping.values()):
            return task
    return DEFAULT_TASK  # a plain nn.Module or a class outside transformers' auto mappings


def task_model_class(task: str) -> type:
    """The transformers `AutoModelFor*` class of `task` (`AutoModel` for `"feature-extraction"`)."""
    try:
        return TasksManager.get_model_class_for_task(task, library="transformers")
    except KeyError as e:
        raise ConfigError(f"no transformers model class for task {task!r}: {e}") from e


def folder_task(path: str | os.PathLike) -> str:
    """The task a checkpoint folder whose config names no architecture class is loaded for: optimum's task for
    timm checkpoints (image classification, the only one it maps), else `DEFAULT_TASK`."""
    if TasksManager.infer_library_from_model(os.fspath(path)) == "timm":
        return "image-classification"  # TasksManager's one task of the timm library
    return DEFAULT_TASK


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


def _normalized(config: Any, fallback: type) -> Any:
    model_type = getattr(config, "model_type", None)
    try:
        cls = NormalizedConfigManager.get_normalized_config_class(model_type)
    except KeyError:  # optimum lists no normalized config for it (swin, convnext, timm_wrapper, ...)
        cls = fallback
    return cls(config)


def _timm_image(config: Any) -> dict[str, int]:
    """Channels and size of a timm checkpoint's inputs, from its data config (`pretrained_cfg["input_size"]`)."""
    size = (getattr(config, "pretrained_cfg", None) or {}).get("input_size")
    if not size:
        return {}
    channels, height, width = size
    return {"num_channels": channels, "height": height, "width": width}


def _text_names(model: nn.Module, config: Any) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if int(getattr(config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


def dummy_inputs(
    model: nn.Module, batch_size: int = 2, seq_len: int = 16, *, seed: int = 0, device: Any = None, dtype: Any = None
) -> dict[str, torch.Tensor]:
    """Random inputs for `model(**inputs)`, built by optimum's generators for the model's main input.

    Image models get `pixel_values` of the config's size (timm: its data config; a model without a size, such as a
    ResNet, optimum's default 64×64); text models get `input_ids`, an `attention_mask` with right padding (optimum's
    random mask: masking is exercised) and `token_type_ids` when the config has several types. Floats are cast to
    `dtype` (default: the model's), everything is put on `device` (default: the model's). `ConfigError` for a model
    whose main input is neither.
    """
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    task = infer_task(model)
    if main == "pixel_values":
        gen = DummyVisionInputGenerator(task, _normalized(config, NormalizedVisionConfig), batch_size=batch_size,
                                        **_timm_image(config))  # fmt: skip
        names = ["pixel_values"]
    elif main == "input_ids":
        seq_len = min(seq_len, getattr(config, "max_position_embeddings", None) or seq_len)  # positions the model has
        gen = DummyTextInputGenerator(task, _normalized(config, NormalizedTextConfig), batch_size=batch_size,
                                      sequence_length=seq_len)  # fmt: skip
        names = _text_names(model, config)
    else:
        raise ConfigError(
            f"cannot build dummy inputs for {type(model).__name__} (main input {main!r}); pass the inputs yourself "
            "(a dict of tensors)"
        )
    param = next(model.parameters(), None)
    device = device if device is not None else (param.device if param is not None else "cpu")
    dtype = dtype if dtype is not None else (param.dtype if param is not None else torch.float32)
    with _seeded(seed):
        out = {n: gen.generate(n, framework="pt") for n in names}
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in out.items()}
