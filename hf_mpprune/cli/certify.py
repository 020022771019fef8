"""`hf-mpprune certify PRUNED_DIR --dense DENSE_DIR`: data-path budget certificates (docs/algorithms.md §9.4).

Samples: `--data random` (default) draws seeded dummy inputs from optimum's input generators (pixel_values of the
model's size for image models, token ids of length min(16, max_position_embeddings) with a padded attention mask
for text models); `--data digits` uses the first
`--samples` scikit-learn digits images (pixels / 16, bilinearly resized to `config.image_size`, repeated over
`config.num_channels`), with their labels when `--labels` is given. Layers default to the registered layers whose
weights differ (only the head layers with `--lipschitz head`). Exit code 1 when a valid bound was violated.
"""

import json
import sys

import torch
import torch.nn.functional as F

from ..certify.audit import budget_audit
from ..certify.bounds import ESTIMATORS
from ..core.constants import EVERY_ROLE
from ..core.errors import ConfigError
from ..core.files import write_text_atomic
from ..core.layers import discover_layers
from ..core.loading import load_model
from ..core.tasks import dummy_inputs
from .args import positive_int


def register(sub) -> None:
    p = sub.add_parser("certify")
    p.add_argument("model", help="pruned model directory")
    p.add_argument("--dense", required=True, help="the dense model directory the pruned model was made from")
    p.add_argument("--samples", type=positive_int, default=64, help="size of the audit set T")
    p.add_argument("--data", choices=["random", "digits"], default="random", help="where T comes from")
    p.add_argument("--labels", action="store_true", help="use the digits labels (else the dense predictions)")
    p.add_argument("--lipschitz", choices=list(ESTIMATORS), default="head", help="L_s estimator")
    p.add_argument("--layers", nargs="*", default=None, help="layer names (default: layers whose weights differ)")
    p.add_argument("--lambdas", nargs=2, type=float, default=None, metavar=("L1", "L2"), help="elastic-net λ₁ λ₂")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the ledger record (JSON) to this file")
    p.add_argument("--json", action="store_true", help="print the JSON record instead of a summary")
    p.set_defaults(func=run_certify)


def make_samples(model, n: int, data: str, seed: int = 0):
    """(inputs dict, labels or None) for an audit set of `n` samples of `model` (see module doc)."""
    if n <= 0:
        raise ConfigError(f"--samples must be positive, got {n}")
    config = model.config
    size, ch = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if data == "digits":
        if not size or not ch:
            raise ConfigError("--data digits needs an image model (config.image_size and config.num_channels)")
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - dev dependency
            raise ConfigError("--data digits needs scikit-learn: pip install scikit-learn") from e
        X, y = load_digits(return_X_y=True)
        img = torch.tensor(X[:n] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        hw = (size, size) if isinstance(size, int) else tuple(size)
        img = F.interpolate(img, size=hw, mode="bilinear", align_corners=False).repeat(1, ch, 1, 1)
        return {"pixel_values": img}, torch.tensor(y[:n])
    seq = min(16, getattr(config, "max_position_embeddings", 16) or 16)
    return dummy_inputs(model, n, seq, seed=seed, device="cpu", dtype=torch.float32), None


def _default_layers(dense, pruned, estimator: str) -> list[str]:

    pm = dict(pruned.named_modules())
    names = [
        la.name
        for la in discover_layers(dense, list(EVERY_ROLE))  # the user may have pruned the head too
        if la.name in pm and not torch.equal(la.weight, pm[la.name].weight)
        and (estimator != "head" or la.role == "head")
    ]  # fmt: skip
    if not names:
        raise ConfigError("no registered layer differs between the models (with --lipschitz head: no head layer); "
                          "pass --layers NAME ...")  # fmt: skip
    return names


def run_certify(args) -> int:

    dense, pruned = load_model(args.dense), load_model(args.model)
    samples, labels = make_samples(dense, args.samples, args.data, args.seed)
    layers = args.layers or _default_layers(dense, pruned, args.lipschitz)
    report = budget_audit(
        dense, pruned, layers, samples, labels=labels if args.labels else None, lipschitz=args.lipschitz,
        lambdas=tuple(args.lambdas) if args.lambdas else None,
    )  # fmt: skip
    record = report.to_ledger()
    record["samples"] = {"data": args.data, "n": args.samples, "seed": args.seed, "labels": bool(args.labels)}
    if args.out:
        write_text_atomic(args.out, json.dumps(record, indent=2, sort_keys=True))
    if args.json:
        sys.stdout.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    else:
        lines = [
            report.certified_line,
            "",
            "| layer | B_T | ΔCE | can flip | flips | violations |",
            "|---|---|---|---|---|---|",
        ]
        for la in report.layers:
            c = la.check
            lines.append(f"| {la.name} | {c.budget:.4g} | {c.delta_ce:.4g} | {c.can_flip} | {c.flips} | "
                         f"{sum(c.violations.values())} |")  # fmt: skip
        lines.append(f"| joint | {report.joint.check.budget:.4g} | {report.joint.check.delta_ce:.4g} | "
                     f"{report.joint.check.can_flip} | {report.joint.check.flips} | {report.violations} (total) |")  # fmt: skip
        sys.stdout.write("\n".join(lines) + "\n")
    return 1 if report.violations else 0
