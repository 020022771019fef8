"""Dataset specs and split expressions, loaded with `datasets` (never a hand-written reader).

A `DatasetSpec.dataset` is one of:

* a Hub dataset id (`imagenet-1k`, `org/name`), with `config` and `revision`;
* a local folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`;
* a local folder of files that `datasets.load_dataset(folder)` understands: an `imagefolder` (`train/<label>/x.png`,
  `validation/<label>/y.png`), or json / jsonl / csv / parquet files (`imagefolder:PATH` etc. force the builder);
* a json / jsonl / csv / parquet file (its rows are the split `train`);
* a name registered with `register_dataset_source` (the builtins: `builtin:digits`, `builtin:minilm-text`);
* an in-memory `datasets.Dataset` or `DatasetDict` (Python only).

Split expressions are `datasets.ReadInstruction` specs: `train`, `train[:2%]`, `train[100:]`, `validation[-500:]`.
Row indices are always kept relative to the whole base split, so slices of one split can be checked for overlap.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from ..core.errors import ConfigError
from ..core.loading import offline_hint


logger = logging.getLogger(__name__)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
BUILDER_PREFIXES = ("imagefolder", "audiofolder", "json", "csv", "parquet", "text")
_DATASET_SOURCES: dict[str, Callable[["DatasetSpec"], datasets.DatasetDict]] = {}
_MODEL_SOURCES: dict[str, Callable[..., str]] = {}


@dataclass
class DatasetSpec:
    """Where data comes from and how much of it to use.

    Args:
        dataset: Hub id, local folder or file, registered name (see the module docstring).
        config: the dataset configuration (`load_dataset(name=...)`), e.g. `"plain_text"`.
        revision: Hub revision (branch, tag or commit) of the dataset.
        split: split expression, e.g. `"train[:2%]"`; each role has its default (calibration and training:
            `train`, evaluation: `validation`).
        image_column, text_column, text_pair_column, label_column: column names; detected when left out.
        size: number of rows drawn (seeded); `None` = the whole split (calibration: 128).
        seed: seed of the draw.
        batch_size: batch size of calibration and evaluation forwards.
        max_length: tokenizer truncation length (text); for decoder language models the length of the token
            windows (calibration, evaluation, training; default: the model's context, at most 2048).
        stride: decoder language models, evaluation only: the step between perplexity windows (default
            `max_length`: non-overlapping windows; smaller = more context per scored token).
        selection: training role only: rows carved out of the training split for the selection split of cyclic
            methods (a fraction < 1 or a count; default 0.1).
    """

    dataset: str
    config: str | None = None
    revision: str | None = None
    split: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    size: int | None = None
    seed: int = 0
    batch_size: int = 32
    max_length: int | None = None
    stride: int | None = None
    selection: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # load_dataset keyword arguments (Python)

    def dataset_id(self) -> str:
        src = self.dataset
        if isinstance(src, datasets.Dataset | datasets.DatasetDict):
            return f"in-memory:{_fingerprint(src)[:16]}"
        return str(src)


def _fingerprint(ds) -> str:
    if isinstance(ds, datasets.DatasetDict):
        return "-".join(_fingerprint(ds[k]) for k in sorted(ds))
    return str(getattr(ds, "_fingerprint", "") or "")


def register_dataset_source(name: str, loader: Callable[[DatasetSpec], datasets.DatasetDict]) -> None:
    """Make `name` (e.g. `"builtin:digits"`) a dataset spec: `loader(spec)` returns a `DatasetDict`."""
    _DATASET_SOURCES[name] = loader


def register_model_source(name: str, resolver: Callable[..., str]) -> None:
    """Make `name` a model id: `resolver(cache_dir=..., seed=..., **options)` returns a local model folder."""
    _MODEL_SOURCES[name] = resolver


def resolve_model(model_id: str, *, cache_dir: str | None = None, seed: int = 0, **options: Any) -> str:
    """A registered model name → its local folder (built and cached by its resolver); anything else unchanged."""
    if model_id in _MODEL_SOURCES:
        return _MODEL_SOURCES[model_id](cache_dir=cache_dir, seed=seed, **options)
    if model_id.startswith("builtin:"):
        raise ConfigError(f"unknown builtin model {model_id!r}; registered: {', '.join(sorted(_MODEL_SOURCES))}")
    return model_id


# ---- split expressions ----------------------------------------------------------------------------------------------
def parse_split(expr: str) -> tuple[str, datasets.ReadInstruction]:
    """`"train[:2%]"` → `("train", ReadInstruction)`, parsed by `datasets.ReadInstruction` (one split, no `+`);
    `ConfigError` for anything else."""
    names = [part.split("[")[0].strip() for part in (expr or "").split("+")]
    try:
        instruction = datasets.ReadInstruction.from_spec((expr or "").strip())
        instruction.to_absolute(dict.fromkeys(names, 1))
    except (ValueError, AssertionError) as e:
        raise ConfigError(
            f"split {expr!r} is not a split expression ({e}); write e.g. 'train', 'train[:2%]', 'train[100:200]' or "
            "'validation[-500:]' (bounds are integers, percentages integers followed by %)"
        ) from None
    if len(names) != 1:
        raise ConfigError(f"split {expr!r} joins several splits ({' + '.join(names)}); name one split per role")
    return names[0], instruction


def slice_indices(expr: str, n: int) -> np.ndarray:
    """Row indices (into the base split of `n` rows) selected by the split expression."""
    base, instruction = parse_split(expr)
    (rows,) = instruction.to_absolute({base: n})
    return np.arange(rows.from_, rows.to, dtype=np.int64)


# ---- loading --------------------------------------------------------------------------------------------------------
@dataclass
class SplitData:
    """A loaded base split, the rows the split expression selects, and its provenance."""

    base: datasets.Dataset  # the whole base split
    indices: np.ndarray  # rows of `base` selected by the expression
    info: dict[str, Any]  # dataset, config, split (expression), revision, fingerprint, num_rows
    key: str  # identity of the base split: splits with the same key can overlap


def _local_builder(path: str) -> tuple[str | None, str]:
    """(builder or None, path) for `imagefolder:PATH`-style prefixes."""
    for b in BUILDER_PREFIXES:
        if path.startswith(b + ":"):
            return b, path[len(b) + 1 :]
    return None, path


def _is_saved(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _load_all(spec: DatasetSpec, base: str) -> datasets.Dataset | datasets.DatasetDict:
    src = spec.dataset
    if isinstance(src, datasets.Dataset | datasets.DatasetDict):
        return src
    if not isinstance(src, str) or not src.strip():
        raise ConfigError(f"dataset must be a Hub id, a local folder or file, got {src!r}")
    if src in _DATASET_SOURCES:
        return _DATASET_SOURCES[src](spec)
    builder, path = _local_builder(os.path.expanduser(src))
    kw = dict(spec.extra)
    if builder is None and os.path.isdir(path) and _is_saved(path):
        return datasets.load_from_disk(path)
    if builder is not None or os.path.isdir(path):
        if builder is None:
            return datasets.load_dataset(path, name=spec.config, **kw)
        arg = {"data_dir": path} if os.path.isdir(path) else {"data_files": path}
        return datasets.load_dataset(builder, **arg, **kw)
    ext = os.path.splitext(path)[1].lower()
    if ext in FILE_BUILDERS:
        if not os.path.exists(path) and not any(c in path for c in "*?["):
            raise ConfigError(f"dataset file {path!r} does not exist")
        return datasets.load_dataset(FILE_BUILDERS[ext], data_files=path, **kw)
    if src.startswith((".", "/", "~")):
        raise ConfigError(f"dataset folder {src!r} does not exist")
    if src.startswith("builtin:"):
        raise ConfigError(f"unknown builtin dataset {src!r}; registered: {', '.join(sorted(_DATASET_SOURCES))}")
    try:  # a Hub dataset: only the requested split
        return datasets.load_dataset(src, name=spec.config, revision=spec.revision, split=base, **kw)
    except ValueError as e:
        if "split" in str(e).lower():
            raise ConfigError(f"dataset {src!r} has no split {base!r}: {e}") from e
        raise ConfigError(f"cannot load dataset {src!r} (config {spec.config!r}): {e}") from e
    except (OSError, ConnectionError, FileNotFoundError) as e:
        raise ConfigError(f"cannot load dataset {src!r}{offline_hint()}: {e}") from e


def load_split(spec: DatasetSpec, split: str, cache: dict | None = None) -> SplitData:
    """Load the base split of `split` (e.g. `train` for `train[:2%]`) and the rows the expression selects."""
    base, _ = parse_split(split)
    ckey = (spec.dataset_id(), spec.config, spec.revision, base)
    if cache is not None and ckey in cache:
        ds = cache[ckey]
    else:
        loaded = _load_all(spec, base)
        if isinstance(loaded, datasets.DatasetDict):
            if base not in loaded:
                raise ConfigError(
                    f"dataset {spec.dataset_id()!r} has no split {base!r}; its splits are {sorted(loaded)}"
                )
            ds = loaded[base]
        elif isinstance(loaded, datasets.Dataset):
            ds = loaded
        else:  # IterableDataset and friends: we need random access for seeded, hashed selections
            raise ConfigError(
                f"dataset {spec.dataset_id()!r} loaded as {type(loaded).__name__}; use a map-style Dataset"
            )
        if cache is not None:
            cache[ckey] = ds
    idx = slice_indices(split, len(ds))
    if idx.size == 0:
        raise ConfigError(f"split {split!r} of {spec.dataset_id()!r} selects no rows (the split has {len(ds)})")
    info = {
        "dataset": spec.dataset_id(), "config": spec.config, "split": split.strip(), "revision": spec.revision,
        "fingerprint": _fingerprint(ds), "num_rows": len(ds),
    }  # fmt: skip
    key = spec.dataset_id() + (f"[{spec.config}]" if spec.config else "") + f":{base}"
    return SplitData(ds, idx, info, key)
