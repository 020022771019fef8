import json

import torch

from hf_mpprune.cli.main import main
from hf_mpprune.core.constants import MASKS_NAME
from tests.kn_helpers import two_four_masks


def _saved(model, tmp_path, sidecar):
    masks = two_four_masks(model)
    masks.apply_(model)
    model.save_pretrained(tmp_path)
    if sidecar:
        masks.save(tmp_path / MASKS_NAME)
    return masks


def test_audit_json(tiny_vit, tmp_path, capsys):
    _saved(tiny_vit, tmp_path, sidecar=True)
    assert main(["audit", str(tmp_path), "--json", "--tome", "4", "--out", str(tmp_path / "a.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["masks_sidecar"] and out["tome"]["r"] == 4
    assert out["legality"]["legal"] == 12  # 2 blocks x 6 Linears; the patch conv and head are dense
    macs = out["macs"]
    assert macs["eligible_macs"] > 0 and macs["sparse_macs"] == macs["dense_macs"] - macs["eligible_macs"] // 2
    assert json.loads((tmp_path / "a.json").read_text())["macs"]["dense_macs"] == macs["dense_macs"]


def test_bench_cpu_claims_no_speedup(tiny_vit, tmp_path, capsys):
    _saved(tiny_vit, tmp_path, sidecar=False)
    argv = ["bench", str(tmp_path), "--device", "cpu", "--batches", "1", "2", "--reps", "3", "--warmup", "1"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["variant"] for t in out["timings"]] == ["dense_fp32", "dense_fp32"]
    assert out["ratios"] == [] and "no speedup claimed" in out["notes"][0]
    assert all(t["median_ms"] > 0 and t["iqr_ms"] >= 0 for t in out["timings"])


def test_audit_with_certificates(tiny_vit, tmp_path, capsys):
    import copy

    dense = copy.deepcopy(tiny_vit)
    dense.save_pretrained(tmp_path / "dense")
    with torch.no_grad():
        tiny_vit.classifier.weight[:, ::2] = 0.0  # prune the head too: the exact (L_s = 1) certificate applies there
    _saved(tiny_vit, tmp_path / "pruned", sidecar=True)
    assert main(["audit", str(tmp_path / "pruned"), "--certificates"]) == 2
    assert "--dense" in capsys.readouterr().err
    argv = ["audit", str(tmp_path / "pruned"), "--certificates", "--dense", str(tmp_path / "dense"), "--samples", "8"]
    assert main(argv) == 0  # head estimator: a valid bound, so 0 violations -> exit 0
    out = capsys.readouterr().out
    assert "certified for layer(s)" in out and "| classifier |" in out
