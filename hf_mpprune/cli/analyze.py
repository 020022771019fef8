"""`hf-mpprune analyze MODEL_OR_DIR`: MP-fit every prunable layer of a model (spectra, plots)."""

import json
import os
import sys

from ..core.config import PruningConfig, SpectralConfig
from ..core.constants import EVERY_ROLE
from ..core.errors import ConfigError
from ..core.files import write_text_atomic
from ..pruner import MPPruner


def register(sub) -> None:
    p = sub.add_parser("analyze")
    p.add_argument("model", help="local model directory or Hub id (offline: must be in the HF cache)")
    p.add_argument("--out", help="directory for spectra.json, spectra.md and plots")
    p.add_argument("--plot", action="store_true", help="write overview.png and per-layer ESD plots under --out")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a markdown table")
    p.add_argument("--view", choices=["per_module", "fused_qkv"], default="per_module")
    p.add_argument("--compat", choices=["exact", "repo"], default="exact")
    p.add_argument("--device", default=None, help="device for the eigen work, e.g. cuda (results are float64)")
    p.add_argument("--targets", nargs="*", default=None, help="layer patterns: Linear, role:mlp, re:<regex>")
    p.add_argument("--ignore", nargs="*", default=[], help="layer patterns to exclude")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.plot and not args.out:
        raise ConfigError("--plot needs --out DIR")
    spectral = SpectralConfig(compat=args.compat, view=args.view, device=args.device)
    targets = args.targets or list(EVERY_ROLE)  # analysis covers every prunable layer unless narrowed
    cfg = PruningConfig(targets=targets, ignore=args.ignore, spectral=spectral)
    pruner = MPPruner.from_pretrained(args.model)
    pruner = type(pruner)(pruner.model, cfg)
    report = pruner.analyze()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_text_atomic(os.path.join(args.out, "spectra.json"), report.to_json() + "\n")
        write_text_atomic(os.path.join(args.out, "spectra.md"), report.to_markdown() + "\n")
        if args.plot:
            report.plot(args.out)
    sys.stdout.write((json.dumps(report.to_dict(), indent=2) if args.json else report.to_markdown()) + "\n")
    return 0
