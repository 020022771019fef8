"""The data of one run: training rows, a selection split carved from them, calibration rows and evaluation rows,
each drawn with a seed, each with its provenance (dataset id, config, split expression, revision, fingerprint and
the SHA-256 of its row indices) recorded in the ledger. Calibration, selection and evaluation rows of one base
split must be disjoint: `DataPlan` carves them so, and raises `ConfigError` when the specs force an overlap."""

import logging
from dataclasses import dataclass

import datasets
import numpy as np

from ..core.errors import ConfigError
from ..core.ledger import DISJOINT_ROLES, Ledger
from .preprocess import Prepared
from .spec import DatasetSpec, SplitData, load_split


logger = logging.getLogger(__name__)

DEFAULT_SPLITS = {"train": "train", "calibration": "train", "evaluation": "validation"}
DEFAULT_SELECTION = 0.1
DEFAULT_CALIBRATION = 128


@dataclass
class RoleData:
    name: str  # train / selection / calibration / evaluation
    spec: DatasetSpec
    split: SplitData
    indices: np.ndarray  # rows of the base split
    prepared: Prepared | None = None
    args: dict | None = None  # how the rows were turned into inputs (decoder LMs: window length, stride)

    @property
    def role(self) -> str:
        return self.name if self.name in DISJOINT_ROLES else "other"

    def rows(self) -> datasets.Dataset:
        return self.split.base.select(self.indices.tolist())

    @property
    def info(self) -> dict:
        return {
            **self.split.info,
            "count": int(self.indices.size),
            **({"dataset_args": self.args} if self.args else {}),
        }


def _draw(candidates: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= candidates.size:
        return candidates
    perm = np.random.default_rng(seed).permutation(candidates.size)[:n]
    return np.sort(candidates[perm])


def _count(value: float | int | None, n: int) -> int:
    value = DEFAULT_SELECTION if value is None else value
    k = int(round(value * n)) if isinstance(value, float) and value < 1 else int(value)
    if not 0 < k < n:
        raise ConfigError(f"train.selection={value!r} leaves no rows for training or selection (the split has {n})")
    return k


class DataPlan:
    """Load, carve and check the data of one run (see the module docstring)."""

    def __init__(self):
        self.roles: dict[str, RoleData] = {}
        self._cache: dict = {}

    def __contains__(self, name: str) -> bool:
        return name in self.roles

    def __getitem__(self, name: str) -> RoleData:
        return self.roles[name]

    def load(self, spec: DatasetSpec, role: str) -> SplitData:
        return load_split(spec, spec.split or DEFAULT_SPLITS[role], self._cache)

    def add_train(self, spec: DatasetSpec, *, selection: bool) -> None:
        """Training rows (optionally capped by `spec.size`); with `selection`, a seeded part of them becomes the
        selection split and is removed from training."""
        split = self.load(spec, "train")
        rows = split.indices
        if selection:
            k = _count(spec.selection, rows.size)
            perm = np.random.default_rng(spec.seed + 1).permutation(rows.size)
            self._add("selection", spec, split, np.sort(rows[perm[:k]]))
            rows = np.sort(rows[perm[k:]])
        self._add("train", spec, split, _draw(rows, spec.size, spec.seed))

    def add_calibration(self, spec: DatasetSpec, *, windows: bool = False) -> None:
        """`spec.size` rows (default 128) drawn with `spec.seed`, never from the selection rows. With `windows`
        (decoder LMs, `data/lm.py`) every candidate row is kept in a seeded order: `size` counts the token windows
        cut from them, and the rows actually used replace these when the windows are built."""
        split = self.load(spec, "calibration")
        rows = split.indices
        sel = self.roles.get("selection")
        if sel is not None and sel.split.key == split.key:
            rows = np.setdiff1d(rows, sel.indices)
        if windows:
            picked = rows[np.random.default_rng(spec.seed).permutation(rows.size)]
        else:
            picked = _draw(rows, spec.size or DEFAULT_CALIBRATION, spec.seed)
        self._add("calibration", spec, split, picked)

    def add_evaluation(self, spec: DatasetSpec) -> None:
        split = self.load(spec, "evaluation")
        self._add("evaluation", spec, split, _draw(split.indices, spec.size, spec.seed))

    def _add(self, name: str, spec: DatasetSpec, split: SplitData, indices: np.ndarray) -> None:
        if indices.size == 0:
            raise ConfigError(f"the {name} rows of {split.info['dataset']!r} ({split.info['split']}) are empty")
        new = RoleData(name, spec, split, indices)
        if new.role in DISJOINT_ROLES:
            for other in self.roles.values():
                if other.role in DISJOINT_ROLES and other.role != new.role and other.split.key == split.key:
                    both = np.intersect1d(indices, other.indices)
                    if both.size:
                        raise ConfigError(
                            f"{name} and {other.name} data overlap: {both.size} row(s) of {split.key!r} are in both "
                            f"({name}: {split.info['split']!r}, {other.name}: {other.split.info['split']!r}; e.g. rows "
                            f"{both[:5].tolist()}). Calibration, selection and evaluation must be disjoint: use "
                            "another split or non-overlapping slices such as 'train[:90%]' / 'train[90%:]'"
                        )
        self.roles[name] = new

    def record(self, ledger: Ledger) -> None:
        """Write every role's provenance and index hash to `ledger.data["splits"]`."""
        for name, r in self.roles.items():
            rec = ledger.record_split(name, r.indices.tolist(), role=r.role, dataset=r.split.key)
            info = r.info
            rec.update(dataset_id=info["dataset"], config=info["config"], split=info["split"],
                       revision=info["revision"], fingerprint=info["fingerprint"], num_rows=info["num_rows"],
                       seed=r.spec.seed)  # fmt: skip
