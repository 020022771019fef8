"""Client side of the Hub tests, run in a subprocess so HF_ENDPOINT / HF_HUB_OFFLINE=0 are set before
huggingface_hub is imported. Prints one JSON line with what it observed.

    python -m tests.hub_client push  OUT_JSON             # push to the stdlib server, pull back, compare
    python -m tests.hub_client push-lm                    # the same for a pruned causal LM and its tokenizer
    python -m tests.hub_client load  REPO_ID EXPECTED.safetensors   # pull from a Hub (olah), compare logits
"""

import json
import sys

import torch
from safetensors.torch import load_file


def _logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def load_and_compare(repo_id: str, expected_path: str) -> dict:
    from transformers import AutoModelForImageClassification

    from hf_mpprune import MPPruner

    exp = load_file(expected_path)
    pruner = MPPruner.from_pretrained(repo_id)  # downloads the snapshot through the server under test
    # Plain transformers on the files that came through the server. `local_files_only`: with peft installed,
    # transformers also probes the Hub for an adapter_config.json, which olah answers with 401 (not 404) for a
    # file the mirror lacks, and transformers then raises; the weights themselves are what this test checks.
    plain = AutoModelForImageClassification.from_pretrained(repo_id, local_files_only=True).eval()
    return {
        "pruner_equal": bool(torch.equal(_logits(pruner.model, exp["pixel_values"]), exp["logits"])),
        "plain_equal": bool(torch.equal(_logits(plain, exp["pixel_values"]), exp["logits"])),
        "sparsity": pruner.masks.sparsity() if pruner.masks is not None else None,
        "mask_sha256": pruner.masks.sha256() if pruner.masks is not None else None,
        "ledger_mask_sha256": pruner.ledger.identity.get("mask_sha256"),
        "spectra_rows": len(pruner.spectra) if pruner.spectra is not None else 0,
    }


def push_pull() -> dict:
    from huggingface_hub import HfApi

    from hf_mpprune import MPPruner, PruningConfig
    from tests.tiny_models import tiny_vit, vit_inputs

    pruner = MPPruner(tiny_vit(), PruningConfig("magnitude", 0.5))
    pruner.analyze(progress=False)
    pruner.prune()
    pruner.ledger.add_metric("accuracy", 0.875, dataset="ylecun/mnist", split="test")
    x = vit_inputs()["pixel_values"]
    first = pruner.push_to_hub("org/pruned", commit_message="first push")
    api = HfApi()
    readme = api.hf_hub_download("org/pruned", "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    api.upload_file(
        path_or_fileobj=(text + "\n## Notes from the author\n\nKEEP-THIS-USER-TEXT\n").encode(),
        path_in_repo="README.md", repo_id="org/pruned", commit_message="user edits the card",
    )  # fmt: skip
    second = pruner.push_to_hub("org/pruned", commit_message="second push")
    pr = pruner.push_to_hub("org/pruned", create_pr=True, commit_message="as a PR")
    from tempfile import NamedTemporaryFile

    from safetensors.torch import save_file

    with NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
        save_file({"pixel_values": x, "logits": _logits(pruner.model, x)}, f.name)
        out = load_and_compare("org/pruned", f.name)
    out.update(
        first_oid=first.oid, second_oid=second.oid, pr_url=pr.pr_url, expected_mask_sha256=pruner.masks.sha256()
    )
    return out


def push_pull_lm() -> dict:
    """A tiny Llama pruned by SparseGPT on token windows, pushed with its tokenizer and a perplexity metric, pulled
    back by plain transformers (model and tokenizer) and by MPPruner (masks verified)."""
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_mpprune import MPPruner, PruningConfig
    from tests.tiny_models import lm_inputs, tiny_llama, tiny_lm_tokenizer

    tok = tiny_lm_tokenizer()
    pruner = MPPruner(tiny_llama(vocab_size=len(tok)), PruningConfig("sparsegpt", 0.5))
    torch.manual_seed(1)
    pruner.prune(calibration=[lm_inputs(batch=4, seq=16, vocab=len(tok)) for _ in range(2)])
    pruner.ledger.add_metric("perplexity", 123.4, dataset="Salesforce/wikitext", split="test", task="text-generation")
    pruner.push_to_hub("org/pruned-lm", commit_message="pruned decoder", processor=tok)
    local = snapshot_download("org/pruned-lm")
    x = tok(["the old farmer repaired the broken bicycle"], return_tensors="pt")
    with torch.no_grad():
        want = pruner.model(**x).logits
        plain = AutoModelForCausalLM.from_pretrained(local, local_files_only=True).eval()
        back = MPPruner.from_pretrained(local)
        return {
            "plain_equal": bool(torch.equal(plain(**x).logits, want)),
            "pruner_equal": bool(torch.equal(back.model.eval()(**x).logits, want)),
            "mask_sha256": back.masks.sha256(), "expected_mask_sha256": pruner.masks.sha256(),
            "tokenizer_equal": AutoTokenizer.from_pretrained(local)("a b")["input_ids"] == tok("a b")["input_ids"],
            "sequential_path": pruner.ledger.steps[-1]["time_split"]["path"],
        }  # fmt: skip


def main(argv: list[str]) -> int:
    if argv[0] == "push":
        result = push_pull()
    elif argv[0] == "push-lm":
        result = push_pull_lm()
    elif argv[0] == "load":
        result = load_and_compare(argv[1], argv[2])
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
