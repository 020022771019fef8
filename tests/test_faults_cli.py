"""Fault suite, CLI: every subcommand (analyze, prune, run, push, audit, bench, certify, demo) given bad input
prints one error line naming the bad value or file (no traceback unless -v), exits 2 for usage errors and 1 for
failures, prints nothing on stdout and writes or changes nothing (fingerprint of the whole workspace)."""

import os
import shutil
import subprocess
import sys

import pytest

from hf_mpprune import __version__
from hf_mpprune.cli.main import main
from hf_mpprune.core.constants import LEDGER_NAME, MASKS_NAME
from tests.fault_helpers import fingerprint, make_checkpoint, truncate


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A read-only workspace: a good checkpoint, damaged copies, a folder that is not a model, recipes."""
    root = tmp_path_factory.mktemp("ws")
    make_checkpoint(root / "good", analyze=False)
    for name, damage in {
        "trunc_weights": lambda p: truncate(p / "model.safetensors", 0.5),
        "no_masks": lambda p: os.remove(p / MASKS_NAME),
        "bad_ledger": lambda p: truncate(p / LEDGER_NAME, 0.5),
        "trunc_masks": lambda p: truncate(p / MASKS_NAME, 0.5),
    }.items():
        shutil.copytree(root / "good", root / name)
        damage(root / name)
    (root / "notamodel").mkdir()
    (root / "notamodel" / "data.csv").write_text("a,b\n1,2\n")
    recipes = {
        "float33.yaml": "model: {id: builtin:digits-vit, dtype: float33}\npruning: {method: magnitude}\n",
        "typo.yaml": "modle: {id: builtin:digits-vit}\npruning: {method: magnitude}\n",
        "broken.yaml": "model: {id: builtin:digits-vit\npruning: [\n",
        "nomethod.yaml": "model: {id: builtin:digits-vit}\npruning: {method: frobnicate, sparsity: 0.5}\n",
        "nodir.yaml": f"model: {{id: {root / 'absent' / 'model'}}}\npruning: {{method: magnitude, sparsity: 0.5}}\n",
        "badsparsity.yaml": "model: {id: builtin:digits-vit}\npruning: {method: magnitude, sparsity: 2}\n",
    }
    for name, text in recipes.items():
        (root / name).write_text(text)
    return root


def P(ws, *parts) -> str:
    return str(ws.joinpath(*parts))


# name: (argv given the workspace, exit code, text that must appear on stderr)
CASES = {
    "no_command": (lambda w: [], 2, "required"),
    "unknown_command": (lambda w: ["frobnicate"], 2, "frobnicate"),
    "analyze_missing_dir": (lambda w: ["analyze", P(w, "absent")], 2, "absent"),
    "analyze_not_a_model": (lambda w: ["analyze", P(w, "notamodel")], 1, "no config.json"),
    "analyze_truncated_weights": (lambda w: ["analyze", P(w, "trunc_weights")], 1, "model.safetensors"),
    "analyze_plot_without_out": (lambda w: ["analyze", P(w, "good"), "--plot"], 2, "--plot needs --out"),
    "analyze_no_layers": (lambda w: ["analyze", P(w, "good"), "--targets", "re:zzz"], 2, "re:zzz"),
    "analyze_bad_view": (lambda w: ["analyze", P(w, "good"), "--view", "diagonal"], 2, "'diagonal'"),
    "prune_unknown_method": (
        lambda w: ["prune", P(w, "good"), "--method", "nope", "--output", P(w, "o")],
        2,
        "'nope'",
    ),
    "prune_sparsity_range": (
        lambda w: ["prune", P(w, "good"), "--method", "magnitude", "--sparsity", "1.5", "--output", P(w, "o")],
        2,
        "1.5",
    ),  # fmt: skip
    "prune_pattern_letters": (
        lambda w: ["prune", P(w, "good"), "--method", "magnitude", "--pattern", "a:b", "--output", P(w, "o")],
        2,
        "'a:b'",
    ),  # fmt: skip
    "prune_wanda_no_calibration": (
        lambda w: ["prune", P(w, "good"), "--method", "wanda", "--output", P(w, "o")],
        2,
        "--calibration",
    ),  # fmt: skip
    "prune_reconstruct_no_calibration": (
        lambda w: ["prune", P(w, "good"), "--method", "magnitude", "--set", "reconstruct=true", "--output", P(w, "o")],
        2,
        "--calibration",
    ),  # fmt: skip
    "prune_zero_samples": (
        lambda w: ["prune", P(w, "good"), "--method", "wanda", "--samples", "0", "--output", P(w, "o")],
        2,
        "0 must be >= 1",
    ),  # fmt: skip
    "prune_set_no_equals": (
        lambda w: ["prune", P(w, "good"), "--method", "magnitude", "--set", "novalue", "--output", P(w, "o")],
        2,
        "'novalue'",
    ),  # fmt: skip
    "prune_set_unknown_key": (
        lambda w: ["prune", P(w, "good"), "--method", "magnitude", "--set", "foo=1", "--output", P(w, "o")],
        2,
        "'foo'",
    ),  # fmt: skip
    "prune_missing_model": (
        lambda w: ["prune", P(w, "absent"), "--method", "magnitude", "--output", P(w, "o")],
        2,
        "absent",
    ),  # fmt: skip
    "prune_damaged_ledger": (
        lambda w: ["prune", P(w, "bad_ledger"), "--method", "magnitude", "--output", P(w, "o")],
        1,
        LEDGER_NAME,
    ),  # fmt: skip
    "prune_deleted_masks": (
        lambda w: ["prune", P(w, "no_masks"), "--method", "magnitude", "--output", P(w, "o")],
        1,
        "allow_missing_masks=True",
    ),  # fmt: skip
    "run_missing_recipe": (lambda w: ["run", P(w, "nope.yaml")], 2, "nope.yaml"),
    "run_broken_yaml": (lambda w: ["run", P(w, "broken.yaml")], 2, "not valid YAML"),
    "run_dtype_float33": (lambda w: ["run", P(w, "float33.yaml"), "--output", P(w, "o")], 2, "float33"),
    "run_unknown_key": (lambda w: ["run", P(w, "typo.yaml")], 2, "'modle'"),
    "run_unknown_method": (lambda w: ["run", P(w, "nomethod.yaml")], 2, "'frobnicate'"),
    "run_model_dir_missing": (lambda w: ["run", P(w, "nodir.yaml"), "--output", P(w, "o")], 2, "absent"),
    "run_bad_sparsity": (lambda w: ["run", P(w, "badsparsity.yaml")], 2, "sparsity"),
    "push_empty_repo_id": (lambda w: ["push", P(w, "good"), "--repo-id", ""], 2, "repo_id"),
    "push_bad_repo_id": (lambda w: ["push", P(w, "good"), "--repo-id", "a/b/c"], 2, "'a/b/c'"),
    "push_missing_dir": (lambda w: ["push", P(w, "absent"), "--repo-id", "org/x"], 2, "absent"),
    "push_deleted_masks": (lambda w: ["push", P(w, "no_masks"), "--repo-id", "org/x"], 1, MASKS_NAME),
    "push_damaged_ledger": (lambda w: ["push", P(w, "bad_ledger"), "--repo-id", "org/x"], 1, LEDGER_NAME),
    "audit_missing_dir": (lambda w: ["audit", P(w, "absent")], 2, "absent"),
    "audit_illegal_pattern": (lambda w: ["audit", P(w, "good"), "--pattern", "3:2"], 2, "3:2"),
    "audit_truncated_masks": (lambda w: ["audit", P(w, "trunc_masks")], 1, MASKS_NAME),
    "audit_negative_tome": (lambda w: ["audit", P(w, "good"), "--tome", "-1"], 2, "-1 must be >= 0"),
    "audit_certificates_no_dense": (lambda w: ["audit", P(w, "good"), "--certificates"], 2, "--dense"),
    "bench_zero_batch": (lambda w: ["bench", P(w, "good"), "--batches", "0"], 2, "0 must be >= 1"),
    "bench_zero_reps": (lambda w: ["bench", P(w, "good"), "--reps", "0"], 2, "--reps"),
    "bench_negative_warmup": (lambda w: ["bench", P(w, "good"), "--warmup", "-1"], 2, "--warmup"),
    "bench_not_a_model": (lambda w: ["bench", P(w, "notamodel")], 1, "no config.json"),
    "certify_zero_samples": (
        lambda w: ["certify", P(w, "good"), "--dense", P(w, "good"), "--samples", "0"],
        2,
        "--samples",
    ),  # fmt: skip
    "certify_no_dense": (lambda w: ["certify", P(w, "good")], 2, "--dense"),
    "certify_dense_missing": (lambda w: ["certify", P(w, "good"), "--dense", P(w, "absent")], 2, "absent"),
    "certify_unknown_layer": (
        lambda w: ["certify", P(w, "good"), "--dense", P(w, "good"), "--layers", "nope"],
        2,
        "nope",
    ),  # fmt: skip
    "demo_negative_epochs": (lambda w: ["demo", "--epochs", "-1", "--out", P(w, "o")], 2, "--epochs"),
    "demo_missing_recipe": (
        lambda w: ["demo", "--recipes", P(w, "missing.yaml"), "--out", P(w, "o")],
        2,
        "missing.yaml",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_fault(case, ws, capsys):
    argv, code, text = CASES[case]
    args = argv(ws)
    before = fingerprint(ws)
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == code, (rc, err)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("usage:"):  # argparse: usage, then one error line
        assert lines[-1].startswith("hf-mpprune") and "error:" in lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith(f"hf-mpprune {args[0]}: error: "), err
    assert text in lines[-1], (text, err)
    assert fingerprint(ws) == before  # nothing written (no partial output dir), nothing damaged


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"hf-mpprune {__version__} (torch ")


def test_verbose_shows_the_traceback(ws, capsys):
    assert main(["-v", "analyze", P(ws, "trunc_weights")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "CheckpointError" in err and err.strip().splitlines()[-1].startswith("hf-mpprune")


def test_unexpected_exception_is_one_line_with_a_hint(ws, capsys, monkeypatch):

    def boom(args):
        raise ZeroDivisionError("division by zero")

    import hf_mpprune.cli.analyze as analyze_cli

    monkeypatch.setattr(analyze_cli, "run", boom)
    assert main(["analyze", P(ws, "good")]) == 1
    err = capsys.readouterr().err.strip()
    hint = "(unexpected: rerun with -v for the traceback and report it)"
    assert err == f"hf-mpprune analyze: error: ZeroDivisionError: division by zero {hint}"


def _ours(stderr: str) -> list[str]:
    """Our stderr lines (a venv's torchao build may print load warnings when transformers imports it)."""
    return [ln for ln in stderr.strip().splitlines() if ln.startswith(("hf-mpprune", "Traceback", "usage:"))]


def _subprocess(*argv, **env):
    full_env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "hf_mpprune.cli.main", *argv], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=120)  # fmt: skip


def test_real_process_usage_error(ws):
    before = fingerprint(ws)
    p = _subprocess("prune", P(ws, "absent"), "--method", "magnitude", "--output", P(ws, "o"))
    assert p.returncode == 2 and p.stdout == ""
    assert len(_ours(p.stderr)) == 1 and "absent" in _ours(p.stderr)[0] and "Traceback" not in p.stderr
    assert fingerprint(ws) == before
