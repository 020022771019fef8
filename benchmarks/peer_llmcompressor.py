"""The peer: llm-compressor's `oneshot` + `SparseGPTModifier` on the MiniLM protocol. Runs INSIDE the peer's own
venv (`benchmarks/peer_venv.sh`, llm-compressor 0.14.0.1 pins transformers 5.15-5.17), never imports hf_mpprune.

The driver (`benchmarks/bench_minilm_issue17.py`) writes the exact calibration batches it gives our pruner to
`--batches` (torch.save of a list of {input_ids, token_type_ids, attention_mask} dicts); this script feeds the same
batches as a DataLoader (batch_size=None: one dict per step), prunes the 36 encoder Linears (pooler ignored) with
`sequential_targets=["BertLayer"]`, and saves the pruned encoder weights (`--out`, safetensors) for the driver to
score with the same embedding metric. Prints one JSON line: seconds inside `oneshot`, versions, threads.
Decoder LMs (issue 23, `bench_decoder.py`): `--model-class causal-lm` loads `AutoModelForCausalLM`, with e.g.
`--sequential-target LlamaDecoderLayer --prefix model.layers. --ignore "re:.*lm_head"`.

  /work/peer-venv/bin/python benchmarks/peer_llmcompressor.py --model DIR --batches b.pt --sparsity 0.5 --out w.st
"""

import argparse
import json
import os
import resource
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--batches", required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default="0:0", help='mask_structure, e.g. "2:4" (k:n = k kept of n); 0:0 unstructured')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sequential-target", default="BertLayer", help="the block class (ViT: ViTLayer)")
    p.add_argument("--prefix", default="encoder.", help="Linears under this prefix are saved for scoring")
    p.add_argument("--ignore", default="re:.*pooler.*", help="llm-compressor ignore pattern")
    p.add_argument(
        "--model-class",
        choices=["auto", "causal-lm"],
        default="auto",
        help="AutoModel (encoders, ViT) or AutoModelForCausalLM (decoder LMs)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import compressed_tensors
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from llmcompressor.version import __version__ as llmc_version
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from transformers import AutoModel, AutoModelForCausalLM

    batches = torch.load(args.batches, weights_only=True)  # a list of dicts of tensors written by our driver
    auto = AutoModelForCausalLM if args.model_class == "causal-lm" else AutoModel
    model = auto.from_pretrained(args.model, dtype=torch.float32).eval()
    sparsity = args.sparsity
    if args.pattern != "0:0":
        k, n = (int(v) for v in args.pattern.split(":"))
        sparsity = 1.0 - k / n
    recipe = SparseGPTModifier(
        sparsity=sparsity,
        mask_structure=args.pattern,
        block_size=128,
        dampening_frac=0.01,
        targets=["Linear"],
        ignore=[args.ignore],
    )
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(
        model=model,
        dataset=loader,
        recipe=recipe,
        num_calibration_samples=sum(int(next(iter(b.values())).shape[0]) for b in batches),
        sequential_targets=[args.sequential_target],
        pipeline="sequential",
    )
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    weights = {
        n + ".weight": m.weight.detach().contiguous().clone()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith(args.prefix)
    }
    save_file(weights, args.out)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    print(
        json.dumps(
            {
                "peer": "llmcompressor",
                "seconds": round(secs, 3),
                "cpu_seconds": round(cpu, 3),
                "layers": len(weights),
                "achieved": zeros / total,
                "llmcompressor": llmc_version,
                "compressed_tensors": compressed_tensors.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
