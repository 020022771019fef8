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
