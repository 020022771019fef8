"""Where a checkpoint may be saved: a new folder, an empty one, or a folder that holds only an earlier save of ours.

A save replaces its target folder as a whole (`atomic.py`), so anything else in that folder would be lost with it:
the user's scripts, data, a half-finished experiment. `check_save_target` refuses such a folder before anything is
written, naming it and the first entries that are not ours. What counts as ours is exact: every save writes the
list of files it wrote (`mpprune_files.json`); a folder saved before that list existed is recognised by our ledger
or masks sidecar, and then only the file names a save writes are accepted.
"""

import os
import re

from ..core.constants import FILES_NAME, LEDGER_NAME, MASKS_NAME
from ..core.errors import CheckpointError, ConfigError
from ..core.files import read_json


# Written into a checkpoint after the save itself (a recipe's spectra plots): ours, though not in the list.
AFTER_SAVE = ("spectra_plots",)
# Top-level names a save of ours wrote before `mpprune_files.json` existed: the model, its processor, our sidecars.
_LEGACY = re.compile(
    r"config\.json|generation_config\.json|[^/]*\.safetensors|model\.safetensors\.index\.json|mpprune_[^/]*|"
    r"recipe\.yaml|README\.md|spectra_plots|tokenizer[^/]*|vocab\.[a-z]+|merges\.txt|special_tokens_map\.json|"
    r"added_tokens\.json|[a-z_]*processor_config\.json|chat_template\.[a-z]+|[^/]*\.model"
)


def entries(root: str) -> list[str]:
    """Every file, symbolic link and empty folder under `root`, as sorted '/'-separated relative paths."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        for name in files + links:
            out.append(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/"))
        if rel != "." and not files and not dirs:
            out.append(rel.replace(os.sep, "/") + "/")
    return sorted(out)


def _listed(target: str) -> set[str] | None:
    try:
        files = read_json(os.path.join(target, FILES_NAME), what="file list", expect=list)
    except CheckpointError:
        return None  # damaged: fall back to the names a save writes
    return {f for f in files if isinstance(f, str)} | {FILES_NAME}


def foreign_entries(target: str) -> list[str]:
    """What `target` holds that no save of ours wrote; [] for a folder that does not exist or is empty."""
    if not os.path.isdir(target):
        return []
    found = entries(target)
    ours = _listed(target) if os.path.isfile(os.path.join(target, FILES_NAME)) else None
    if ours is not None:
        return [p for p in found if p not in ours and p.split("/")[0] not in AFTER_SAVE]
    if any(os.path.isfile(os.path.join(target, n)) for n in (LEDGER_NAME, MASKS_NAME)):
        return [p for p in found if not _LEGACY.fullmatch(p.split("/")[0])]
    return found


def check_save_target(save_directory: str | os.PathLike) -> str:
    """Return the absolute target, or raise `ConfigError` naming it when a save there would delete anything that
    is not an earlier checkpoint of ours (a file, a folder holding other files, the current working directory)."""
    target = os.path.abspath(os.fspath(save_directory))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ConfigError(f"save_directory {target!r} exists and is not a directory; pick another path")
    cwd = os.path.abspath(os.getcwd())
    if os.path.isdir(target) and (cwd == target or cwd.startswith(target.rstrip(os.sep) + os.sep)):
        raise ConfigError(
            f"cannot save into {target!r}: it is (or holds) the current working directory, and a save replaces the "
            "whole folder; give a new folder such as 'pruned-model'"
        )
    foreign = foreign_entries(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"refusing to save into {target!r}: it holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
            f"that no hf_mpprune save wrote ({shown}). A save replaces the whole folder, so it must be new, empty "
            f"or an earlier checkpoint of ours; pick another folder (e.g. {os.path.join(target, 'pruned')!r}) "
            "or move those files away. Nothing was written."
        )
    return target
