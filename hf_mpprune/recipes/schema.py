"""Recipes: one YAML file per reproducible run (`yaml.safe_load`, no `eval`, unknown keys rejected).

Sections (all but `model` and `pruning` optional)::

    name: vit-b16-hybrid-s050            # free text
    description: ...
    seed: 0
    model: {id: google/vit-base-patch16-224, revision: main, dtype: float32}   # or builtin:digits-vit / builtin:minilm
    pruning:                             # one PruningConfig mapping, or a list of them (steps, run in order)
      method: hybrid                     # a registered method name (hf_mpprune.list_methods())
      sparsity: 0.5
      schedule: [0.05, 0.10, 0.50]       # optional cumulative targets (the last one = `sparsity`)
    calibration: {dataset: imagenet-1k, split: train, size: 256, seed: 0, batch_size: 32}
    evaluation: {dataset: imagenet-1k, split: validation, size: null, batch_size: 64}
    finetune: {epochs: 1.0, lr: 3.0e-5, optimizer: sgd}   # per-cycle fine-tune between schedule steps (§11.1)
    distill: {kd_alpha: 0.5, kd_temperature: 2.0, num_train_epochs: 3, ...}   # MPDistillationArguments fields
    audit: {legality: true, macs: true, tome_r: 8}
    output: {dir: vit-b16-hybrid-s050, plots: true}
    push: {repo_id: org/name, private: true, revision: null, create_pr: false, commit_message: null}

Every pruning step is validated completely at load time (`PruningConfig.from_dict`, strict: unknown keys and
unregistered methods are errors). `distill` keys are checked against the fields of `MPDistillationArguments` at
load time (values are checked when the arguments are built). `finetune` holds `CycleFinetune` fields: with a
training set (the builtin digits task) a schedule runs through `run_cycles`, fine-tuning after every step
(SER steps use their own `keep_ft_*` settings); without `finetune` the paper default (1 epoch SGD 3e-5) applies.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ..core.config import PruningConfig
from ..core.errors import ConfigError


BUILTIN_MODELS = ("builtin:digits-vit", "builtin:minilm")
BUILTIN_DATASETS = ("builtin:digits", "builtin:minilm-text")


@dataclass
class ModelSpec:
    id: str
    revision: str | None = None
    dtype: str | None = None
    train_epochs: int | None = None  # builtin:digits-vit only: epochs of the (cached) dense training
    license: str | None = None  # Hub license id for the model card (default: the base model card's license)

    def __post_init__(self):
        dtype = getattr(torch, str(self.dtype), None) if self.dtype is not None else torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(
                f"model.dtype = {self.dtype!r} is not a floating-point torch dtype; use float32, float16 or bfloat16 "
                "(or omit it)"
            )


@dataclass
class DataSpec:
    dataset: str
    split: str = "train"
    size: int | None = None
    seed: int = 0
    batch_size: int = 32


@dataclass
class OutputSpec:
    dir: str | None = None
    plots: bool = True


@dataclass
class PushSpec:
    repo_id: str | None = None
    private: bool | None = None
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None


@dataclass
class PruningStep:
    config: dict[str, Any]  # a PruningConfig mapping (validated), without `schedule`
    schedule: list[float] | None = None  # cumulative targets, last == config["sparsity"]

    @property
    def method(self) -> str:
        return self.config.get("method", "magnitude")

    def targets(self) -> list[float]:
        return self.schedule or [float(self.config.get("sparsity", PruningConfig.sparsity))]

    def build(self) -> PruningConfig:
        """The registered config (full strict validation; needs the method to be installed)."""
        return PruningConfig.from_dict(self.config, strict=True)


@dataclass
class Recipe:
    model: ModelSpec
    pruning: list[PruningStep]
    name: str = ""
    description: str = ""
    seed: int = 0
    calibration: DataSpec | None = None
    evaluation: DataSpec | None = None
    finetune: Any = None  # hf_mpprune.training.cycles.CycleFinetune
    distill: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    output: OutputSpec = field(default_factory=OutputSpec)
    push: PushSpec = field(default_factory=PushSpec)
    source: str = ""  # path the recipe was read from
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the parsed YAML, written to recipe.yaml


_SECTIONS = {
    "model": ModelSpec,
    "calibration": DataSpec,
    "evaluation": DataSpec,
    "output": OutputSpec,
    "push": PushSpec,
}
_TOP = {"name": str, "description": str, "seed": int, "model": dict, "pruning": (dict, list), "calibration": dict,
        "evaluation": dict, "finetune": dict, "distill": dict, "audit": dict, "output": dict, "push": dict}  # fmt: skip


def _type_ok(value: Any, hint: Any) -> bool:
    if value is None:
        return "None" in str(hint)
    allowed = {"str": str, "int": int, "float": (int, float), "bool": bool, "list[float]": list}
    for name, typ in allowed.items():
        if name in str(hint) and isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            return True
    return False


def _section(name: str, cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"recipe section {name!r} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in recipe section {name!r}; allowed: {sorted(fields)}")
    for key, value in data.items():
        if not _type_ok(value, fields[key].type):
            raise ConfigError(f"{name}.{key} = {value!r} has the wrong type; expected {fields[key].type}")
    try:
        return cls(**data)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"recipe section {name!r}: {e}") from e


def _step(data: Any, where: str) -> PruningStep:
    from ..core.registry import list_methods

    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a PruningConfig mapping, got {type(data).__name__}: {data!r}")
    data = dict(data)
    schedule = data.pop("schedule", None)
    if schedule is not None:
        ok = isinstance(schedule, list) and schedule and all(_type_ok(s, "float") for s in schedule)
        if not ok or any(b < a for a, b in zip(schedule, schedule[1:])) or not (0 <= schedule[0] and schedule[-1] < 1):
            raise ConfigError(f"{where}.schedule = {schedule!r} must be a non-decreasing list of sparsities in [0, 1)")
        data.setdefault("sparsity", schedule[-1])
        if not _type_ok(data["sparsity"], "float") or float(data["sparsity"]) != float(schedule[-1]):
            raise ConfigError(f"{where}: sparsity {data['sparsity']!r} != last schedule entry {schedule[-1]}")
    method = data.get("method", "magnitude")
    if method not in list_methods():
        raise ConfigError(f"{where}.method = {method!r} is not a registered method ({', '.join(list_methods())})")
    PruningConfig.from_dict(data, strict=True)
    return PruningStep(data, [float(s) for s in schedule] if schedule else None)


def recipe_from_dict(data: Any, source: str = "") -> Recipe:
    """Validate a parsed recipe mapping (see the module docstring); raises `ConfigError` with the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a YAML mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_TOP))
    if unknown:
        raise ConfigError(f"unknown recipe key(s) {unknown}; allowed: {sorted(_TOP)}")
    for key, typ in _TOP.items():
        if key in data and (not isinstance(data[key], typ) or isinstance(data[key], bool) and typ is int):
            raise ConfigError(f"recipe key {key!r} = {data[key]!r} has the wrong type; expected {typ}")
    if "model" not in data or "pruning" not in data:
        raise ConfigError("a recipe needs a 'model' section (id: <hub id or builtin:...>) and a 'pruning' section")
    kw: dict[str, Any] = {k: _section(k, cls, data[k]) for k, cls in _SECTIONS.items() if k in data}
    if "finetune" in data:
        from ..training.cycles import CycleFinetune

        kw["finetune"] = _section("finetune", CycleFinetune, data["finetune"])
    if "distill" in data:
        _check_distill(data["distill"])
    steps = data["pruning"] if isinstance(data["pruning"], list) else [data["pruning"]]
    if not steps:
        raise ConfigError("recipe 'pruning' is an empty list; give at least one step")
    kw["pruning"] = [_step(s, f"pruning[{i}]") for i, s in enumerate(steps)]
    _check_steps_share_layers(kw["pruning"])
    for key in ("name", "description", "seed", "distill", "audit"):
        if key in data:
            kw[key] = data[key]
    if not kw["model"].id.strip():
        raise ConfigError("model.id is empty: give a Hub id, a local directory or one of " + ", ".join(BUILTIN_MODELS))
    return Recipe(**kw, source=source, raw=data)


def _check_distill(distill: dict[str, Any]) -> None:
    from ..training.trainer import MPDistillationArguments

    fields = {f.name for f in dataclasses.fields(MPDistillationArguments) if f.init}
    unknown = sorted(set(distill) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in recipe section 'distill'; it takes MPDistillationArguments fields "
            "(kd_alpha, kd_temperature, num_train_epochs, learning_rate, per_device_train_batch_size, ...)"
        )
    if "output_dir" in distill:
        raise ConfigError("distill.output_dir is set by the recipe runner (a temporary directory); use output.dir")


def _check_steps_share_layers(steps: list[PruningStep]) -> None:
    first = steps[0].config
    for i, s in enumerate(steps[1:], 1):
        for key in ("targets", "ignore"):
            if s.config.get(key) != first.get(key):
                raise ConfigError(
                    f"pruning[{i}].{key} differs from pruning[0].{key}: all steps of a recipe prune the same layers"
                )


LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "library")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (`hf_mpprune/recipes/library/*.yaml`)."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(LIBRARY) if f.endswith(".yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> str:
    """A recipe file: an existing path as given, else a shipped recipe by name (with or without `.yaml`)."""
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return path
    name = os.path.basename(path)
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = os.path.join(LIBRARY, name + ".yaml")
    if os.path.dirname(path) in ("", "recipes") and os.path.exists(shipped):
        return shipped
    raise ConfigError(f"recipe {path!r} not found; shipped recipes: {', '.join(list_recipes())}")


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file, or a shipped recipe by name (`list_recipes()`)."""
    path = recipe_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
    return recipe_from_dict(data, source=os.fspath(path))
