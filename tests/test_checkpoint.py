"""Checkpoints: round trip (plain transformers and MPPruner), verification on load, atomic writes, cards."""

import json
import logging
import os
import warnings

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

import hf_mpprune.hub.checkpoint as hub
from hf_mpprune import ConfigError, KeepPattern, LedgerMismatchError, Masks, MPPruner, MPPruneWarning, PruningConfig
from hf_mpprune.core.constants import CONFIG_NAME, LEDGER_NAME, MASKS_NAME, RECIPE_NAME, SPECTRA_NAME
from hf_mpprune.core.ledger import sha256_file
from tests.tiny_models import vit_inputs


def _pruned(model, s=0.5, analyze=True):
    pruner = MPPruner(model, PruningConfig("magnitude", s))
    if analyze:
        pruner.analyze(progress=False)
    pruner.prune()
    return pruner


def _disk_key(sd, model, name):
    """transformers 5 writes legacy key names: find the on-disk tensor that is this module's weight."""
    w = model.get_submodule(name).weight.detach()
    keys = [k for k, v in sd.items() if v.shape == w.shape and torch.equal(v, w)]
    assert len(keys) == 1, (name, keys)
    return keys[0]


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def test_round_trip_identical(tiny_vit, tmp_path):
    pruner = _pruned(tiny_vit)
    pruner.ledger.add_metric("accuracy", 0.5, dataset="sklearn:digits")
    out = pruner.save_pretrained(tmp_path / "ck")
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", CONFIG_NAME, MASKS_NAME, LEDGER_NAME, SPECTRA_NAME, RECIPE_NAME,
            "README.md"} <= names  # fmt: skip
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    x = vit_inputs()
    ref = _logits(pruner.model, x)
    plain = AutoModelForImageClassification.from_pretrained(out).eval()
    assert torch.equal(_logits(plain, x), ref)
    back = MPPruner.from_pretrained(out)
    assert torch.equal(_logits(back.model, x), ref)
    assert back.masks == pruner.masks and back.masks.sha256() == pruner.masks.sha256()
    assert back.config == pruner.config
    assert back.spectra.to_dict(include_singular_values=True) == pruner.spectra.to_dict(include_singular_values=True)
    ledger = json.loads((tmp_path / "ck" / LEDGER_NAME).read_text())
    assert ledger["identity"]["mask_sha256"] == pruner.masks.sha256()
    assert ledger["identity"]["weights_sha256"] == {
        "model.safetensors": sha256_file(tmp_path / "ck" / "model.safetensors")
    }
    assert back.ledger.to_dict() == ledger
    # pruned entries are exact +0.0 on disk
    sd = load_file(tmp_path / "ck" / "model.safetensors")
    for name, m in pruner.masks.items():
        w = sd[_disk_key(sd, pruner.model, name)][~m]
        assert torch.all(w == 0) and not torch.signbit(w).any()


def _flip_mask_bit(path):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name][0] ^= 1
    save_file(tensors, str(path), metadata=meta)


def test_corrupted_mask_file_detected(tiny_vit, tmp_path):
    out = _pruned(tiny_vit, analyze=False).save_pretrained(tmp_path / "ck")
    _flip_mask_bit(os.path.join(out, MASKS_NAME))
    with pytest.raises(LedgerMismatchError, match="corrupted"):
        MPPruner.from_pretrained(out)
    with open(os.path.join(out, MASKS_NAME), "wb") as f:
        f.write(b"not a safetensors file")
    with pytest.raises(LedgerMismatchError, match="cannot read mask file"):
        MPPruner.from_pretrained(out)


def _tamper(path, model, name, where_mask, value):
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(path)
    w = sd[_disk_key(sd, model, name)]
    idx = where_mask.nonzero()[0]
    w[tuple(idx)] = value
    save_file(sd, str(path), metadata=meta)


def test_tampered_weights_detected_and_kept_zero_allowed(tiny_vit, tmp_path, caplog):
    pruner = _pruned(tiny_vit, analyze=False)
    out = pruner.save_pretrained(tmp_path / "ck")
    layer = "vit.layers.1.mlp.fc1"
    weights = os.path.join(out, "model.safetensors")
    _tamper(weights, pruner.model, layer, ~pruner.masks[layer], 0.25)  # a pruned entry comes back to life
    with pytest.raises(LedgerMismatchError, match=r"vit\.layers\.1\.mlp\.fc1 \(1 nonzero\)"):
        MPPruner.from_pretrained(out)
    # plain transformers is unaffected: it does not know about masks
    AutoModelForImageClassification.from_pretrained(out)
    p2 = _pruned(type(tiny_vit)(tiny_vit.config), analyze=False)
    out2 = p2.save_pretrained(tmp_path / "ck2")
    masks2 = Masks.load(os.path.join(out2, MASKS_NAME))
    _tamper(
        os.path.join(out2, "model.safetensors"), p2.model, layer, masks2[layer], 0.0
    )  # kept entry exactly 0: allowed
    caplog.set_level(logging.INFO, logger="hf_mpprune")
    with pytest.warns(MPPruneWarning, match="differ from the SHA-256 in the ledger"):
        back = MPPruner.from_pretrained(out2)
    assert back.masks == masks2 and "exactly 0" in caplog.text


def test_save_refuses_weights_that_break_masks_and_writes_nothing(tiny_vit, tmp_path):
    pruner = _pruned(tiny_vit, analyze=False)
    w = tiny_vit.get_submodule("vit.layers.0.mlp.fc1").weight
    with torch.no_grad():
        w[~pruner.masks["vit.layers.0.mlp.fc1"]] = 1.0
    with pytest.raises(LedgerMismatchError, match=r"vit\.layers\.0\.mlp\.fc1"):
        pruner.save_pretrained(tmp_path / "ck")
    assert os.listdir(tmp_path) == []


def test_atomic_save_keeps_previous_checkpoint(tiny_vit, tmp_path, monkeypatch):
    pruner = _pruned(tiny_vit, s=0.3, analyze=False)
    out = pruner.save_pretrained(tmp_path / "ck")
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    pruner.prune(sparsity=0.6)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Masks, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        pruner.save_pretrained(out)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp dir left behind
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
    monkeypatch.undo()
    pruner.save_pretrained(out)  # a later save replaces it completely
    assert MPPruner.from_pretrained(out).masks.sparsity() == pytest.approx(0.6, abs=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_stale_temp_dir_of_dead_writer_removed(tiny_vit, tmp_path):
    stale = tmp_path / ".ck.mpprune-tmp-999999999-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    _pruned(tiny_vit, analyze=False).save_pretrained(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_push_without_repo_id_fails_before_any_io(tiny_vit, monkeypatch):
    pruner = _pruned(tiny_vit, analyze=False)

    def boom(*a, **k):
        raise AssertionError("nothing may be written or contacted")

    monkeypatch.setattr(hub, "save_pretrained", boom)
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", boom)
    for bad in (None, "", "  ", "a/b/c"):
        with pytest.raises(ConfigError, match="repo_id"):
            pruner.push_to_hub(bad)
    with pytest.raises(TypeError):
        pruner.push_to_hub("org/name", True)  # everything after repo_id is keyword-only


def test_card_metadata_parses_cleanly_and_updates_keep_user_text(tiny_vit, tmp_path, caplog):
    pruner = MPPruner(tiny_vit)
    masks = {}
    for la in pruner.layers:  # a hand-built 2:4 mask: keep the 2 largest |w| of every 4 inputs
        m = la.matrix_view(la.weight.detach().abs())
        g = m.reshape(m.shape[0], -1, 4)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(2, dim=-1).indices, True)
        masks[la.name] = la.from_matrix(keep.reshape(m.shape))
    pruner.masks = Masks(masks, KeepPattern.parse("2:4"))
    pruner.masks.apply_(tiny_vit)
    pruner.ledger.add_step(method="hand-2:4", achieved_sparsity=pruner.masks.sparsity())
    pruner.ledger.add_step(kind="distill", trainer="test")
    pruner.ledger.add_metric("accuracy", 0.75, dataset="ylecun/mnist", stage="distilled")
    pruner.ledger.add_metric("accuracy", 0.8, dataset="ylecun/mnist", stage="base")
    out = pruner.save_pretrained(tmp_path / "ck")
    readme = os.path.join(out, "README.md")
    with open(readme, "a", encoding="utf-8") as f:
        f.write("\n## My notes\n\nUSER TEXT STAYS\n")
    pruner.save_pretrained(out)
    text = open(readme, encoding="utf-8").read()
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        card = ModelCard(text)
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert card.data.library_name == "transformers"
    assert {"hf-mpprune", "pruned", "sparse", "2:4", "semi-structured", "marchenko-pastur",
            "knowledge-distillation"} <= set(card.data.tags) and "unstructured" not in card.data.tags  # fmt: skip
    assert [r.metric_value for r in card.data.eval_results] == [0.75]  # base-stage numbers stay out of model-index
    assert text.count("USER TEXT STAYS") == 1 and text.count("hf-mpprune:begin") == 1
    assert "| vit.layers.0.mlp.fc1 | mlp | 128x64 | 0.5000 |" in text
    assert "ViTForImageClassification.from_pretrained(" in text


def test_unknown_method_in_checkpoint_still_loads_masks(tiny_vit, tmp_path):
    pruner = _pruned(tiny_vit, analyze=False)
    out = pruner.save_pretrained(tmp_path / "ck")
    cfg = json.loads(open(os.path.join(out, CONFIG_NAME)).read())
    cfg["method"] = "not-installed-here"
    with open(os.path.join(out, CONFIG_NAME), "w") as f:
        json.dump(cfg, f)
    with pytest.warns(MPPruneWarning, match="cannot restore the pruning config"):
        back = MPPruner.from_pretrained(out)
    assert back.config is None and back.masks == pruner.masks


def test_plain_module_is_refused(tmp_path):
    from tests.tiny_models import MLP

    with pytest.raises(ConfigError, match="PreTrainedModel"):
        MPPruner(MLP()).save_pretrained(tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_loaded_ledger_with_overlapping_splits_warns(tiny_vit, tmp_path):
    pruner = _pruned(tiny_vit, analyze=False)
    pruner.ledger.record_split("calibration", [1, 2, 3], dataset="d")
    pruner.ledger.record_split("evaluation", [7, 8], dataset="d")
    out = pruner.save_pretrained(tmp_path / "ck")
    path = os.path.join(out, LEDGER_NAME)
    d = json.loads(open(path).read())
    d["data"]["splits"]["evaluation"]["indices"] = [3, 7]
    with open(path, "w") as f:
        json.dump(d, f)
    with pytest.warns(MPPruneWarning, match="overlapping data splits"):
        MPPruner.from_pretrained(out)
