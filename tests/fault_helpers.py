"""Shared helpers of the fault suite: directory fingerprints (nothing written, nothing damaged), a saved tiny
checkpoint to damage, and file surgery (truncate, empty, overwrite)."""

import hashlib
import os
import shutil

from hf_mpprune import MPPruner, PruningConfig
from tests.tiny_models import tiny_vit


def fingerprint(root) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` plus an entry per directory: equal fingerprints mean
    nothing was created, deleted or changed."""
    root = os.fspath(root)
    out = {}
    if not os.path.exists(root):
        return out
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = "dir"
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_checkpoint(path, sparsity: float = 0.5, analyze: bool = True) -> MPPruner:
    """A tiny ViT pruned by magnitude and saved with every sidecar (config, masks, ledger, spectra, card)."""
    pruner = MPPruner(tiny_vit(), PruningConfig("magnitude", sparsity))
    if analyze:
        pruner.analyze(progress=False)
    pruner.prune()
    pruner.save_pretrained(path)
    return pruner


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def truncate(path, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(max(1, int(size * keep)))


def empty(path) -> None:
    open(path, "wb").close()


def overwrite(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
