"""Ledger superset: data-split hashes and disjointness, metrics, timings, seeds, and never a token."""

import hashlib
import json
import os

import pytest

from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.core.ledger import Ledger, indices_sha256, sha256_file, weights_sha256


def test_record_split_hashes_and_disjointness():
    led = Ledger()
    cal = led.record_split("calibration", [5, 3, 3, 9], dataset="sklearn:digits")
    assert cal["count"] == 3 and cal["indices"] == [3, 5, 9] and cal["sha256"] == indices_sha256([9, 5, 3])
    assert indices_sha256([1, 2]) != indices_sha256([1, 3])
    led.record_split("evaluation", range(100, 110), dataset="sklearn:digits")
    led.record_split("evaluation-other", [3, 5], role="other", dataset="sklearn:digits")  # role "other": unchecked
    led.record_split("selection", [3], dataset="other-dataset")  # a different dataset never overlaps
    with pytest.raises(ConfigError, match=r"'selection2' \(selection\) shares 2 example\(s\).*indices \[3, 5\]"):
        led.record_split("selection2", [1, 3, 5], role="selection", dataset="sklearn:digits")
    assert "selection2" not in led.data["splits"]  # nothing recorded on error
    led.check_disjoint()


def test_check_disjoint_after_reload_catches_edited_ledger():
    led = Ledger()
    led.record_split("calibration", [1, 2, 3], dataset="d")
    led.record_split("evaluation", [4, 5], dataset="d")
    d = json.loads(led.to_json())
    d["data"]["splits"]["evaluation"]["indices"] = [3, 4]
    with pytest.raises(ConfigError, match="must be disjoint"):
        Ledger.from_dict(d).check_disjoint()


def test_metrics_timings_seeds_and_file_hashes(tmp_path):
    led = Ledger()
    led.add_metric("accuracy", 0.9, dataset="d", stage="base")
    with pytest.raises(ConfigError, match="must be a number"):
        led.add_metric("accuracy", "high", dataset="d")
    led.add_timing("prune", 1.25)
    led.add_timing("prune", 0.5)
    led.seeds["recipe"] = 3
    assert led.timings == {"prune": 1.75} and led.metrics[0]["stage"] == "base"
    (tmp_path / "a.safetensors").write_bytes(b"abc")
    (tmp_path / "mpprune_masks.safetensors").write_bytes(b"zz")
    assert sha256_file(tmp_path / "a.safetensors") == hashlib.sha256(b"abc").hexdigest()
    assert weights_sha256(tmp_path, exclude=("mpprune_masks.safetensors",)) == {
        "a.safetensors": hashlib.sha256(b"abc").hexdigest()
    }
    back = Ledger.from_dict(json.loads(led.to_json()))
    assert back == led


def test_ledger_identity_and_never_a_token(tiny_vit, tmp_path, monkeypatch):
    secret = "hf_SECRETtoken_do_not_write_42"
    monkeypatch.setenv("HF_TOKEN", secret)
    tiny_vit.save_pretrained(tmp_path / "base")
    pruner = MPPruner.from_pretrained(tmp_path / "base", PruningConfig("magnitude", 0.4))
    ident = pruner.ledger.identity
    assert ident["base_model"] == str(tmp_path / "base")
    assert ident["base_weights_sha256"] == {"model.safetensors": sha256_file(tmp_path / "base" / "model.safetensors")}
    assert {"hf_mpprune", "torch", "transformers", "huggingface_hub"} <= set(ident)
    pruner.ledger.identity["hub_token"] = secret  # even a buggy caller cannot get it into the file
    pruner.prune()
    out = pruner.save_pretrained(tmp_path / "ck")
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as f:
            assert secret.encode() not in f.read(), name
    ledger = json.loads(open(os.path.join(out, "mpprune_ledger.json")).read())
    assert "hub_token" not in ledger["identity"] and ledger["steps"][0]["achieved_sparsity"] == pytest.approx(
        0.4, abs=1e-4
    )
    assert set(ledger) >= {"identity", "registry", "data", "spectral", "steps", "audits", "metrics", "timings",
                           "seeds", "permutations"}  # fmt: skip
