"""The `mpprune` block in config.json survives a plain transformers load/save; MPPruner recovers masks from it."""

import json
import os

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from hf_mpprune import KeepPattern, MPPruner, MPPruneWarning, PruningConfig, __version__
from hf_mpprune.core.constants import LEDGER_NAME, MASKS_NAME
from hf_mpprune.core.ledger import sha256_file


def _tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return BertModel(cfg).eval()


@pytest.fixture
def saved(tmp_path):
    pruner = MPPruner(_tiny_bert(), PruningConfig("magnitude", 0.5, pattern=KeepPattern(2, 4)))
    pruner.prune()
    out = pruner.save_pretrained(tmp_path / "pruned")
    return pruner, out


def _block(directory):
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return json.load(f).get("mpprune")


def test_save_writes_the_block(saved):
    pruner, out = saved
    block = _block(out)
    assert block["pattern"] == "2:4" and block["method"] == "magnitude" and block["hf_mpprune_version"] == __version__
    assert block["mask_sha256"] == pruner.masks.sha256() == pruner.ledger.identity["mask_sha256"]
    assert block["ledger_sha256"] == sha256_file(os.path.join(out, LEDGER_NAME))
    assert block["sparsity"] == pytest.approx(pruner.masks.sparsity(), abs=1e-8)
    assert block["layers"] == pruner.masks.names


def test_plain_transformers_round_trip_keeps_block_and_pruner_recovers_masks(saved, tmp_path):
    pruner, out = saved
    copy = tmp_path / "copy"
    AutoModel.from_pretrained(out).save_pretrained(copy)  # plain transformers: the sidecars are lost
    assert not (copy / MASKS_NAME).exists() and not (copy / LEDGER_NAME).exists()
    assert _block(copy) == _block(out)
    with pytest.warns(MPPruneWarning, match="re-saved with plain transformers"):
        loaded = MPPruner.from_pretrained(copy)
    assert loaded.masks is not None and loaded.masks == pruner.masks and loaded.masks.pattern == KeepPattern(2, 4)
    assert loaded.masks.sha256() == _block(out)["mask_sha256"] and loaded.layers.names == pruner.masks.names
    # and the recovered pruner saves a full checkpoint again
    again = loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / MASKS_NAME).exists() and _block(again)["mask_sha256"] == _block(out)["mask_sha256"]


def test_changed_weights_are_not_recovered(saved, tmp_path):
    _, out = saved
    model = AutoModel.from_pretrained(out)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight[0, 0] = (
            0.0 if model.encoder.layer[0].intermediate.dense.weight[0, 0] != 0 else 1.0
        )
    model.save_pretrained(tmp_path / "edited")
    with pytest.warns(MPPruneWarning) as record:
        loaded = MPPruner.from_pretrained(tmp_path / "edited")
    messages = [str(w.message) for w in record]
    assert any("re-saved with plain transformers" in m for m in messages)
    assert any("no masks restored" in m for m in messages)
    assert all(w.filename == __file__ for w in record)  # the warnings point at the caller
    assert loaded.masks is None and loaded.ledger.identity["config_block"]["mask_sha256"] == _block(out)["mask_sha256"]


def test_dense_save_has_no_block_and_removes_a_stale_one(tmp_path):
    model = _tiny_bert()
    model.config.mpprune = {"mask_sha256": "stale", "layers": ["encoder.layer.0.output.dense"]}
    MPPruner(model).save_pretrained(tmp_path / "dense")
    assert _block(tmp_path / "dense") is None
