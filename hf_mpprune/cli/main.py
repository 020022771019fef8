"""`hf-mpprune` console script. Each subcommand is a `register(subparsers)` function; the parser it adds sets
`func(args) -> int`. Feature modules add their own subcommand by appending to `_COMMANDS`.

Error policy (README "Errors and recovery"): a failure prints ONE line on stderr, `hf-mpprune CMD: error: ...`,
naming the bad value or file (the traceback only with `-v`). Exit codes: 0 success; 2 usage errors (argparse
errors, `ConfigError`, `NoPrunableLayersError`, a path or model id that does not exist); 1 failures (damaged files,
non-finite data, Hub/network errors, anything unexpected); 130 interrupted. Outputs are written only once complete
(atomic checkpoint folders, atomic report files), so a failure leaves no partial output.
"""

import argparse
import importlib
import json
import logging
import os
import sys
import traceback

import torch
import transformers

from ..core.config import PruningConfig, SpectralConfig
from ..core.constants import EVERY_ROLE, __version__
from ..core.errors import ConfigError, MPPruneError, NoPrunableLayersError
from ..core.files import write_text_atomic
from ..pruner import MPPruner
from ..recipes.schema import recipe_path
from . import demo as demo_cli
from .args import nonnegative_int


# A value the user gave is wrong (a bad flag value, a path or model id that does not exist): exit 2.
USAGE_ERRORS = (ConfigError, NoPrunableLayersError, FileNotFoundError)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


# Modules that expose `register(subparsers)`, in help order.
_COMMANDS: tuple[str, ...] = (
    "hf_mpprune.cli.prune",
    "hf_mpprune.cli.deploy",
    "hf_mpprune.cli.certify",
    "hf_mpprune.cli.eval",
    "hf_mpprune.recipes.runner",
    "hf_mpprune.cli.export",
    "hf_mpprune.cli.env",
)


def _register_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: train a digits ViT, run the shipped recipes, print a table")
    p.add_argument("--out", default="mpprune-demo", help="folder for the demo checkpoints")
    p.add_argument("--epochs", type=nonnegative_int, default=20, help="dense training epochs of the digits ViT")
    p.add_argument(
        "--recipes", nargs="*", default=None, help="recipe files or shipped recipe names (default: the offline ones)"
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    argv = ["--out", args.out, "--epochs", str(args.epochs)]
    if args.recipes is not None:
        for r in args.recipes:  # a file, or a shipped recipe by name; ConfigError lists the shipped ones
            recipe_path(r)
        argv += ["--recipes", *args.recipes]
    return demo_cli.main(argv)


def _version() -> str:
    return f"hf-mpprune {__version__} (torch {torch.__version__}, transformers {transformers.__version__})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-mpprune", description="Marchenko–Pastur pruning for HF models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level and show tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    _register_analyze(sub)
    for mod in _COMMANDS:
        importlib.import_module(mod).register(sub)
    _register_demo(sub)
    return parser


def one_line(e: BaseException) -> str:
    """The exception's message on one line (type name added for exceptions that are not ours)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, MPPruneError | OSError) else f"{type(e).__name__}: {text}"


def exit_code(e: BaseException) -> int:
    return EXIT_USAGE if isinstance(e, USAGE_ERRORS) else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse's own exits, e.g. `--help`, `--version`, usage, too)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2), --help / --version (0): argparse already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"hf-mpprune {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # the one place every failure becomes a single line and an exit code
        if args.verbose:
            traceback.print_exc()
        ours = isinstance(e, MPPruneError | OSError)
        hint = "" if ours or args.verbose else " (unexpected: rerun with -v for the traceback and report it)"
        sys.stderr.write(f"hf-mpprune {args.command}: error: {one_line(e)}{hint}\n")
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
