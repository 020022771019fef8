"""Fault suite, files: every damaged, missing or unsafe file of a checkpoint or model folder is a clear error that
names the file (and how to recover), and loading never changes the folder."""

import json
import os
import warnings

import pytest

from hf_mpprune import CheckpointError, Ledger, LedgerMismatchError, MPPruner, PruningConfig
from hf_mpprune.core.constants import CONFIG_NAME, LEDGER_NAME, MASKS_NAME, SPECTRA_NAME
from hf_mpprune.core.files import check_safetensors, read_json
from tests.fault_helpers import copy_checkpoint, empty, fingerprint, make_checkpoint, overwrite, truncate


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    make_checkpoint(path)
    return path


@pytest.fixture
def ckpt(saved, tmp_path):
    return copy_checkpoint(saved, tmp_path / "model")


def _json_edit(path, fn):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data = fn(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


# (what to damage, how, expected error type, text the message must contain)
DAMAGE = {
    "weights_truncated": ("model.safetensors", lambda p: truncate(p, 0.6), CheckpointError, "truncated"),
    "weights_empty": ("model.safetensors", empty, CheckpointError, "empty"),
    "weights_garbage": ("model.safetensors", lambda p: overwrite(p, b"\xff" * 64), CheckpointError, "damaged"),
    "weights_appended": ("model.safetensors", lambda p: open(p, "ab").write(b"junk"), CheckpointError, "longer"),
    "ledger_truncated": (LEDGER_NAME, lambda p: truncate(p, 0.5), CheckpointError, "not valid JSON"),
    "ledger_empty": (LEDGER_NAME, empty, CheckpointError, "empty"),
    "ledger_list": (LEDGER_NAME, lambda p: overwrite(p, b"[1, 2]"), CheckpointError, "expected a JSON object"),
    "ledger_wrong_section": (
        LEDGER_NAME,
        lambda p: _json_edit(p, lambda d: {**d, "steps": {"a": 1}}),
        CheckpointError,
        "'steps'",
    ),  # fmt: skip
    "ledger_not_utf8": (LEDGER_NAME, lambda p: overwrite(p, b"\xff\xfe{"), CheckpointError, "cannot read"),
    "config_truncated": (CONFIG_NAME, lambda p: truncate(p, 0.5), CheckpointError, "not valid JSON"),
    "config_list": (CONFIG_NAME, lambda p: overwrite(p, b'"magnitude"'), CheckpointError, "expected a JSON object"),
    "spectra_truncated": (SPECTRA_NAME, lambda p: truncate(p, 0.3), CheckpointError, "not valid JSON"),
    "spectra_wrong_shape": (SPECTRA_NAME, lambda p: overwrite(p, b'{"layers": 5}'), CheckpointError, "not a spectra"),
    "masks_truncated": (MASKS_NAME, lambda p: truncate(p, 0.5), LedgerMismatchError, "cannot read mask file"),
    "masks_empty": (MASKS_NAME, empty, LedgerMismatchError, "cannot read mask file"),
    "hf_config_truncated": ("config.json", lambda p: truncate(p, 0.5), CheckpointError, "not valid JSON"),
    "hf_config_no_model_type": (
        "config.json",
        lambda p: _json_edit(p, lambda d: {k: v for k, v in d.items() if k != "model_type"}),
        CheckpointError,
        "model_type",
    ),  # fmt: skip
    "hf_config_missing": ("config.json", os.remove, CheckpointError, "no config.json"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_is_named_and_untouched(ckpt, case):
    name, damage, err, text = DAMAGE[case]
    damage(ckpt / name)
    before = fingerprint(ckpt)
    with pytest.raises(err) as info:
        MPPruner.from_pretrained(ckpt)
    msg = str(info.value)
    assert text in msg
    assert name in msg or (name == "config.json" and str(ckpt) in msg), msg  # the file (or its folder) is named
    assert fingerprint(ckpt) == before  # loading never repairs, moves or deletes anything


def test_deleted_masks_is_an_error_with_an_explicit_dense_escape(ckpt):
    os.remove(ckpt / MASKS_NAME)
    before = fingerprint(ckpt)
    with pytest.raises(CheckpointError, match=MASKS_NAME) as info:
        MPPruner.from_pretrained(ckpt)
    assert "allow_missing_masks=True" in str(info.value)
    with pytest.warns(UserWarning, match="without masks"):
        pruner = MPPruner.from_pretrained(ckpt, allow_missing_masks=True)
    assert pruner.masks is None and pruner.ledger.identity["mask_sha256"]
    assert fingerprint(ckpt) == before


def test_pickled_weights_refused_with_our_wording(ckpt):
    os.rename(ckpt / "model.safetensors", ckpt / "pytorch_model.bin")
    before = fingerprint(ckpt)
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as info:
        MPPruner.from_pretrained(ckpt)
    assert "safetensors only" in str(info.value) and "arbitrary code" in str(info.value)
    assert fingerprint(ckpt) == before


def test_remote_code_config_refused_naming_trust_remote_code(ckpt):
    _json_edit(ckpt / "config.json", lambda d: {**d, "architectures": ["MyCustomViT"],
                                                "auto_map": {"AutoModel": "modeling_custom.MyCustomViT"}})  # fmt: skip
    with pytest.raises(CheckpointError, match="trust_remote_code=True") as info:
        MPPruner.from_pretrained(ckpt)
    assert "auto_map" in str(info.value)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="no config.json") as info:
        MPPruner.from_pretrained(tmp_path)
    assert "notes.txt" in str(info.value)


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        MPPruner.from_pretrained(tmp_path / "nope")


def test_unknown_model_type_is_named(ckpt):
    _json_edit(ckpt / "config.json", lambda d: {**d, "model_type": "vit-from-the-future"})
    with pytest.raises(CheckpointError, match="vit-from-the-future"):
        MPPruner.from_pretrained(ckpt)


def test_ledger_reader_names_file_directly(tmp_path):
    p = tmp_path / LEDGER_NAME
    p.write_text('{"identity": {}, "steps": [')
    with pytest.raises(CheckpointError, match=LEDGER_NAME) as info:
        Ledger.from_json(p)
    assert isinstance(info.value, OSError)  # a builtin base callers already catch
    with pytest.raises(CheckpointError, match="does not exist"):
        read_json(tmp_path / "missing.json", what="ledger")


def test_pruning_config_file_damaged_names_file(tmp_path):
    p = tmp_path / CONFIG_NAME
    p.write_text("")
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        PruningConfig.from_json_file(p)


def test_safetensors_checker_accepts_good_files(saved):
    header = check_safetensors(saved / "model.safetensors")
    assert any(k.endswith("classifier.weight") for k in header)
    assert check_safetensors(saved / MASKS_NAME)["__metadata__"]["format"] == "hf_mpprune.masks"


def test_intact_checkpoint_loads_without_warnings(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner = MPPruner.from_pretrained(saved)
    assert pruner.masks is not None and pruner.masks.sparsity() == pytest.approx(0.5, abs=1e-3)
