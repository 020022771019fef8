"""`hf-mpprune` console script. Each subcommand is a `register(subparsers)` function; the parser it adds sets
`func(args) -> int`. Feature modules add their own subcommand by appending to `_COMMANDS`."""

import argparse
import importlib
import json
import logging
import os
import sys

from ..core.errors import MPPruneError


def _register_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="MP-fit every prunable layer of a model (spectra, plots)")
    p.add_argument("model", help="local model directory or Hub id (offline: must be in the HF cache)")
    p.add_argument("--out", help="directory for spectra.json, spectra.md and plots")
    p.add_argument("--plot", action="store_true", help="write overview.png and per-layer ESD plots under --out")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of a markdown table")
    p.add_argument("--view", choices=["per_module", "fused_qkv"], default="per_module")
    p.add_argument("--compat", choices=["exact", "repo"], default="exact")
    p.add_argument("--device", default=None, help="device for the eigen work, e.g. cuda (results are float64)")
    p.add_argument("--targets", nargs="*", default=None, help="layer patterns: Linear, role:mlp, re:<regex>")
    p.add_argument("--ignore", nargs="*", default=[], help="layer patterns to exclude")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args) -> int:
    from ..core.config import PruningConfig, SpectralConfig
    from ..pruner import MPPruner

    if args.plot and not args.out:
        raise MPPruneError("--plot needs --out DIR")
    spectral = SpectralConfig(compat=args.compat, view=args.view, device=args.device)
    cfg = PruningConfig(targets=args.targets, ignore=args.ignore, spectral=spectral)
    pruner = MPPruner.from_pretrained(args.model)
    pruner = type(pruner)(pruner.model, cfg)
    report = pruner.analyze()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        report.to_json(os.path.join(args.out, "spectra.json"))
        with open(os.path.join(args.out, "spectra.md"), "w", encoding="utf-8") as f:
            f.write(report.to_markdown() + "\n")
        if args.plot:
            report.plot(args.out)
    sys.stdout.write((json.dumps(report.to_dict(), indent=2) if args.json else report.to_markdown()) + "\n")
    return 0


# Modules that expose `register(subparsers)`, in help order.
_COMMANDS: tuple[str, ...] = (
    "hf_mpprune.cli.prune",
    "hf_mpprune.cli.deploy",
    "hf_mpprune.cli.certify",
    "hf_mpprune.cli.eval",
    "hf_mpprune.recipes.runner",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-mpprune", description="Marchenko–Pastur pruning for HF models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _register_analyze(sub)
    for mod in _COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (MPPruneError, OSError) as e:
        sys.stderr.write(f"hf-mpprune {args.command}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
