"""`hf_mpprune.oneshot(model, recipe_or_config, dataset=..., output_dir=...)`: the whole recipe pipeline as one call
(in the style of llm-compressor's `oneshot`), returning the `MPPruner`."""

import copy
import dataclasses
import os
from typing import Any

import datasets
from torch import nn

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.registry import get_method
from ..data.spec import DatasetSpec, load_split
from ..pruner import MPPruner
from .runner import execute
from .schema import Recipe, apply_overrides, read_recipe, recipe_from_dict


_PLACEHOLDER = "<oneshot dataset>"
_ROLES = ("train", "calibration", "evaluation")


def _recipe_dict(recipe_or_config: Any) -> dict[str, Any]:
    if isinstance(recipe_or_config, Recipe):
        return copy.deepcopy(recipe_or_config.raw)
    if isinstance(recipe_or_config, PruningConfig):
        cfg = recipe_or_config.to_dict()
        cfg.pop("hf_mpprune_version", None)
        return {"pruning": {k: v for k, v in cfg.items() if v is not None}}
    if isinstance(recipe_or_config, str | os.PathLike):
        return read_recipe(recipe_or_config)[0]
    if isinstance(recipe_or_config, dict):
        data = copy.deepcopy(recipe_or_config)
        return data if "pruning" in data else {"pruning": data}  # a bare PruningConfig mapping
    raise ConfigError(
        f"recipe_or_config must be a Recipe, a recipe file or name, a mapping or a PruningConfig, got "
        f"{type(recipe_or_config).__name__}"
    )


def _as_spec(dataset: Any) -> DatasetSpec | None:
    if dataset is None or isinstance(dataset, DatasetSpec):
        return dataset
    if isinstance(dataset, dict):
        return DatasetSpec(**dataset)
    if isinstance(dataset, str | os.PathLike | datasets.Dataset | datasets.DatasetDict):
        return DatasetSpec(dataset if not isinstance(dataset, os.PathLike) else os.fspath(dataset))
    raise ConfigError(
        f"dataset must be a spec string, a mapping, a DatasetSpec or a datasets.Dataset, got {dataset!r}"
    )


def _has_split(spec: DatasetSpec, split: str) -> bool:
    if isinstance(spec.dataset, datasets.Dataset):
        return False
    if isinstance(spec.dataset, datasets.DatasetDict):
        return split in spec.dataset
    try:
        load_split(dataclasses.replace(spec, split=None), split)
        return True
    except ConfigError:
        return False


def _fill(recipe: Recipe, spec: DatasetSpec) -> None:
    for role in _ROLES:
        section = getattr(recipe, role)
        if section is None or section.dataset != _PLACEHOLDER:
            continue
        given = recipe.raw.get(role) or {}
        for f in dataclasses.fields(DatasetSpec):
            if f.name in given and f.name != "dataset":
                continue
            if f.name == "split" and role == "evaluation":
                continue  # the user's split selects training / calibration rows; evaluation keeps 'validation'
            setattr(section, f.name, getattr(spec, f.name))


def oneshot(
    model: str | nn.Module, recipe_or_config: Any, dataset: Any = None, output_dir: str | os.PathLike | None = None,
    *, processor: Any = None, cache_dir: str | None = None, push: bool = False, overrides: list[str] | None = None,
) -> MPPruner:  # fmt: skip
    """Prune `model` as `recipe_or_config` says, on `dataset`, and save to `output_dir`; returns the pruner.

    Args:
        model: a Hub id or local folder, or a model object (pruned in place).
        recipe_or_config: a `Recipe`, a recipe file or shipped recipe name, a recipe mapping, or a `PruningConfig`
            (or its mapping) for a plain one-shot prune.
        dataset: a dataset spec string (Hub id, folder, file), a `DatasetSpec` / mapping, or a `datasets.Dataset` /
            `DatasetDict`. It fills every data section of the recipe that names no dataset, adds a calibration
            section when a method needs one, and an evaluation section when the dataset has a `validation` split.
        output_dir: where the checkpoint goes (default: `output.dir` of the recipe; nothing is saved without one).
        processor: the image processor / tokenizer, or where to load it from (default: the model's folder).
        overrides: `key.path=value` strings, as `hf-mpprune run --set`.
    """
    data = _recipe_dict(recipe_or_config)
    section = dict(data.get("model") or {})
    section["id"] = model if isinstance(model, str) else section.get("id") or "<in-memory>"
    data["model"] = section
    if isinstance(processor, str):
        data["model"]["processor"] = processor
        processor = None
    if overrides:
        data = apply_overrides(data, overrides)
    spec = _as_spec(dataset)
    if spec is not None:
        for role in _ROLES:
            if isinstance(data.get(role), dict) and "dataset" not in data[role]:
                data[role]["dataset"] = _PLACEHOLDER
        steps = data["pruning"] if isinstance(data["pruning"], list) else [data["pruning"]]
        if "calibration" not in data and any(
            get_method(s.get("method", "magnitude")).needs_calibration for s in steps
        ):
            data["calibration"] = {"dataset": _PLACEHOLDER}
        if "evaluation" not in data and _has_split(spec, "validation"):
            data["evaluation"] = {"dataset": _PLACEHOLDER}
    recipe = recipe_from_dict(data)
    if spec is not None:
        _fill(recipe, spec)
    out = output_dir or recipe.output.dir
    pruner, _ = execute(
        recipe, output_dir=os.fspath(out) if out else None, push=push, cache_dir=cache_dir,
        model=None if isinstance(model, str) else model, processor=processor, save=bool(out),
    )  # fmt: skip
    return pruner
