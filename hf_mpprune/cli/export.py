"""`hf-mpprune export DIR --format onnx|pt2 [--tome R] [--opset N] --output PATH`.

DIR is a saved transformers model directory (an hf_mpprune checkpoint's masks are used for the zero check). The
export is checked against the eager model at two batch sizes and the pruned weights' bits are compared; the
report is printed as JSON.
"""

import json
import sys

from ..deploy.export import DEFAULT_OPSET, FORMATS, export


def register(sub) -> None:
    p = sub.add_parser("export")
    p.add_argument("model", help="saved model directory")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (torch.onnx dynamo) or pt2 (torch.export)")
    p.add_argument("--output", "-o", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--tome", type=int, default=None, help="merge R tokens per block with ToMe (ViT/DeiT)")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--atol", type=float, default=1e-5, help="largest allowed |exported - eager| (default 1e-5)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (refused otherwise)")
    p.add_argument("--no-verify", action="store_true", help="skip the eager comparison and the weight check")
    p.set_defaults(func=_run)


def _run(args) -> int:
    report = export(
        args.model, args.output, format=args.format, tome=args.tome, opset=args.opset, atol=args.atol,
        verify=not args.no_verify, overwrite=args.overwrite,
    )  # fmt: skip
    payload = report.to_dict()
    if payload["tome"]:
        payload["tome"] = {k: payload["tome"][k] for k in ("r", "token_schedule", "tokens_out")}
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    return 0
