"""Dataclass configs: the whole user-facing interface. JSON/YAML round trip, strict keys, version stamp.

`PruningConfig` carries the fields every method shares. Each registered method may subclass it to add its
own fields; `PruningConfig(method="seb", ...)` is upgraded to the method's class by `resolve()`, and
`PruningConfig.from_dict` dispatches through the registry (the only way a class is chosen from data).
"""

import dataclasses
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from .constants import CONFIG_NAME, __version__
from .errors import ConfigError, InvalidPatternError, MPPruneWarning
from .files import read_json
from .plugins import load_providers
from .validate import check_field_types, nested_config


@dataclass(frozen=True)
class KeepPattern:
    """A k:n semi-structured pattern: `keep` nonzeros kept in every `group` consecutive inputs.

    "2:4" always means 2 **kept** of 4 (NVIDIA / cuSPARSELt / the paper), never "2 pruned of 4".
    """

    keep: int
    group: int

    def __post_init__(self):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.keep, self.group)):
            raise InvalidPatternError(f"k:n pattern needs integers, got keep={self.keep!r}, group={self.group!r}")
        if self.group < 2 or not 0 < self.keep < self.group:
            raise InvalidPatternError(
                f"illegal k:n pattern {self.keep}:{self.group}: need 0 < keep < group and group >= 2 "
                "(k = weights kept of every n, e.g. '2:4')"
            )

    @classmethod
    def parse(cls, value: "KeepPattern | str | dict | tuple | list") -> "KeepPattern":
        """Accept `KeepPattern`, "k:n" (k kept), `{"keep": k, "group": n}` or `(k, n)`."""
        if isinstance(value, KeepPattern):
            return value
        if isinstance(value, str):
            m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
            if not m:
                raise InvalidPatternError(
                    f"cannot parse pattern {value!r}: write it as 'k:n' with k kept of n, e.g. '2:4'"
                )
            return cls(int(m.group(1)), int(m.group(2)))
        pair = None
        if isinstance(value, dict) and set(value) == {"keep", "group"}:
            pair = (value["keep"], value["group"])
        elif isinstance(value, tuple | list) and len(value) == 2:
            pair = tuple(value)
        if pair is not None and all(_as_int(v) is not None for v in pair):
            return cls(_as_int(pair[0]), _as_int(pair[1]))
        raise InvalidPatternError(
            f"cannot parse pattern {value!r}: use 'k:n' (k kept of n, e.g. '2:4'), (k, n) with integers or "
            "{'keep': k, 'group': n}"
        )

    @property
    def density(self) -> float:
        return self.keep / self.group

    def __str__(self) -> str:
        return f"{self.keep}:{self.group}"


def _as_int(v: Any) -> int | None:
    """An integer-valued pattern entry (2, 2.0, "2") as int; None when it is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return None


@dataclass
class SpectralConfig:
    """Settings of the MP fit (docs/algorithms.md §2).

    Args:
        bema_alpha (`float`, defaults to 0.25): BEMA trimming fraction; the central `1 - 2α` of eigenvalues is fit.
        bema_beta (`float`, defaults to 0.8): Tracy–Widom confidence of the upper edge (t = TW1 quantile at 1-β).
        compat (`str`, defaults to `"exact"`): `"exact"` uses the correct `(1+√γ)^{4/3}` edge term, the correct
            MP CDF and `/max(M, N)` eigenvalue normalisation; `"repo"` reproduces the paper code's two bugs
            (`(1+√γ)^4/3`, CDF = 0 above the edge) and its `/N_in` normalisation.
        view (`str`, defaults to `"per_module"`): `"fused_qkv"` fits stacked q/k/v rows as one matrix (timm parity).
        device (`str`, *optional*): where the Gram/eigen work runs (`"cuda"` when present); results are float64.
    """

    bema_alpha: float = 0.25
    bema_beta: float = 0.8
    compat: str = "exact"
    view: str = "per_module"
    device: str | None = None

    def __post_init__(self):
        check_field_types(self)
        if not 0 < self.bema_alpha < 0.5:
            raise ConfigError(f"bema_alpha={self.bema_alpha} must be in (0, 0.5); the default is 0.25")
        if not 0 < self.bema_beta < 1:
            raise ConfigError(f"bema_beta={self.bema_beta} must be in (0, 1); the default is 0.8")
        if self.compat not in ("exact", "repo"):
            raise ConfigError(f"compat={self.compat!r} must be 'exact' or 'repo'")
        if self.view not in ("per_module", "fused_qkv"):
            raise ConfigError(f"view={self.view!r} must be 'per_module' or 'fused_qkv'")


def _check_patterns(name: str, value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of non-empty strings (type names, 're:' regexes), got {value!r}")
    return list(value)


# method name -> config class; filled by `registry.register_method`, read by `PruningConfig.resolve/from_dict`.
_CONFIG_CLASSES: dict[str, type] = {}


def config_class(method: str) -> type:
    """The config class registered for `method` (`ConfigError` naming the registered methods otherwise)."""
    load_providers()
    try:
        return _CONFIG_CLASSES[method]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown pruning method {method!r}; registered methods: {', '.join(sorted(_CONFIG_CLASSES))}"
        ) from None


def add_config_class(method: str, cls: type) -> None:
    """Called by the registry when a method is registered (the config layer never imports the registry)."""
    _CONFIG_CLASSES[method] = cls


@dataclass
class PruningConfig:
    """Common pruning settings; method-specific configs subclass this.

    Args:
        method (`str`, defaults to `"magnitude"`): a registered method name (see `hf_mpprune.list_methods()`).
        sparsity (`float`, defaults to 0.5): target fraction of exactly-zero weights over the registered layers,
            in [0, 1). For k:n methods it is implied by the pattern.
        pattern (`KeepPattern` or `str`, *optional*): k:n pattern, "k:n" = k kept of every n along the input dim.
        targets (`list[str]`, *optional*): module type names (`"Linear"`), exact module names, `"role:mlp"`, or
            `"re:<regex>"` (searched in the module's qualified name). Default: every Linear/Conv2d/Conv1D except the
            task head and the input embeddings (roles "head" / "embed"; add `"role:head"` to prune them).
        ignore (`list[str]`, defaults to `[]`): same forms; matching layers are excluded.
        seed (`int`, defaults to 0): seed of every random choice (calibration sampling, tie-free ordering).
        spectral (`SpectralConfig`): MP fit settings.
    """

    method: str = "magnitude"
    sparsity: float = 0.5
    pattern: KeepPattern | None = None
    targets: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    seed: int = 0
    spectral: SpectralConfig = field(default_factory=SpectralConfig)

    # Subclasses may list fields they require a pattern for, etc.; the base has none.
    _nested: ClassVar[dict[str, type]] = {"spectral": SpectralConfig}

    def __new__(cls, *args: Any, **kwargs: Any):
        """Method-specific options in the one-line form: `PruningConfig(method="mp-wanda", reconstruct=True)` builds
        the method's registered config class (`MPWandaConfig`); an option no class knows raises `ConfigError`."""
        extra = set(kwargs) - {f.name for f in dataclasses.fields(cls)} if kwargs else set()
        if not extra:
            return super().__new__(cls)
        method = kwargs.get("method", args[0] if args else cls.method)
        target = config_class(method) if isinstance(method, str) else cls
        known = {f.name for f in dataclasses.fields(target)}
        if not issubclass(target, cls) or extra - known:
            raise ConfigError(
                f"unknown key(s) {sorted(extra - known)} for {target.__name__} (method {method!r}); "
                f"allowed: {sorted(known)}"
            )
        return super().__new__(target)  # Python then runs target.__init__ with the same arguments

    def __post_init__(self):
        if not isinstance(self.method, str) or self.method != self.method.lower() or not self.method:
            raise ConfigError(f"method must be a lowercase registered name, got {self.method!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not (0.0 <= float(self.sparsity) < 1.0) or math.isnan(self.sparsity):
            raise ConfigError(f"sparsity={self.sparsity} is outside [0, 1): use e.g. 0.5 for 50% zeros")
        self.sparsity = float(self.sparsity)
        if self.pattern is not None:
            self.pattern = KeepPattern.parse(self.pattern)
        self.targets = _check_patterns("targets", self.targets)
        self.ignore = _check_patterns("ignore", self.ignore) or []
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative int, got {self.seed!r}")
        self.spectral = nested_config(SpectralConfig, self.spectral, f"{type(self).__name__}.spectral")
        # every remaining field (also a subclass's) against its annotation: names the class, field and type
        check_field_types(self, skip=("pattern", "spectral"))

    # ---- dispatch -------------------------------------------------------------------------------------
    def resolve(self) -> "PruningConfig":
        """Return this config as an instance of its method's registered config class."""
        config_cls = config_class(self.method)
        if type(self) is config_cls:
            return self
        if not isinstance(self, PruningConfig) or not issubclass(config_cls, type(self)):
            raise ConfigError(f"{type(self).__name__} cannot be used for method {self.method!r}")
        return config_cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    # ---- serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:

        d = dataclasses.asdict(self)
        if self.pattern is not None:
            d["pattern"] = str(self.pattern)
        d["hf_mpprune_version"] = __version__
        return dict(sorted(d.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> "PruningConfig":
        """Build the registered config class named by `data["method"]`.

        Unknown keys raise `ConfigError` (`strict=True`, recipes) or are dropped with a warning
        (`strict=False`, checkpoints written by a newer version).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a pruning config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        data.pop("hf_mpprune_version", None)
        target_cls = config_class(data["method"]) if "method" in data else cls
        known = {f.name for f in dataclasses.fields(target_cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            msg = f"unknown key(s) {sorted(map(str, unknown))} for {target_cls.__name__}; allowed: {sorted(known)}"
            if strict:
                raise ConfigError(msg)
            warnings.warn(msg + " (dropped)", MPPruneWarning, stacklevel=2)
            for k in unknown:
                data.pop(k)
        for key, nested in target_cls._nested.items():
            if key in data and data[key] is not None:
                data[key] = nested_config(nested, data[key], repr(key))
        try:
            return target_cls(**data)
        except TypeError as e:  # wrong types that dataclasses cannot coerce
            raise ConfigError(f"invalid {target_cls.__name__}: {e}") from e

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, *, strict: bool = True) -> "PruningConfig":
        """Read a config JSON file; a missing, empty or damaged file raises `CheckpointError` naming it."""
        return cls.from_dict(read_json(path, what="pruning config"), strict=strict)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `mpprune_config.json` into `save_directory` (created if needed), as PEFT's configs do."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        self.to_json_file(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, strict: bool = False) -> "PruningConfig":
        """Read the config saved in a checkpoint directory (`mpprune_config.json`) or a JSON file. Keys written by a
        newer version are dropped with a warning (`strict=False`)."""
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else os.fspath(path)
        if not os.path.isfile(file):
            raise ConfigError(f"no pruning config at {file!r}: save one with config.save_pretrained(directory)")
        return cls.from_json_file(file, strict=strict)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str, *, strict: bool = True) -> "PruningConfig":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}") from e
        return cls.from_dict(data, strict=strict)
