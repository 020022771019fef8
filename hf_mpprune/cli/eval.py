"""`hf-mpprune eval DIR --dataset SPEC [--split validation] [--samples N] [--dense DENSE_DIR] [--metric M]`: evaluate a
saved model on any dataset through the data layer: top-1 / top-5 for classifiers, perplexity for decoder language
models (`--max-length` windows moved by `--stride`, docs/llm.md), embedding agreement with `--dense` for encoders.
`--metric` names the metric expected (default `auto`: the model's); a model that cannot give it is refused. The
model's own processor (saved in DIR, or `--processor`) prepares the data."""

import json
import sys

from ..core.errors import ConfigError
from ..core.loading import load_model
from ..core.outputs import is_causal_lm
from ..data.evaluation import evaluate_model, task_of
from ..data.spec import DatasetSpec
from ..data.splits import DataPlan
from ..recipes.inputs import prepare_plan
from .args import positive_int


METRIC_TASKS = {
    "auto": (), "perplexity": ("text-generation",), "accuracy": ("image-classification", "text-classification"),
    "agreement": ("feature-extraction",),
}  # fmt: skip


def register(sub) -> None:
    p = sub.add_parser("eval")
    p.add_argument("model", help="saved model directory (or Hub id)")
    p.add_argument("--dataset", required=True, help="dataset spec: Hub id, folder, data file or builtin:...")
    p.add_argument("--split", default="validation", help="split expression, e.g. 'validation' or 'test[:10%%]'")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--dataset-revision", default=None)
    for col in ("image", "text", "text-pair", "label"):
        p.add_argument(f"--{col}-column", default=None, help=f"{col} column (default: detected)")
    p.add_argument("--samples", type=int, default=None, help="evaluate on this many rows (seeded draw; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--processor", default=None, help="image processor / tokenizer location (default: the model's)")
    p.add_argument("--dense", default=None, help="dense reference model (needed for encoders: embedding agreement)")
    p.add_argument(
        "--metric",
        choices=tuple(METRIC_TASKS),
        default="auto",
        help="the metric expected: perplexity (decoder LMs), accuracy (classifiers), agreement (encoders)",
    )
    p.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="decoder LMs: perplexity window length (default: the model's context, at most 2048)",
    )
    p.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="decoder LMs: step between perplexity windows (default: --max-length, non-overlapping)",
    )
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    spec = DatasetSpec(
        args.dataset, config=args.dataset_config, revision=args.dataset_revision, split=args.split,
        image_column=args.image_column, text_column=args.text_column, text_pair_column=args.text_pair_column,
        label_column=args.label_column, size=args.samples, seed=args.seed, batch_size=args.batch_size,
        max_length=args.max_length, stride=args.stride,
    )  # fmt: skip
    model = load_model(args.model)
    if args.metric == "perplexity" and not is_causal_lm(model):
        raise ConfigError(f"--metric perplexity needs a decoder language model; {type(model).__name__} is not one")
    plan = DataPlan()
    plan.add_evaluation(spec)
    prepare_plan(plan, model, args.processor or args.model)
    role = plan["evaluation"]
    task = task_of(model, role.prepared)
    if args.metric != "auto" and task not in METRIC_TASKS[args.metric]:
        raise ConfigError(f"--metric {args.metric}: {type(model).__name__} on this data is evaluated as {task}")
    teacher = None
    if task == "feature-extraction":
        if not args.dense:
            raise ConfigError(
                f"{type(model).__name__} has no classification head (or the data has no labels): embedding "
                "agreement needs the dense model, pass --dense DENSE_DIR"
            )
        teacher = load_model(args.dense)
    metrics = evaluate_model(model, role.prepared, task=task, teacher=teacher, batch_size=args.batch_size)
    record = {"model": args.model, "task": task, "metrics": metrics, **role.info}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, default=str)
    sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
    return 0
