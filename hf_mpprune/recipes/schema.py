"""Recipes: one YAML file per reproducible run (`yaml.safe_load`, no `eval`, unknown keys rejected).

Sections (all but `model` and `pruning` optional)::

    name: vit-b16-hybrid-s050            # free text
    description: ...
    seed: 0
    hardware: 1x GPU with 24 GB, ImageNet-1k (~150 GB)   # free text: what the full-size run needs
    model: {id: google/vit-base-patch16-224, revision: main, dtype: float32, processor: null, device: null}
                                         # id: Hub id, local folder or builtin:digits-vit / builtin:minilm;
                                         # processor: where the image processor / tokenizer is (default: id);
                                         # device: where the model runs (e.g. cuda; default: where it loads, cpu)
    pruning:                             # one PruningConfig mapping, or a list of them (steps, run in order)
      method: hybrid                     # a registered method name (hf_mpprune.list_methods())
      sparsity: 0.5
      schedule: [0.05, 0.10, 0.50]       # optional cumulative targets (the last one = `sparsity`)
    train: {dataset: imagenet-1k, split: train, selection: 0.02}   # fine-tune / distillation rows
    calibration: {dataset: imagenet-1k, split: train, size: 256, seed: 0, batch_size: 32}
    evaluation: {dataset: imagenet-1k, split: validation, size: null, batch_size: 64}
    finetune: {epochs: 1.0, lr: 3.0e-5, optimizer: sgd}   # per-cycle fine-tune between schedule steps (§11.1)
    distill: {kd_alpha: 0.5, kd_temperature: 2.0, num_train_epochs: 3, ...}   # MPDistillationArguments fields
    audit: {legality: true, macs: true, tome_r: 8}    # AuditSpec: tome_r applies ToMe after pruning
    output: {dir: vit-b16-hybrid-s050, plots: true}
    push: {repo_id: org/name, private: true, revision: null, create_pr: false, commit_message: null}

Data sections (`train`, `calibration`, `evaluation`) are `hf_mpprune.data.DatasetSpec`s: `dataset` (Hub id, local
`save_to_disk` / imagefolder folder, json / jsonl / csv / parquet file, `builtin:digits`, `builtin:minilm-text`),
`config`, `revision`, `split` (with slicing, `train[:2%]`), `image_column` / `text_column` / `text_pair_column` /
`label_column` (detected when unambiguous), `size`, `seed`, `batch_size`, `max_length` and, for `train`, `selection`
(rows carved out of the training split for the selection split of cyclic methods). A missing `train` section is
derived from `calibration` (then `evaluation`) with split `train`.

Every pruning step is validated completely at load time (`PruningConfig.from_dict`, strict: unknown keys and
unregistered methods are errors). `distill` keys are checked against the fields of `MPDistillationArguments` at
load time (values are checked when the arguments are built). `finetune` holds `CycleFinetune` fields: with a
training set (the builtin digits task) a schedule runs through `run_cycles`, fine-tuning after every step
(SER steps use their own `keep_ft_*` settings); without `finetune` the paper default (1 epoch SGD 3e-5) applies.
"""

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.registry import list_methods
from ..data.spec import DatasetSpec
from ..training.cycles import CycleFinetune
from ..training.trainer import MPDistillationArguments


BUILTIN_MODELS = ("builtin:digits-vit", "builtin:minilm")
BUILTIN_DATASETS = ("builtin:digits", "builtin:minilm-text")


@dataclass
class ModelSpec:
    id: str
    revision: str | None = None
    dtype: str | None = None
    processor: str | None = None  # folder / Hub id of the image processor or tokenizer (default: the model's)
    train_epochs: int | None = None  # builtin:digits-vit only: epochs of the (cached) dense training
    license: str | None = None  # Hub license id for the model card (default: the base model card's license)
    device: str | None = None  # torch device the model is moved to after loading (e.g. "cuda"); default: cpu

    def __post_init__(self):
        dtype = getattr(torch, str(self.dtype), None) if self.dtype is not None else torch.float32
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(
                f"model.dtype = {self.dtype!r} is not a floating-point torch dtype; use float32, float16 or bfloat16 "
                "(or omit it)"
            )
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ConfigError(
                    f"model.device = {self.device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
                ) from e


DataSpec = DatasetSpec  # the recipe name of a data section


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
class AuditSpec:
    """The `audit` section: what is checked and counted after pruning (and distillation).

    Args:
        legality (`bool`, defaults to True): k:n legality of every layer the last step sparsified, and the exact
            zero count, into `ledger.audits`.
        macs (`bool`, defaults to True): exact MACs of one input row (dense vs sparse) into `ledger.audits`; the
            run's `macs_ratio`. Needs an evaluation, calibration or training section (one row is counted).
        tome_r (`int`, *optional*): token merging (ToMe, `hf_mpprune.apply_tome`) with `r` tokens merged per block
            on a ViT / DeiT model. Applied right after pruning, so the pruned evaluation, distillation, the
            distilled evaluation and the MAC audit run with it; recorded as a ledger step. It patches forwards,
            not weights: the saved checkpoint holds none (apply it again at inference: `apply_tome(model, r)`).
    """

    legality: bool = True
    macs: bool = True
    tome_r: int | None = None

    def __post_init__(self):
        if self.tome_r is not None and (isinstance(self.tome_r, bool) or self.tome_r < 1):
            raise ConfigError(f"audit.tome_r = {self.tome_r!r} must be an int >= 1 (tokens merged per block) or null")


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
    """A validated recipe: the model, the pruning steps, and the optional data, fine-tune, distill, evaluation,
    audit, output and push sections (docs/recipes.md). Built by `load_recipe` / `recipe_from_dict`."""

    model: ModelSpec
    pruning: list[PruningStep]
    name: str = ""
    description: str = ""
    seed: int = 0
    hardware: str = ""
    train: DataSpec | None = None
    calibration: DataSpec | None = None
    evaluation: DataSpec | None = None
    finetune: Any = None  # hf_mpprune.training.cycles.CycleFinetune
    distill: dict[str, Any] | None = None
    audit: AuditSpec | None = None
    output: OutputSpec = field(default_factory=OutputSpec)
    push: PushSpec = field(default_factory=PushSpec)
    source: str = ""  # path the recipe was read from
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the parsed YAML, written to recipe.yaml


_SECTIONS = {
    "model": ModelSpec,
    "train": DataSpec,
    "calibration": DataSpec,
    "evaluation": DataSpec,
    "output": OutputSpec,
    "push": PushSpec,
    "audit": AuditSpec,
}
_TOP = {"name": str, "description": str, "hardware": str, "seed": int, "model": dict, "pruning": (dict, list),
        "train": dict, "calibration": dict, "evaluation": dict, "finetune": dict, "distill": dict, "audit": dict, "output": dict, "push": dict}  # fmt: skip


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
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
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
        kw["finetune"] = _section("finetune", CycleFinetune, data["finetune"])
    if "distill" in data:
        _check_distill(data["distill"])
    steps = data["pruning"] if isinstance(data["pruning"], list) else [data["pruning"]]
    if not steps:
        raise ConfigError("recipe 'pruning' is an empty list; give at least one step")
    kw["pruning"] = [_step(s, f"pruning[{i}]") for i, s in enumerate(steps)]
    _check_steps_share_layers(kw["pruning"])
    for key in ("name", "description", "hardware", "seed", "distill"):
        if key in data:
            kw[key] = data[key]
    if not kw["model"].id.strip():
        raise ConfigError("model.id is empty: give a Hub id, a local directory or one of " + ", ".join(BUILTIN_MODELS))
    return Recipe(**kw, source=source, raw=data)


def _check_distill(distill: dict[str, Any]) -> None:
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


LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "library")  # package data (also in a wheel)


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


def read_recipe(path: str | os.PathLike) -> tuple[Any, str]:
    """The parsed YAML of a recipe file or shipped recipe, and its path (not validated)."""
    path = recipe_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f), os.fspath(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file, or a shipped recipe by name (`list_recipes()`); `overrides` are
    `key.path=value` strings applied before validation (`hf-mpprune run --set`, see `apply_overrides`)."""
    data, path = read_recipe(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, source=path)


def apply_overrides(data: Any, pairs: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a parsed recipe (a copy is returned). Values are YAML
    (`--set calibration.size=64`, `--set model.id=./my-vit`, `--set 'pruning.schedule=[0.2, 0.5]'`); `null`
    removes the key. A key under a list of pruning steps applies to every step unless an index is given
    (`pruning.1.sparsity=0.6`)."""
    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE, e.g. --set model.id=./my-model")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML: {e}") from e
        if isinstance(value, int | float) and ":" in text:  # YAML 1.1 reads 2:4 as the base-60 number 124
            value = text.strip()
        _set(out, key.strip().split("."), value, pair)
    return out


def _set(node: Any, path: list[str], value: Any, pair: str) -> None:
    head, rest = path[0], path[1:]
    if isinstance(node, list):
        if head.isdigit():
            if int(head) >= len(node):
                raise ConfigError(f"--set {pair!r}: index {head} is past the {len(node)} entries")
            if not rest:
                node[int(head)] = value
                return
            targets, path = [node[int(head)]], rest
        else:
            targets = node
        for item in targets:
            _set(item, path, value, pair)
        return
    if not isinstance(node, dict):
        raise ConfigError(f"--set {pair!r}: {head!r} is under a value that is not a mapping")
    if not rest:
        if value is None:
            node.pop(head, None)
        else:
            node[head] = value
        return
    if node.get(head) is None:
        node[head] = {}
    _set(node[head], rest, value, pair)
