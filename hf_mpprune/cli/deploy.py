"""`hf-mpprune audit DIR` (k:n legality + exact MAC report) and `hf-mpprune bench DIR` (honest speed audit).

DIR is a saved transformers model directory. If it holds `mpprune_masks.safetensors` those masks are used (and
checked against the weights); otherwise masks are derived from the weights' zeros.
"""

import json
import logging
import os
import sys
from argparse import Namespace

from ..core.constants import MASKS_NAME
from ..core.errors import ConfigError
from ..core.files import write_text_atomic
from ..core.loading import load_model
from ..core.masks import Masks
from ..deploy.macs import mac_report
from ..deploy.speed import make_inputs, speed_audit
from ..deploy.tome import apply_tome
from ..methods.kn.legality import legality_audit
from .args import nonnegative_int, positive_int
from .certify import run_certify


logger = logging.getLogger(__name__)


def register(sub) -> None:
    a = sub.add_parser("audit")
    a.add_argument("model", help="saved model directory")
    a.add_argument("--pattern", default="2:4", help="k:n pattern, k kept of n (default 2:4)")
    a.add_argument(
        "--tome", type=nonnegative_int, default=0, help="count MACs with ToMe r tokens merged per block (ViT/DeiT)"
    )
    a.add_argument("--seq-len", type=positive_int, default=128, help="sequence length for text models")
    a.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    a.add_argument("--out", help="also write the JSON report to this file")
    a.add_argument("--certificates", action="store_true", help="also run the data-path budget certificates")
    a.add_argument("--dense", help="with --certificates: the dense model directory the pruned model came from")
    a.add_argument("--samples", type=positive_int, default=64, help="with --certificates: size of the audit set T")
    a.add_argument("--data", choices=["random", "digits"], default="random", help="with --certificates: source of T")
    a.add_argument("--lipschitz", default="head", help="with --certificates: L_s estimator (head, const, ...)")
    a.set_defaults(func=_run_audit)

    b = sub.add_parser("bench")
    b.add_argument("model", help="saved model directory")
    b.add_argument("--batches", type=positive_int, nargs="+", default=[1, 16, 64, 128, 256])
    b.add_argument("--tome", type=nonnegative_int, default=0, help="ToMe r applied to every variant (ViT/DeiT)")
    b.add_argument("--no-compile", action="store_true", help="skip the torch.compile denominators")
    b.add_argument("--compile-batches", type=positive_int, nargs="+", default=[128])
    b.add_argument("--warmup", type=nonnegative_int, default=10)
    b.add_argument("--reps", type=positive_int, default=50)
    b.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    b.add_argument("--dry-run", action="store_true",
                   help="run every check and forward of the GPU path on this device, weights dense, no claim")  # fmt: skip
    b.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    b.add_argument("--out", help="also write the JSON report to this file")
    b.set_defaults(func=_run_bench)


def _load(path: str):

    model = load_model(path)
    mpath = os.path.join(path, MASKS_NAME)
    masks = Masks.load(mpath) if os.path.exists(mpath) else None
    if masks is not None:
        masks.check_model(model)
        logger.info("using %d masks from %s", len(masks), mpath)
    return model, masks


def _emit(payload: dict, markdown: str, args) -> None:
    if args.out:
        write_text_atomic(args.out, json.dumps(payload, indent=2, default=str))
    sys.stdout.write((json.dumps(payload, indent=2, default=str) if args.json else markdown) + "\n")


def _run_audit(args) -> int:

    if args.certificates and not args.dense:  # before any output: a usage error leaves nothing half-printed
        raise ConfigError("audit --certificates needs --dense DENSE_DIR (the model the pruned one came from)")
    model, masks = _load(args.model)
    legal = legality_audit(model, args.pattern)
    tome = apply_tome(model, r=args.tome) if args.tome else None
    macs = mac_report(model, make_inputs(model, 1, "cpu", seq_len=args.seq_len), masks=masks, pattern=args.pattern)
    payload = {"legality": legal.to_dict(), "macs": macs.to_dict(), "tome": tome, "masks_sidecar": masks is not None}
    _emit(payload, legal.to_markdown() + "\n\n" + macs.to_markdown(), args)
    if args.certificates:
        cert = Namespace(model=args.model, dense=args.dense, samples=args.samples, data=args.data, seed=0,
                         labels=False, lipschitz=args.lipschitz, layers=None, lambdas=None, out=None, json=args.json)  # fmt: skip
        return run_certify(cert)
    return 0


def _run_bench(args) -> int:

    model, masks = _load(args.model)
    report = speed_audit(
        model,
        masks,
        batches=tuple(args.batches),
        tome_r=args.tome,
        compile=not args.no_compile,
        compile_batches=tuple(args.compile_batches),
        warmup=args.warmup,
        reps=args.reps,
        device=args.device,
        dry_run=args.dry_run,
    )
    _emit(report.to_dict(), report.to_markdown(), args)
    return 0
