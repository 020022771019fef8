"""The console script: analyze a local checkpoint to JSON, markdown and plots; clear errors."""

import json

from hf_mpprune.cli.main import main


def test_analyze_cli(tiny_vit, tmp_path, capsys):
    tiny_vit.save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "m"), "--out", str(out), "--plot", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["layers"]) == 14
    assert (out / "spectra.json").exists() and (out / "spectra.md").exists() and (out / "overview.png").exists()
    assert len(list((out / "layers").glob("*.png"))) == 14


def test_analyze_cli_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no model directory" in capsys.readouterr().err
    assert main(["analyze", "org/not-cached"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_prune_cli_samples_reach_kn_methods(tiny_vit, tmp_path):
    """`--samples N` is the calibration size of every calibrated method, k:n ones included (one field name)."""
    src, out = tmp_path / "vit", tmp_path / "cast"
    tiny_vit.save_pretrained(src)
    argv = ["prune", str(src), "--method", "cast", "--pattern", "2:4", "--calibration", "random", "--samples", "6"]
    assert main([*argv, "--output", str(out)]) == 0
    step = json.loads((out / "mpprune_ledger.json").read_text())["steps"][-1]
    assert step["calibration"]["num_samples"] == 6
    assert step["config"]["calibration_samples"] == 6
