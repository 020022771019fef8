"""`hf-mpprune prune MODEL --method M --sparsity S [--pattern k:n] --dataset SPEC [--split S] [--samples N]
--output DIR [--push-to-hub REPO]`.

`--dataset` takes any dataset spec of `hf_mpprune.data` (Hub id, `save_to_disk` folder, imagefolder, json / jsonl /
csv / parquet file, `builtin:digits`, `builtin:minilm-text`); the run goes through the recipe runner (same data
checks, ledger provenance, card). `--calibration digits|minilm-sentences|random` keeps the quick offline inputs.
"""

import dataclasses
import json
import logging
import sys

from transformers import AutoTokenizer

from ..builtins import sources as cs
from ..core.config import PruningConfig
from ..core.errors import ConfigError
from ..core.registry import get_method
from ..hub.target import check_save_target
from ..pruner import MPPruner
from ..recipes.runner import execute
from ..recipes.schema import recipe_from_dict
from .args import positive_int


logger = logging.getLogger(__name__)

CALIBRATION_SOURCES = ("digits", "minilm-sentences", "random")


def register(sub) -> None:
    p = sub.add_parser("prune")
    p.add_argument("model", help="local model directory or Hub id (offline: must be in the HF cache)")
    p.add_argument("--method", required=True, help="registered method name (see hf_mpprune.list_methods())")
    p.add_argument("--sparsity", type=float, default=0.5, help="target fraction of zero weights in [0, 1)")
    p.add_argument("--pattern", default=None, help="k:n semi-structured pattern, k kept of every n (e.g. 2:4)")
    p.add_argument(
        "--calibration", choices=CALIBRATION_SOURCES, default=None,
        help="offline calibration inputs: digits (vision), minilm-sentences (text, needs the model's tokenizer), "
        "random; required by calibration-based methods",
    )  # fmt: skip
    p.add_argument(
        "--dataset", default=None, help="calibration dataset spec: Hub id, folder, data file or builtin:..."
    )
    p.add_argument("--split", default="train", help="split expression of --dataset, e.g. 'train[:5%%]'")
    p.add_argument("--dataset-config", default=None, help="dataset configuration name (Hub datasets)")
    p.add_argument("--dataset-revision", default=None, help="dataset revision (Hub datasets)")
    for col in ("image", "text", "text-pair", "label"):
        p.add_argument(f"--{col}-column", default=None, help=f"{col} column of --dataset (default: detected)")
    p.add_argument("--eval-split", default=None, help="also evaluate on this split of --dataset (e.g. validation)")
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="text: tokenizer truncation; decoder LMs: token window length (default: context, <= 2048)",
    )
    p.add_argument("--targets", nargs="*", default=None, help="layer patterns to prune: Linear, role:mlp, re:<regex>")
    p.add_argument("--ignore", nargs="*", default=None, help="layer patterns to keep dense")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="push the result to this Hub repo (org/name)")
    p.add_argument("--samples", type=positive_int, default=128, help="calibration samples (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra method config fields (JSON)")
    p.add_argument("--output", required=True, help="directory for the pruned model, masks and ledger")
    p.set_defaults(func=run_prune)


def _extra_fields(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: write KEY=VALUE, e.g. --set reconstruct=true")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def calibration_data(source: str | None, model, model_path: str, samples: int, seed: int):
    """The calibration dataset named on the command line (None when not asked for)."""
    if source is None:
        return None
    if source == "digits":
        try:
            return cs.digits_pixels(model.config, num=max(samples, 256))
        except ImportError as e:
            raise ConfigError("--calibration digits needs scikit-learn: pip install scikit-learn") from e
    if source == "random":
        return cs.random_inputs(model.config, num=samples, seed=seed)
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--calibration minilm-sentences needs a tokenizer in {model_path!r}: {e}") from e
    return cs.TokenWindows(tok, cs.make_sentences()[:256])


class _Indexed:
    """A list of sample dicts seen as an indexable dataset (so calibration sampling is shuffled with the seed)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _with_dataset(args, fields: dict) -> int:
    """`--dataset`: a one-step recipe through the recipe runner (data checks, provenance, card, push)."""
    spec = {"dataset": args.dataset, "split": args.split, "size": args.samples, "seed": args.seed}
    spec.update({k: v for k, v in {"config": args.dataset_config, "revision": args.dataset_revision,
                 "image_column": args.image_column, "text_column": args.text_column,
                 "text_pair_column": args.text_pair_column, "label_column": args.label_column,
                 "max_length": args.max_length}.items() if v})  # fmt: skip
    data: dict = {"model": {"id": args.model}, "pruning": fields, "calibration": spec, "output": {"plots": False}}
    if args.eval_split:
        data["evaluation"] = {**spec, "split": args.eval_split, "size": None}
    if args.push_to_hub:
        data["push"] = {"repo_id": args.push_to_hub}
    pruner, result = execute(recipe_from_dict(data), output_dir=args.output, push=bool(args.push_to_hub))
    line = f"{args.method}: sparsity {pruner.masks.sparsity():.4f} over {len(pruner.masks)} layers -> {args.output}"
    if result.get("metrics"):
        line += f" ({', '.join(f'{k} {v:.4f}' for k, v in result['metrics'].items())} on {args.eval_split})"
    sys.stdout.write(line + (f"\n{result['commit_url']}" if result.get("commit_url") else "") + "\n")
    return 0


def run_prune(args) -> int:
    fields = {"method": args.method, "sparsity": args.sparsity, "seed": args.seed, **_extra_fields(args.set)}
    if args.pattern:
        fields["pattern"] = args.pattern
    if args.targets is not None:
        fields["targets"] = args.targets
    if args.ignore is not None:
        fields["ignore"] = args.ignore
    if "calibration_samples" in {f.name for f in dataclasses.fields(get_method(args.method).config_cls)}:
        fields.setdefault("calibration_samples", args.samples)
    cfg = PruningConfig.from_dict(fields)  # unknown method / bad values fail before the model loads
    if args.dataset is not None:
        if args.calibration is not None:
            raise ConfigError("give either --dataset SPEC or --calibration SOURCE, not both")
        return _with_dataset(args, fields)
    if args.push_to_hub:
        raise ConfigError("--push-to-hub goes with --dataset (or push the saved folder: hf-mpprune push DIR)")
    needs = get_method(cfg.method).needs_calibration or getattr(cfg, "reconstruct", False)
    if needs and args.calibration is None:
        raise ConfigError(
            f"method {cfg.method!r} needs calibration data: add --calibration {{{','.join(CALIBRATION_SOURCES)}}}"
        )
    check_save_target(args.output)
    pruner = MPPruner.from_pretrained(args.model, cfg)
    data = calibration_data(args.calibration, pruner.model, args.model, args.samples, args.seed)
    if isinstance(data, list):
        data = _Indexed(data)
    masks = pruner.prune(calibration=data)
    pruner.save_pretrained(args.output)
    sys.stdout.write(f"{args.method}: sparsity {masks.sparsity():.4f} over {len(masks)} layers -> {args.output}\n")
    return 0
