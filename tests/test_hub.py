"""Hub round trips on 127.0.0.1 (no network): upload through the commit API of a stdlib test server
(`tests/hub_server.py`), and download through a real third-party Hub server (`olah`). Clients run in a
subprocess with HF_ENDPOINT / HF_HUB_OFFLINE=0 / HF_HOME / HF_TOKEN set before huggingface_hub is imported."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.constants import LEDGER_NAME, MASKS_NAME
from tests.hub_server import HubServer
from tests.tiny_models import tiny_vit, vit_inputs


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "hf_dummyTOKEN0123456789secret"


def _client(tmp_path, endpoint: str, *args: str, timeout: float = 60) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(
        HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1",
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hub_client", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def _no_token_anywhere(root) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), f"token written to {os.path.join(dirpath, name)}"


@pytest.mark.slow  # a local Hub server and subprocess clients (~30 s): make test-all
def test_push_to_local_hub_and_pull_back(tmp_path):
    with HubServer() as hub:
        out = _client(tmp_path, hub.url, "push")
        files = hub.files("org/pruned")
        pr_files = hub.files("org/pruned", "refs/pr/1")
        commits = list(hub.commits)
        auth = [h.get("authorization") for _, p, h in hub.log if p.endswith("/preupload/main")]
    # three pushes + one user card edit = four commits; each push is ONE commit with weights, sidecars and card
    pushes = [c for c in commits if c["summary"] != "user edits the card"]
    assert [c["summary"] for c in pushes] == ["first push", "second push", "as a PR"]
    assert pushes[0]["ops"] >= 7 and pushes[2]["revision"] == "refs/pr/1" and out["pr_url"]
    assert out["first_oid"] != out["second_oid"]
    for name in ("config.json", "model.safetensors", "mpprune_config.json", MASKS_NAME, LEDGER_NAME,
                 "mpprune_spectra.json", "recipe.yaml", "README.md"):  # fmt: skip
        assert name in files and name in pr_files, name
    # the card: parsed by huggingface_hub, our metadata, user text kept across the second push
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers" and "hf-mpprune" in card.data.tags
    assert card.data.eval_results[0].metric_value == 0.875 and card.data.eval_results[0].dataset_type == "ylecun/mnist"
    assert "KEEP-THIS-USER-TEXT" in card.text and card.text.count("hf-mpprune:begin") == 1
    # ledger hash = the masks actually uploaded = what came back
    ledger = json.loads(files[LEDGER_NAME])
    assert ledger["identity"]["mask_sha256"] == out["expected_mask_sha256"] == out["mask_sha256"]
    assert out["pruner_equal"] and out["plain_equal"] and out["sparsity"] == 0.5 and out["spectra_rows"] == 14
    # the token authenticates requests but is never stored: not in the repo, not in the client's files
    assert auth and all(a == f"Bearer {TOKEN}" for a in auth)
    assert not any(TOKEN.encode() in data for data in files.values())
    _no_token_anywhere(tmp_path)


@pytest.mark.slow  # a local Hub server and a subprocess client (~20 s): make test-all
def test_push_a_pruned_causal_lm_and_load_it_with_plain_transformers(tmp_path):
    with HubServer() as hub:
        out = _client(tmp_path, hub.url, "push-lm")
        files = hub.files("org/pruned-lm")
    assert {"config.json", "model.safetensors", MASKS_NAME, LEDGER_NAME, "tokenizer.json", "README.md"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "text-generation" and card.data.eval_results[0].metric_type == "perplexity"
    assert out["plain_equal"] and out["pruner_equal"] and out["tokenizer_equal"]
    assert out["mask_sha256"] == out["expected_mask_sha256"] and out["sequential_path"] == "blocks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, deadline_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        assert proc.poll() is None, "olah exited during start-up"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"olah did not answer {url} within {deadline_s} s")


def _mirror_checkpoint(tmp_path):
    """A pruned, analysed checkpoint committed to a git repo under mirrors/models/org/mirrored."""
    pruner = MPPruner(tiny_vit(), PruningConfig("magnitude", 0.6))
    pruner.analyze(progress=False)
    pruner.prune()
    repo = tmp_path / "mirrors" / "models" / "org" / "mirrored"
    pruner.save_pretrained(repo)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "pruned checkpoint"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True, timeout=30)
    x = vit_inputs()["pixel_values"]
    with torch.no_grad():
        save_file(
            {"pixel_values": x, "logits": pruner.model(pixel_values=x).logits}, tmp_path / "expected.safetensors"
        )
    return pruner


@pytest.mark.slow  # a real olah mirror server (~40 s): make test-all
@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to build an olah mirror")
def test_download_through_olah(tmp_path):
    pytest.importorskip("olah", reason="olah is in the dev extra: pip install -e .[dev]")
    port = _free_port()
    cfg = {
        "basic": {
            "host": "127.0.0.1", "port": port, "repos-path": str(tmp_path / "olah_repos"),
            "mirrors-path": [str(tmp_path / "mirrors")], "mirror-netloc": f"127.0.0.1:{port}",
            "mirror-lfs-netloc": f"127.0.0.1:{port}",
        },
        "accessibility": {"offline": True},
    }  # fmt: skip
    (tmp_path / "mirrors").mkdir()
    (tmp_path / "olah.toml").write_text(_toml(cfg))
    olah = [sys.executable, "-c", "import sys; from olah.server import cli; sys.argv[0] = 'olah-cli'; cli()"]
    proc = subprocess.Popen(
        [*olah, "-c", str(tmp_path / "olah.toml")], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pruner = _mirror_checkpoint(tmp_path)  # built while olah starts up (it reads mirrors per request)
        _wait_ready(f"http://127.0.0.1:{port}/api/models/org/mirrored/revision/main", proc)
        out = _client(
            tmp_path, f"http://127.0.0.1:{port}", "load", "org/mirrored", str(tmp_path / "expected.safetensors")
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert out["pruner_equal"] and out["plain_equal"]
    assert out["mask_sha256"] == out["ledger_mask_sha256"] == pruner.masks.sha256()
    assert out["sparsity"] == pruner.masks.sparsity() and out["spectra_rows"] == len(pruner.spectra)


def _toml(cfg: dict) -> str:
    """The two-level TOML olah reads (strings, ints, bools, string lists); yaml/json quoting is TOML-compatible."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else yaml.safe_dump(v).split()[0]}")
        lines.append("")
    return "\n".join(lines)
