"""Every benchmark script parses its arguments (`--help`, in-process), and the ones with a tiny mode write their
results: `gpu_check.py --dry-run` (the whole `make gpu-check` path without CUDA calls) and the certificate benchmark at
toy size (the others train or time real models: minutes). New scripts under benchmarks/ are picked up by the glob."""

import glob
import importlib.util
import json
import os
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))


def _load(path: str):
    name = "bench_under_test_" + os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_every_benchmark_parses_its_arguments(path, monkeypatch, capsys):
    module = _load(path)
    if not hasattr(module, "main"):  # a helper module of other scripts (peer_run.py)
        assert module.__doc__ and [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        return
    monkeypatch.setattr(sys, "argv", [path, "--help"])
    with pytest.raises(SystemExit) as info:
        module.main()
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def _run(name: str, argv: list[str], monkeypatch):
    module = _load(os.path.join(ROOT, "benchmarks", name))
    monkeypatch.setattr(sys, "argv", [name, *argv])
    return module.main(argv) if name == "gpu_check.py" else module.main()


def test_gpu_check_dry_run_writes_its_report(tmp_path, monkeypatch, capsys):
    """`make gpu-check` without CUDA calls: the GPU tests are collected, ViT (± ToMe) and BERT stand-ins run the
    whole speed-audit path (bf16, autocast, 2:4 checks and layout round trip), JSON and Markdown are written."""
    assert _run("gpu_check.py", ["--out", str(tmp_path), "--dry-run"], monkeypatch) == 0
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (
        out["stamps"]["dry_run"] and out["pytest_gpu"]["rc"] == 0 and "tests collected" in out["pytest_gpu"]["summary"]
    )
    cases = [(c["model"], c["tome_r"]) for c in out["cases"]]
    assert cases == [("vit-b16", 0), ("vit-b16", 8), ("bert-base", 0)]
    for c in out["cases"]:
        rep = c["report"]
        assert (
            rep["errors"] == {}
            and rep["conversion"]["backend"].startswith("dry-run")
            and rep["conversion"]["converted"]
        )
        assert {t["batch"] for t in rep["timings"]} == {1, 2}
        assert rep["ratios"] and all(r["speedup"] is None and "dry run" in r["note"] for r in rep["ratios"])
    vit, vit_tome = out["cases"][0]["macs"], out["cases"][1]["macs"]  # both against the dense model without ToMe
    assert vit_tome["dense_macs"] == vit["dense_macs"] and vit_tome["ratio"] < vit["ratio"] < 1
    assert "# GPU check (dry run" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_overhead_dry_run_writes_every_section(tmp_path, monkeypatch):
    """The H200 2:4 diagnosis script on CPU: each Linear shape and batch, the model rows, the bias rows and the
    profiler table, without CUDA graphs (CPU) and with identical dense / "sparse" outputs (weights stay dense)."""
    assert _run("gpu_overhead.py", ["--out", str(tmp_path), "--dry-run", "--reps", "1"], monkeypatch) == 0
    out = json.loads((tmp_path / "gpu_overhead.json").read_text())
    assert out["stamps"]["dry_run"] and {(r["shape"], r["variant"]) for r in out["linear"]} == {
        (s, v) for s in ("768x768", "3072x768", "768x3072") for v in ("dense_eager", "sparse_eager")
    }
    assert all(r["max_abs_diff"] == 0 for r in out["linear"]) and out["model"][0]["converted"] > 0
    assert {r["variant"] for r in out["bias"]} == {"dense_bias_3d", "sparse_bias_3d", "sparse_bias_2d", "sparse_2d"}
    assert "aten::linear" in out["profile"] and any("_cslt_sparse_mm(" in ln for ln in out["torch_cusparselt_source"])


def test_certificates_tiny_run_writes_its_rows(tmp_path, monkeypatch):
    out = tmp_path / "cert.json"
    _run("bench_certificates.py", ["--masks", "2", "--draws", "4", "--seeds", "0", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and {r["seed"] for r in rows} == {0}
