"""`make demo` / `python -m hf_mpprune.demo`: run the offline recipes shipped in `recipes/` through
the same recipe runner and data layer as a user's recipe, print a before/after table row by row, and write
checkpoints with ledgers, cards and spectra plots under `./mpprune-demo/`.

The builtins are ordinary models and datasets to the runner: `builtin:digits-vit` is a folder with the small digits
ViT and its `ViTImageProcessor` (trained once with `transformers.Trainer`, epochs and validation accuracy logged,
then cached), `builtin:digits` an image `datasets.DatasetDict`, `builtin:minilm` the all-MiniLM-L6-v2 folder and
`builtin:minilm-text` a text dataset (`hf_mpprune.builtins`). Works from an installed wheel (recipes are package
data).
"""

import argparse
import glob
import logging
import os
import sys
import time

import torch

from ..core.errors import ConfigError
from ..recipes.runner import run_recipe
from ..recipes.schema import LIBRARY, load_recipe, recipe_path
from .args import nonnegative_int


logger = logging.getLogger(__name__)


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


def register(sub) -> None:
    p = sub.add_parser("demo")
    p.add_argument("--out", default="mpprune-demo", help="folder for the demo checkpoints")
    p.add_argument("--epochs", type=nonnegative_int, default=20, help="dense training epochs of the digits ViT")
    p.add_argument(
        "--recipes", nargs="*", default=None, help="recipe files or shipped recipe names (default: the offline ones)"
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    argv = ["--out", args.out, "--epochs", str(args.epochs)]
    if args.recipes is not None:
        for r in args.recipes:  # a file, or a shipped recipe by name; ConfigError lists the shipped ones
            recipe_path(r)
        argv += ["--recipes", *args.recipes]
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="mpprune-demo")
    ap.add_argument("--epochs", type=int, default=20, help="dense training epochs of the digits ViT (cached)")
    ap.add_argument("--recipes", nargs="*", default=None, help="recipe files (default: the offline shipped ones)")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)  # a program, not a library: tiny-model CPU training is several times faster
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    paths = args.recipes or [os.path.join(LIBRARY, n) for n in _OFFLINE]
    _say(f"hf-mpprune demo: {len(paths)} recipes -> {args.out}/ (the first one trains the digits ViT, {args.epochs} "
         "epochs, logged below; later runs reuse it)")  # fmt: skip
    lines = ["| recipe | metric before | metric after | sparsity | MACs ratio | status |", "|---|---|---|---|---|---|"]
    _say("\n".join(lines))
    for i, path in enumerate(paths, 1):
        name = os.path.splitext(os.path.basename(path))[0]
        _say(f"[{i}/{len(paths)}] {name} ({time.perf_counter() - t0:.0f} s)", err=True)
        recipe = load_recipe(path, [f"model.train_epochs={args.epochs}"])
        try:
            result = run_recipe(
                recipe, output_dir=os.path.join(args.out, name), cache_dir=os.path.join(args.out, ".cache")
            )
            result["status"] = "ok"
        except ConfigError as e:  # e.g. a method that is not installed on this branch
            logger.warning("skipping %s: %s", name, e)
            result = {"status": f"skipped: {str(e).split(';')[0]}"}
        lines.append(_row(name, result))
        _say(lines[-1])
    cards = sorted(glob.glob(os.path.join(args.out, "*", "README.md")))
    _say("\n".join(["", *lines, "", f"checkpoints, ledgers, cards and spectra plots under {args.out}/ "
                    f"({len(cards)} checkpoints)", f"total {time.perf_counter() - t0:.1f} s"]))  # fmt: skip
    return 0


def _say(text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


if __name__ == "__main__":
    sys.exit(main())
