"""Trainer checkpoints that survive a crash, and resume that restores the weights through the model's own loader.

* Completion marker: after transformers has written everything of `checkpoint-N` (weights, masks, optimizer,
  scheduler, RNG, `trainer_state.json`), `mark_complete` writes `mpprune_checkpoint.json` (atomically, last) with
  the size of every file, the SHA-256 of `trainer_state.json` and the masks' SHA-256. A folder without a valid
  marker was interrupted (kill -9, power loss of the page cache aside) and is never resumed from.
* `latest_complete_checkpoint`: the newest `checkpoint-N` whose marker verifies; newer incomplete folders are
  renamed `incomplete-checkpoint-N` (kept for inspection, invisible to transformers' rotation and resume).
* `load_weights`: transformers 5 writes checkpoints with the legacy key names (e.g. `vit.encoder.layer.*`) and
  `Trainer._load_from_checkpoint` does not convert them back (transformers issue 43701). We load the folder with
  `type(model).from_pretrained`, which applies the model's checkpoint conversion mapping, and copy the result
  into the live model with a strict `load_state_dict`.
"""

import copy
import hashlib
import json
import logging
import os
import re

import torch
from torch import nn

from ..core.constants import MASKS_NAME
from ..core.errors import LedgerMismatchError
from ..core.masks import Masks


logger = logging.getLogger(__name__)

COMPLETE_NAME = "mpprune_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_FORMAT = "hf_mpprune.checkpoint"


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel != COMPLETE_NAME and not rel.endswith(".tmp"):
                out[rel] = os.path.getsize(full)
    return dict(sorted(out.items()))


def mark_complete(folder: str, masks: Masks | None, global_step: int) -> None:
    """Write the completion marker of a fully written checkpoint folder (atomic: temp file + `os.replace`)."""
    state = os.path.join(folder, TRAINER_STATE)
    record = {
        "format": _FORMAT,
        "global_step": int(global_step),
        "trainer_state_sha256": _file_sha256(state) if os.path.isfile(state) else None,
        "mask_sha256": None if masks is None else masks.sha256(),
        "files": _files(folder),
    }
    tmp = os.path.join(folder, COMPLETE_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, COMPLETE_NAME))


def check_complete(folder: str) -> str | None:
    """None when `folder` is a complete checkpoint, else the reason it is not."""
    path = os.path.join(folder, COMPLETE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return f"no {COMPLETE_NAME} (the write was interrupted)"
    except (OSError, ValueError) as e:
        return f"unreadable {COMPLETE_NAME}: {e}"
    if record.get("format") != _FORMAT:
        return f"{COMPLETE_NAME} has format {record.get('format')!r}"
    have = _files(folder)
    if have != record.get("files"):
        diff = sorted(k for k in set(have) | set(record.get("files", {})) if have.get(k) != record["files"].get(k))
        return f"files differ from the marker: {diff[:5]}"
    state = os.path.join(folder, TRAINER_STATE)
    if record.get("trainer_state_sha256") and _file_sha256(state) != record["trainer_state_sha256"]:
        return f"{TRAINER_STATE} does not match its SHA-256 in the marker"
    if record.get("mask_sha256"):
        try:
            Masks.load(os.path.join(folder, MASKS_NAME), expected_sha256=record["mask_sha256"])
        except LedgerMismatchError as e:
            return str(e)
    return None


def latest_complete_checkpoint(output_dir: str, *, quarantine: bool = True) -> str | None:
    """The newest complete `checkpoint-N` under `output_dir` (None when there is none).

    Newer incomplete folders are logged at WARNING and, with `quarantine=True` (the main process only), renamed
    `incomplete-checkpoint-N[-k]` so that neither transformers' rotation nor a later resume picks them up. A run
    whose checkpoints carry no marker at all (written without hf_mpprune) falls back to the newest folder.
    """
    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        (int(m.group(1)), os.path.join(output_dir, n))
        for n in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(n)) and os.path.isdir(os.path.join(output_dir, n))
    )
    if found and not any(os.path.exists(os.path.join(p, COMPLETE_NAME)) for _, p in found):
        logger.warning("no checkpoint in %s has a %s: resuming from the newest, %s", output_dir, COMPLETE_NAME,
                       found[-1][1])  # fmt: skip
        return found[-1][1]
    for _, path in reversed(found):
        reason = check_complete(path)
        if reason is None:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, reason)
        if quarantine:
            _quarantine(path)
    return None


def _quarantine(path: str) -> None:
    parent, name = os.path.split(path)
    target, k = os.path.join(parent, "incomplete-" + name), 1
    while os.path.exists(target):
        target, k = os.path.join(parent, f"incomplete-{name}-{k}"), k + 1
    os.replace(path, target)
    logger.warning("moved %s to %s", path, target)


# ---- weights -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load the weights of a transformers checkpoint folder into `model` through `type(model).from_pretrained`
    (the model's own key conversion), then copy them in with a strict `load_state_dict`."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else None
    fresh, info = type(model).from_pretrained(
        checkpoint, config=copy.deepcopy(model.config), dtype=dtype, output_loading_info=True
    )
    missing = list(info.get("missing_keys", []))
    if missing:
        raise LedgerMismatchError(
            f"checkpoint {checkpoint} does not hold {len(missing)} weight(s) of {type(model).__name__}, e.g. "
            f"{sorted(missing)[:5]}; it was written for another architecture"
        )
    model.load_state_dict(fresh.state_dict(), strict=True)
    logger.info("loaded the weights of %s through %s.from_pretrained", checkpoint, type(model).__name__)


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a model's state dict (identifies e.g. a teacher)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
