"""The `mpprune` block in a checkpoint's `config.json`: the pruning identity that survives plain transformers.

`save_pretrained` writes the sidecars (`mpprune_masks.safetensors`, `mpprune_ledger.json`, ...) and also records in
`config.json`::

    "mpprune": {"format_version": 1, "hf_mpprune_version": ..., "method": ..., "pattern": "2:4" | null,
                "sparsity": ..., "mask_sha256": ..., "ledger_sha256": ..., "layers": [masked layer names]}

transformers keeps unknown config attributes (`PretrainedConfig(**kwargs)` sets them, `to_dict` writes them), so
`AutoModel.from_pretrained(dir).save_pretrained(copy)` carries the block while the sidecars are lost.
`MPPruner.from_pretrained(copy)` then warns and rebuilds the masks from the weights' exact zeros; they are
accepted only when their SHA-256 equals the recorded `mask_sha256` (a kept weight that is exactly 0, or weights
changed after pruning, make it differ: then no masks are restored).
"""

import json
import logging
import os
import warnings
from typing import Any

from torch import nn

from ..core.config import KeepPattern
from ..core.constants import LEDGER_NAME, MASKS_NAME, __version__
from ..core.errors import MPPruneWarning
from ..core.layers import discover_layers
from ..core.ledger import sha256_file
from ..core.masks import Masks


logger = logging.getLogger(__name__)

BLOCK_KEY = "mpprune"
BLOCK_VERSION = 1


def config_block(pruner: Any, directory: str) -> dict[str, Any] | None:
    """The block for a checkpoint written to `directory` (sidecars already there); None for a dense model."""
    masks = pruner.masks
    if masks is None:
        return None
    ledger = os.path.join(directory, LEDGER_NAME)
    return {
        "format_version": BLOCK_VERSION,
        "hf_mpprune_version": __version__,
        "method": pruner.config.method if pruner.config is not None else None,
        "pattern": None if masks.pattern is None else str(masks.pattern),
        "sparsity": round(float(masks.sparsity()), 8),
        "mask_sha256": masks.sha256(),
        "ledger_sha256": sha256_file(ledger) if os.path.isfile(ledger) else None,
        "layers": list(masks.names),
    }


def write_config_block(pruner: Any, directory: str) -> dict[str, Any] | None:
    """Add (or, for a dense model, remove a stale) `mpprune` block to `directory/config.json`."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    block = config_block(pruner, directory)
    if block is None:
        data.pop(BLOCK_KEY, None)
    else:
        data[BLOCK_KEY] = block
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return block


def _resolve(model: nn.Module, name: str) -> str | None:
    """`name` in `model`, or without the base-model prefix (a task checkpoint reloaded with `AutoModel`)."""
    names = dict(model.named_modules())
    if name in names:
        return name
    prefix = str(getattr(model, "base_model_prefix", "") or "") + "."
    if prefix != "." and name.startswith(prefix) and name[len(prefix) :] in names:
        return name[len(prefix) :]
    return None


def masks_from_block(model: nn.Module, block: dict[str, Any], where: str) -> Masks | None:
    """Masks rebuilt from the weights' zeros, named as in `model`; None (with a warning) if the SHA-256 differs."""
    layers = list(block.get("layers") or [])
    resolved = {n: _resolve(model, n) for n in layers}
    missing = [n for n, r in resolved.items() if r is None or not hasattr(model.get_submodule(r), "weight")]
    pattern = KeepPattern.parse(block["pattern"]) if block.get("pattern") else None
    if not layers or missing:
        warnings.warn(
            f"{where}: cannot rebuild masks from config.json's mpprune block: layers {missing[:5]} are not in "
            f"{type(model).__name__}; load it with the architecture it was pruned as",
            MPPruneWarning,
            stacklevel=5,
        )
        return None
    bits = {n: model.get_submodule(r).weight.detach() != 0 for n, r in resolved.items()}
    digest = Masks(bits, pattern).sha256()  # hashed under the names it was saved with
    if digest != block.get("mask_sha256"):
        warnings.warn(
            f"{where}: masks rebuilt from the zeros have SHA-256 {digest[:12]}…, config.json records "
            f"{str(block.get('mask_sha256'))[:12]}…: the weights changed after pruning (or a kept weight is exactly "
            "0); no masks restored",
            MPPruneWarning,
            stacklevel=5,
        )
        return None
    return Masks({resolved[n]: m for n, m in bits.items()}, pattern)


def recover_from_config(pruner: Any, where: str) -> bool:
    """For a folder without sidecars: if `config.json` has our block, warn and restore masks from the zeros.

    Returns True when masks were restored (then `pruner.layers` is the masked layers)."""
    block = getattr(getattr(pruner.model, "config", None), BLOCK_KEY, None)
    if not isinstance(block, dict):
        return False
    warnings.warn(
        f"{where} has an hf_mpprune block in config.json but no sidecars ({LEDGER_NAME}, {MASKS_NAME}): it was "
        "re-saved with plain transformers. Rebuilding the masks from the weights' zeros; the ledger's history "
        "(calibration, metrics) is lost",
        MPPruneWarning,
        stacklevel=4,
    )
    masks = masks_from_block(pruner.model, block, where)
    pruner.ledger.identity["config_block"] = dict(block)
    if masks is None:
        return False
    pruner.masks = masks
    if pruner.config is None:
        pruner.layers = discover_layers(pruner.model, masks.names)
    pruner.ledger.identity["mask_sha256"] = block["mask_sha256"]
    logger.info("recovered %d masks from config.json (SHA-256 %s…)", len(masks), block["mask_sha256"][:12])
    return True
