"""`hf-mpprune` console script. Each verb's module has a `register(subparsers)` function; the parser it adds sets
`func(args) -> int`. `COMMANDS` names each verb's module and one-line help: only the module of the verb being run
is imported, so `hf-mpprune --version` and `--help` import neither torch nor transformers.

Error policy (README "Errors and recovery"): a failure prints ONE line on stderr, `hf-mpprune CMD: error: ...`,
naming the bad value or file (the traceback only with `-v`). Exit codes: 0 success; 2 usage errors (argparse
errors, `ConfigError`, `NoPrunableLayersError`, a path or model id that does not exist); 1 failures (damaged files,
non-finite data, Hub/network errors, anything unexpected); 130 interrupted. Outputs are written only once complete
(atomic checkpoint folders, atomic report files), so a failure leaves no partial output.
"""

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Collection
from importlib.metadata import PackageNotFoundError, version

from ..core.constants import __version__
from ..core.errors import ConfigError, MPPruneError, NoPrunableLayersError


# A value the user gave is wrong (a bad flag value, a path or model id that does not exist): exit 2.
USAGE_ERRORS = (ConfigError, NoPrunableLayersError, FileNotFoundError)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# verb -> (module whose `register(subparsers)` adds it, one-line help), in help order. A new verb is one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("hf_mpprune.cli.analyze", "MP-fit every prunable layer of a model (spectra, plots)"),
    "prune": ("hf_mpprune.cli.prune", "prune a model one-shot with a registered method and save it"),
    "audit": ("hf_mpprune.cli.deploy", "k:n legality audit + exact MAC report of a saved model"),
    "bench": ("hf_mpprune.cli.deploy", "speed audit: dense-masked vs 2:4 over a batch sweep (median, IQR)"),
    "certify": ("hf_mpprune.cli.certify", "data-path budget certificates of a pruned checkpoint vs its dense source"),
    "eval": ("hf_mpprune.cli.eval", "evaluate a saved model on a dataset (top-1/top-5, or embedding agreement)"),
    "run": ("hf_mpprune.recipes.runner", "run a recipe: analyze → prune → distill → audit → save (→ push)"),
    "push": ("hf_mpprune.recipes.runner", "push a saved checkpoint directory to the Hub in one commit"),
    "export": ("hf_mpprune.cli.export", "export a saved model to ONNX or a torch.export program (.pt2)"),
    "env": ("hf_mpprune.cli.env", "print versions, devices and available sparse kernels (for bug reports)"),
    "demo": ("hf_mpprune.cli.demo", "offline demo: train a digits ViT, run the shipped recipes, print a table"),
}


class _Verbs:
    """The subparsers action as a verb module sees it: `add_parser(verb)` gets the verb's help from `COMMANDS`."""

    def __init__(self, sub):
        self._sub = sub

    def add_parser(self, name: str, **kwargs):
        return self._sub.add_parser(name, help=COMMANDS[name][1], **kwargs)


def _installed(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _version() -> str:
    return f"hf-mpprune {__version__} (torch {_installed('torch')}, transformers {_installed('transformers')})"


def build_parser(verbs: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the full arguments of `verbs` (every verb when None); the other verbs are listed with their
    help only, and their modules are not imported."""
    parser = argparse.ArgumentParser(prog="hf-mpprune", description="Marchenko–Pastur pruning for HF models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level and show tracebacks")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = {COMMANDS[v][0] for v in (COMMANDS if verbs is None else verbs) if v in COMMANDS}
    registered = set()
    for name, (module, text) in COMMANDS.items():
        if module in wanted and module not in registered:
            registered.add(module)
            importlib.import_module(module).register(_Verbs(sub))
        elif module not in wanted:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def one_line(e: BaseException) -> str:
    """The exception's message on one line (type name added for exceptions that are not ours)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, MPPruneError | OSError) else f"{type(e).__name__}: {text}"


def exit_code(e: BaseException) -> int:
    return EXIT_USAGE if isinstance(e, USAGE_ERRORS) else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse's own exits, e.g. `--help`, `--version`, usage, too)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)  # top-level options take no values
    parser = build_parser([verb] if verb else [])
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
