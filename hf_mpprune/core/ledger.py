"""The ledger: one auditable JSON record of a pruning run (docs/algorithms.md §14, our superset). Never holds a token.

Sections (all plain JSON):

- `identity`: package / torch / transformers / accelerate / hub versions, host, GPU; `base_model` (id or path),
  `base_revision` (Hub commit when known), `base_weights_sha256` ({file: sha}) and, once saved, `weights_sha256`.
- `registry`: the exact layer list (name, kind, role, shape).
- `data`: `splits` = {name: {role, dataset, count, sha256, indices?}} written by `record_split`; the
  calibration / selection / evaluation splits of one dataset must be disjoint (`check_disjoint`).
- `spectral`: MP settings and a per-layer summary. `steps`: one record per pruning / training step.
- `audits`, `metrics` (list of {name, value, dataset, split, task, stage}), `timings` ({phase: seconds}),
  `seeds` ({what: seed}).
- `permutations`: hook point for methods that permute input channels (CAST +perm). Permutations must be
  *folded into the saved weights* so plain transformers gives identical logits; this section only records
  `{layer: [perm...]}` for audit. Nothing reads it at load time.
"""

import hashlib
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import accelerate
import huggingface_hub
import numpy as np
import torch
import transformers

from .constants import __version__
from .errors import ConfigError
from .files import parse_sidecar


# Roles of data splits that must never share an example of the same dataset (docs/algorithms.md §14).
DISJOINT_ROLES = ("calibration", "selection", "evaluation")
# Index lists up to this length are stored verbatim (so a reader can re-check disjointness); longer ones as hashes.
MAX_STORED_INDICES = 4096
_SECRET_KEY = re.compile(r"token|secret|password|authorization", re.IGNORECASE)


def environment() -> dict[str, str]:
    """Versions of everything that changes numbers, plus host and (if any) GPU name."""

    env = {
        "hf_mpprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = str(torch.version.cuda)
    return env


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(directory: str | os.PathLike, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every `*.safetensors` weights file (shards included) in a model directory, by file name."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors") and n not in exclude)
    return {n: sha256_file(os.path.join(directory, n)) for n in names}


def indices_sha256(indices) -> str:
    """Order-independent hash of a set of integer example indices (sorted, unique, int64 little-endian)."""
    arr = np.unique(np.asarray(list(indices), dtype=np.int64)).astype("<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _scrub(obj: Any) -> Any:
    """Drop any key that looks like a credential (defence in depth: nothing should ever put one there)."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if not (isinstance(k, str) and _SECRET_KEY.search(k))}
    if isinstance(obj, list | tuple):
        return [_scrub(v) for v in obj]
    return obj


@dataclass
class Ledger:
    """The audit trail of a run, written as `mpprune_ledger.json`: identity (versions, base model and weights
    SHA-256, mask SHA-256), the layer registry, data splits with index hashes, the spectral settings, one record per
    pruning or training step, audits, metrics and timings. Never holds a token."""

    identity: dict[str, Any] = field(default_factory=dict)
    registry: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    spectral: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    permutations: dict[str, list[int]] = field(default_factory=dict)

    def add_step(self, **record: Any) -> dict[str, Any]:
        record.setdefault("step_index", len(self.steps))
        record.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.steps.append(record)
        return record

    def add_metric(
        self, name: str, value: float, *, dataset: str, split: str = "test", task: str = "image-classification",
        stage: str = "pruned",
    ) -> dict[str, Any]:  # fmt: skip
        """Record one evaluation number. `stage` is `"base"` (the dense model), `"pruned"` or `"distilled"`;
        model cards report every stage but put only non-base stages in `model-index`."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"metric {name!r} must be a number, got {value!r}")
        rec = {"name": name, "value": float(value), "dataset": dataset, "split": split, "task": task, "stage": stage}
        self.metrics.append(rec)
        return rec

    def add_timing(self, phase: str, seconds: float) -> None:
        self.timings[phase] = round(float(seconds), 3) + self.timings.get(phase, 0.0)

    # ---- data splits --------------------------------------------------------------------------------------
    def record_split(self, name: str, indices, *, role: str | None = None, dataset: str = "") -> dict[str, Any]:
        """Record the example indices of a data split and check calibration / selection / evaluation splits
        of the same `dataset` are disjoint (raises `ConfigError` naming the overlap, and records nothing).

        Args:
            name: split name, e.g. `"calibration"`; `role` defaults to `name` when it is one of
                `DISJOINT_ROLES`, else `"other"` (never checked).
            indices: integer example indices into `dataset`.
            dataset: dataset id (+ split/revision), e.g. `"sklearn:digits"`; splits of different datasets
                never overlap by construction.
        """
        idx = np.unique(np.asarray(list(indices), dtype=np.int64))
        role = role or (name if name in DISJOINT_ROLES else "other")
        rec: dict[str, Any] = {"role": role, "dataset": dataset, "count": int(idx.size), "sha256": indices_sha256(idx)}
        if idx.size <= MAX_STORED_INDICES:
            rec["indices"] = idx.tolist()
        splits = self.data.setdefault("splits", {})
        self._check_against(name, rec, idx, splits)
        splits[name] = rec
        return rec

    def _check_against(self, name: str, rec: dict, idx: np.ndarray, splits: dict) -> None:
        if rec["role"] not in DISJOINT_ROLES:
            return
        for other, o in splits.items():
            if other == name or o.get("role") not in DISJOINT_ROLES or o.get("dataset") != rec["dataset"]:
                continue
            if o.get("role") == rec["role"]:
                continue
            if "indices" not in o or "indices" not in rec:
                continue  # too long to store: only the hash is kept (checked by the caller at selection time)
            both = np.intersect1d(idx, np.asarray(o["indices"], dtype=np.int64))
            if both.size:
                raise ConfigError(
                    f"data split {name!r} ({rec['role']}) shares {both.size} example(s) of {rec['dataset']!r} with "
                    f"{other!r} ({o['role']}), e.g. indices {both[:5].tolist()}; calibration, selection and "
                    "evaluation must be disjoint: draw them from disjoint index sets"
                )

    def check_disjoint(self) -> None:
        """Re-check every recorded split pair (e.g. after loading a ledger); raises `ConfigError` on overlap."""
        splits = dict(self.data.get("splits", {}))
        seen: dict[str, Any] = {}
        for name, rec in splits.items():
            if "indices" in rec:
                self._check_against(name, rec, np.asarray(rec["indices"], dtype=np.int64), seen)
            seen[name] = rec

    # ---- I/O ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _scrub(asdict(self))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ledger":
        """Inverse of `to_dict`; every section must have its documented JSON type (`ConfigError` naming it)."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"a ledger must be a JSON object with sections {list(asdict(cls()))}, got {type(d).__name__}"
            )
        out = {}
        for k, default in asdict(cls()).items():
            v = d.get(k, default)
            if not isinstance(v, type(default)):
                raise ConfigError(
                    f"ledger section {k!r} must be a JSON {'object' if isinstance(default, dict) else 'array'}, "
                    f"got {type(v).__name__}"
                )
            out[k] = v
        return cls(**out)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Ledger":
        """Read a ledger file; a missing, truncated or wrongly shaped file raises `CheckpointError` naming it."""
        return parse_sidecar(path, cls.from_dict, what="ledger")
