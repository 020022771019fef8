"""Safe readers for every file we load: JSON sidecars, safetensors weights, a model folder's config.json.

Each reader raises `CheckpointError` naming the file, what is wrong with it and how to recover, instead of the
parser's own exception (`JSONDecodeError`, `SafetensorError`, a transformers `ValueError`, ...). Nothing here
unpickles anything or runs code from a model folder: pickled weights and `auto_map` (remote code) are refused.
"""

import json
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import transformers
from transformers.utils.generic import is_timm_config_dict

from .constants import MASKS_NAME
from .errors import CheckpointError, MPPruneError


T = TypeVar("T")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The recovery advice for a damaged hf_mpprune checkpoint folder (docs/errors.md explains each step).
RECOVER_CHECKPOINT = (
    "restore the folder from a backup or re-run the save (`hf-mpprune prune ... --output DIR` or "
    "`pruner.save_pretrained(DIR)`); see docs/errors.md"
)
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def read_json(path: str | os.PathLike, *, what: str, recover: str = RECOVER_CHECKPOINT, expect: type = dict) -> Any:
    """Parse the JSON file `path` (a `what`, e.g. "ledger"); the top level must be an `expect` instance.

    Raises `CheckpointError` naming the file when it is missing, unreadable, not UTF-8 JSON (empty, truncated,
    damaged) or of the wrong top-level type.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{what} file {path!r} does not exist; {recover}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {what} file {path!r} ({e}); {recover}") from e
    if not text.strip():
        raise CheckpointError(f"{what} file {path!r} is empty; {recover}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{what} file {path!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}: truncated or "
            f"damaged); {recover}"
        ) from e
    if not isinstance(data, expect):
        raise CheckpointError(
            f"{what} file {path!r} holds a JSON {type(data).__name__}, expected a JSON "
            f"{'object' if expect is dict else expect.__name__}; {recover}"
        )
    return data


def parse_sidecar(
    path: str | os.PathLike, build: Callable[[Any], T], *, what: str, recover: str = RECOVER_CHECKPOINT
) -> T:
    """`build(read_json(path))`, turning a structure error (valid JSON of the wrong shape) into `CheckpointError`."""
    data = read_json(path, what=what, recover=recover)
    try:
        return build(data)
    except MPPruneError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{what} file {os.fspath(path)!r} is invalid: {e}; {recover}") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(
            f"{what} file {os.fspath(path)!r} is valid JSON but not a {what} ({type(e).__name__}: {e}); {recover}"
        ) from e


def check_safetensors(path: str | os.PathLike, *, recover: str = RECOVER_CHECKPOINT) -> dict[str, Any]:
    """Validate a safetensors file's header and size without loading tensors; returns the parsed header.

    Catches empty, truncated and overwritten files (the header's byte ranges must end exactly at the file's end).
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            raw = f.read(n) if 0 < n <= _MAX_HEADER else b""
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path!r} does not exist; {recover}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read weights file {path!r} ({e}); {recover}") from e
    if size == 0:
        raise CheckpointError(f"safetensors file {path!r} is empty (0 bytes); {recover}")
    if n <= 0 or n > _MAX_HEADER or len(raw) != n:
        raise CheckpointError(
            f"safetensors file {path!r} is damaged or truncated ({size} bytes, header length {n}); {recover}"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise CheckpointError(f"safetensors file {path!r} has a damaged header; {recover}") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says (damaged)"
        raise CheckpointError(
            f"safetensors file {path!r} is {state}: {size} bytes on disk, {expected} expected; {recover}"
        )
    return header


def check_no_remote_code(config: dict[str, Any], path: str) -> None:
    """Refuse a config that needs code from the model folder (`auto_map` naming a class transformers lacks)."""
    archs = config.get("architectures") or []
    known = bool(archs) and all(isinstance(a, str) and hasattr(transformers, a) for a in archs)
    if config.get("auto_map") and not known:
        raise CheckpointError(
            f"the model in {path!r} needs custom code from its folder (config.json has auto_map "
            f"{sorted(config['auto_map'])}, architectures {archs}); hf_mpprune never runs remote code. If you trust "
            "it, load it yourself with `AutoModel...from_pretrained(path, trust_remote_code=True)` and pass the "
            "model to `MPPruner(model, config)`"
        )


def check_model_dir(path: str | os.PathLike) -> dict[str, Any]:
    """Check a local model folder before transformers touches it; returns its parsed config.json.

    Raises `CheckpointError` for: not a folder, no or damaged config.json, no `model_type` (timm's Hub layout, detected as transformers does, needs none), remote code, only
    pickled weights (`pytorch_model.bin`), and damaged or truncated safetensors weights (each named).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"no model folder at {path!r}: the path does not exist or is not a directory")
    names = sorted(os.listdir(path))
    if "config.json" not in names:
        shown = names[:8] + (["..."] if len(names) > 8 else [])
        raise CheckpointError(
            f"{path!r} is not a transformers model folder: it has no config.json (files: {shown}); point to the "
            "folder written by `save_pretrained`"
        )
    cfg = read_json(os.path.join(path, "config.json"), what="model config", recover="re-save the model or restore "
                    "config.json from the original model")  # fmt: skip
    if (not isinstance(cfg.get("model_type"), str) or not cfg["model_type"]) and not is_timm_config_dict(cfg):
        raise CheckpointError(
            f"{os.path.join(path, 'config.json')!r} has no 'model_type' key, so the architecture is unknown; "
            "restore config.json from the original model"
        )
    check_no_remote_code(cfg, path)
    weights = [n for n in names if n.endswith(".safetensors") and n != MASKS_NAME]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if not weights and pickles:
        raise CheckpointError(
            f"{path!r} holds only pickled weights ({pickles}); hf_mpprune loads safetensors only because unpickling "
            "can run arbitrary code. If you trust the file, convert it once with transformers "
            "(`AutoModel.from_pretrained(path).save_pretrained(new_dir)`) and load new_dir"
        )
    for name in weights:
        check_safetensors(os.path.join(path, name), recover="re-download or re-save the model weights")
    return cfg


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and `os.replace`: a reader (or a crash)
    sees the old file or the complete new one, never a partial write."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
