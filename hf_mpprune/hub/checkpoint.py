"""Checkpoints: `save_pretrained` / `from_pretrained` / `push_to_hub` for an `MPPruner`.

A checkpoint is a normal transformers directory (config.json + safetensors with exact +0.0 zeros) plus sidecars
(`constants.py`): `mpprune_config.json`, `mpprune_masks.safetensors` (bit-packed, SHA-256), `mpprune_ledger.json`
(mask SHA-256 and weights SHA-256), `mpprune_spectra.json` (if analysed), `recipe.yaml` and a `README.md` card.
`AutoModelFor*.from_pretrained(dir)` loads it without hf_mpprune. Input-channel permutations (CAST +perm) must be
folded into the weights before saving; `ledger.permutations` only records them (see `ledger.py`).

Writes are atomic (`atomic.py`): everything goes to a temporary directory next to the target, which replaces the
target only once complete. A target that holds anything but an earlier checkpoint of ours is refused before anything
is written (`target.py`); every save lists the files it wrote in `mpprune_files.json`.
"""

import json
import logging
import os
import re
import tempfile
import warnings
from typing import Any

import torch
import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from transformers import PreTrainedModel

from ..core.config import PruningConfig
from ..core.constants import CONFIG_NAME, FILES_NAME, LEDGER_NAME, MASKS_NAME, RECIPE_NAME, SPECTRA_NAME
from ..core.errors import CheckpointError, ConfigError, LedgerMismatchError, MPPruneWarning
from ..core.files import parse_sidecar
from ..core.layers import discover_layers
from ..core.ledger import Ledger, weights_sha256
from ..core.loading import load_model, resolve_local, split_hub_kwargs
from ..core.masks import Masks
from ..spectral.fit import SpectralReport
from .atomic import atomic_directory
from .card import make_card
from .companions import copy_module_stack
from .config_block import recover_from_config, write_config_block
from .network import hub_errors, read_or_none
from .target import check_save_target, entries


logger = logging.getLogger(__name__)


# ---- verification ------------------------------------------------------------------------------------------------
@torch.no_grad()
def verify_masks(model: torch.nn.Module, masks: Masks) -> dict[str, int]:
    """Check mask ⇔ zero pattern. A pruned-by-mask weight that is nonzero raises `LedgerMismatchError` naming the
    layers; kept-by-mask weights that are exactly 0 (e.g. bf16 underflow) are allowed and returned per layer."""
    masks.check_model(model)
    bad, kept_zero = {}, {}
    for name, m in masks.items():
        w = model.get_submodule(name).weight
        m = m.to(w.device)
        n_bad = int((~m & (w != 0)).sum())
        if n_bad:
            bad[name] = n_bad
        n_zero = int((m & (w == 0)).sum())
        if n_zero:
            kept_zero[name] = n_zero
    if bad:
        shown = ", ".join(f"{k} ({v} nonzero)" for k, v in list(bad.items())[:10])
        raise LedgerMismatchError(
            f"weights do not match their masks: pruned-by-mask entries are nonzero in {len(bad)} layer(s): {shown}. "
            "The weights were modified after pruning (e.g. trained without `masks.freeze_`): re-apply the masks "
            "with `masks.apply_(model)` or load with plain transformers"
        )
    if kept_zero:
        logger.info(
            "%d kept-by-mask weights are exactly 0 in %d layers (allowed)", sum(kept_zero.values()), len(kept_zero)
        )
    return kept_zero


# ---- save ----------------------------------------------------------------------------------------------------------
def save_pretrained(
    pruner: Any, save_directory: str | os.PathLike, *, processor: Any = None, card: bool = True,
    existing_card: str | None = None, model_name: str | None = None, max_shard_size: str | int | None = None,
) -> str:  # fmt: skip
    """Write the checkpoint atomically; returns the directory. Nothing is written when the masks do not match
    the weights (`LedgerMismatchError`) or the model is not a transformers `PreTrainedModel` (`ConfigError`).
    `processor=None` saves the processor the model came with (`pruner.processor`), `False` none; a
    sentence-transformers module stack of the source folder is kept (`companions`)."""

    model = pruner.model
    if not isinstance(model, PreTrainedModel):
        raise ConfigError(
            f"save_pretrained needs a transformers PreTrainedModel, got {type(model).__name__}; "
            "for a plain nn.Module save `pruner.masks.save(path)` and the state dict yourself"
        )
    target = check_save_target(save_directory)
    if pruner.masks is not None:
        verify_masks(model, pruner.masks)
        _canonical_zeros_(model, pruner.masks)
    if card and existing_card is None and os.path.isfile(os.path.join(target, "README.md")):
        with open(os.path.join(target, "README.md"), encoding="utf-8") as f:
            existing_card = f.read()
    with atomic_directory(target) as tmp:
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(tmp, **kwargs)
        processor = getattr(pruner, "processor", None) if processor is None else processor
        if processor:  # by default the processor the model came with; False: none
            processor.save_pretrained(tmp)
        copy_module_stack(getattr(pruner, "source", None), tmp)
        _write_sidecars(pruner, tmp)
        write_config_block(pruner, tmp)
        if card:
            text = make_card(pruner, model_name=model_name, existing=existing_card)
            _write_text(os.path.join(tmp, "README.md"), text)
        _write_text(os.path.join(tmp, FILES_NAME), json.dumps(entries(tmp), indent=1) + "\n")
    logger.info("saved checkpoint to %s", target)
    return target


@torch.no_grad()
def _canonical_zeros_(model: torch.nn.Module, masks: Masks) -> None:
    """Pruned entries must be +0.0 on disk (−0.0 breaks some 2:4 kernels); values are untouched otherwise."""
    for name, m in masks.items():
        w = model.get_submodule(name).weight
        w.masked_fill_(~m.to(w.device), 0.0)


def _write_sidecars(pruner: Any, tmp: str) -> None:
    ledger = pruner.ledger
    ledger.identity["weights_sha256"] = weights_sha256(tmp)
    if pruner.config is not None:
        pruner.config.to_json_file(os.path.join(tmp, CONFIG_NAME))
    if pruner.masks is not None:
        ledger.identity["mask_sha256"] = pruner.masks.save(os.path.join(tmp, MASKS_NAME))
    if pruner.spectra is not None:
        pruner.spectra.to_json(os.path.join(tmp, SPECTRA_NAME), include_singular_values=True)
    ledger.to_json(os.path.join(tmp, LEDGER_NAME))
    _write_text(os.path.join(tmp, RECIPE_NAME), _recipe_text(pruner))


def _recipe_text(pruner: Any) -> str:
    recipe = getattr(pruner, "recipe", None)
    if recipe is None:
        recipe = {"model": {"id": pruner.ledger.identity.get("base_model") or "unknown"}}
        if pruner.config is not None:
            recipe["pruning"] = {k: v for k, v in pruner.config.to_dict().items() if k != "hf_mpprune_version"}
    head = "# hf_mpprune recipe that produced this checkpoint (run: hf-mpprune run recipe.yaml)\n"
    return head + yaml.safe_dump(recipe, sort_keys=False)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---- load ----------------------------------------------------------------------------------------------------------
def load_pretrained(
    cls: type, name_or_path: str | os.PathLike, config: PruningConfig | None = None, **kwargs: Any
) -> Any:
    """Load a model; if our sidecars are present also restore config, masks (verified), ledger and spectra."""
    hub = split_hub_kwargs(kwargs)
    allow_missing_masks = bool(kwargs.pop("allow_missing_masks", False))
    local, commit = resolve_local(name_or_path, hub)
    model = load_model(local, **kwargs)
    if not any(os.path.isfile(os.path.join(local, n)) for n in (LEDGER_NAME, MASKS_NAME)):
        pruner = cls(model, config)
        pruner.ledger.identity.update(
            base_model=os.fspath(name_or_path), base_weights_sha256=weights_sha256(local, exclude=(MASKS_NAME,))
        )
        if commit is not None:
            pruner.ledger.identity["base_revision"] = commit
        recover_from_config(pruner, local)
        return pruner
    return _restore(cls, model, local, config, allow_missing_masks)


def _restore(
    cls: type, model: torch.nn.Module, local: str, config: PruningConfig | None, allow_missing_masks: bool = False
) -> Any:

    if os.path.isfile(os.path.join(local, LEDGER_NAME)):
        ledger = Ledger.from_json(os.path.join(local, LEDGER_NAME))
    else:  # a Trainer checkpoint written before the ledger travelled with it: masks only
        ledger = Ledger(identity={"base_model": local})
    if config is None and os.path.isfile(os.path.join(local, CONFIG_NAME)):
        config = _saved_config(os.path.join(local, CONFIG_NAME))
    masks = None
    if os.path.isfile(os.path.join(local, MASKS_NAME)):
        masks = Masks.load(os.path.join(local, MASKS_NAME), expected_sha256=ledger.identity.get("mask_sha256"))
    elif ledger.identity.get("mask_sha256") and not allow_missing_masks:
        raise CheckpointError(
            f"{os.path.join(local, MASKS_NAME)!r} is missing but the ledger records masks (SHA-256 "
            f"{str(ledger.identity['mask_sha256'])[:12]}…): restore the file from a backup, or load the dense "
            "weights without masks with `MPPruner.from_pretrained(path, allow_missing_masks=True)` (or plain "
            "transformers `from_pretrained`)"
        )
    elif ledger.identity.get("mask_sha256"):
        warnings.warn(
            f"{MASKS_NAME} is missing in {local}: loading the weights without masks (allow_missing_masks=True)",
            MPPruneWarning,
            stacklevel=3,
        )
    pruner = cls(model, config)
    if config is None and masks is not None:
        pruner.layers = discover_layers(model, masks.names)
    if masks is not None:
        if set(masks.names) != set(pruner.layers.names):
            diff = sorted(set(masks.names) ^ set(pruner.layers.names))[:10]
            raise LedgerMismatchError(f"masks in {local} do not cover the configured layers (differ: {diff})")
        verify_masks(model, masks)
    _check_weights_hash(local, ledger)
    try:
        ledger.check_disjoint()
    except ConfigError as e:
        warnings.warn(f"the ledger in {local} records overlapping data splits: {e}", MPPruneWarning, stacklevel=3)
    pruner.masks, pruner.ledger = masks, ledger
    if os.path.isfile(os.path.join(local, SPECTRA_NAME)):
        pruner.spectra = parse_sidecar(os.path.join(local, SPECTRA_NAME), SpectralReport.from_dict, what="spectra")
    return pruner


def _saved_config(path: str) -> PruningConfig | None:
    try:
        return PruningConfig.from_json_file(path, strict=False)
    except ConfigError as e:  # e.g. a method that is not installed here
        warnings.warn(
            f"cannot restore the pruning config ({e}); masks and ledger are still loaded", MPPruneWarning, stacklevel=3
        )
        return None


def _check_weights_hash(local: str, ledger: Ledger) -> None:
    want = ledger.identity.get("weights_sha256")
    if not want:
        return
    have = weights_sha256(local, exclude=(MASKS_NAME,))
    if have != want:
        changed = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        warnings.warn(
            f"weights file(s) {changed} differ from the SHA-256 in the ledger: the weights were re-saved after "
            "pruning; masks still match the zeros, but the ledger's metrics may not describe these weights",
            MPPruneWarning,
            stacklevel=3,
        )


# ---- push ----------------------------------------------------------------------------------------------------------
@hub_errors
def push_to_hub(
    pruner: Any, repo_id: str | None = None, *, private: bool | None = None, revision: str | None = None,
    create_pr: bool = False, token: str | bool | None = None, commit_message: str | None = None, processor: Any = None,
):  # fmt: skip
    """Upload weights, sidecars and card in **one** commit; returns the `CommitInfo`. An existing card in the repo
    is updated (user text outside our marked section kept). `repo_id` is required and checked before any I/O."""
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ConfigError(f"push_to_hub needs repo_id='org/name' (or 'name'), got {repo_id!r}")

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = read_or_none(repo_id, "reading the model card (README.md) of",
                        lambda: hf_hub_download(repo_id, "README.md", revision=revision, token=token))  # fmt: skip
    existing = None
    if card is not None:  # merged with ours (their text and metadata kept), never replaced
        with open(card, encoding="utf-8") as f:
            existing = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(
            pruner, os.path.join(tmp, "ckpt"), processor=processor, existing_card=existing,
            model_name=repo_id.split("/")[-1],
        )  # fmt: skip
        ops = _operations(api, repo_id, revision, folder)
        msg = commit_message or f"Upload pruned checkpoint ({_summary(pruner)}) with hf_mpprune"
        # create_commit = exactly one commit (upload_folder may split large uploads into several)
        return api.create_commit(
            repo_id=repo_id, operations=ops, commit_message=msg, revision=revision, create_pr=create_pr
        )


# transformers' weight files (either layout: one file, or shards + index). A push deletes the ones it does not
# upload, so a stale `model.safetensors` (which transformers prefers) never shadows a new sharded upload or vice versa.
_WEIGHT_FILE = re.compile(
    r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)"  # one file, or one shard
    r"|(model\.safetensors|pytorch_model\.bin)\.index\.json"  # the shard index
)


def _operations(api, repo_id: str, revision: str | None, folder: str) -> list:
    """Add every file of the checkpoint; in the same commit, delete the repo's transformers weight files that this
    checkpoint does not have (the other shard layout, surplus shards). Other files in the repo are left alone."""

    ops: list = []
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            ops.append(
                CommitOperationAdd(
                    path_in_repo=os.path.relpath(full, folder).replace(os.sep, "/"), path_or_fileobj=full
                )
            )
    ours = {op.path_in_repo for op in ops}
    remote = read_or_none(repo_id, "listing the files of", lambda: api.list_repo_files(repo_id, revision=revision))
    stale = [f for f in remote or [] if f not in ours and _WEIGHT_FILE.fullmatch(f)]
    ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
    return ops


def _summary(pruner: Any) -> str:
    if pruner.masks is None:
        return "dense"
    method = pruner.config.method if pruner.config is not None else "pruned"
    return f"{method}, sparsity {pruner.masks.sparsity():.3f}"
