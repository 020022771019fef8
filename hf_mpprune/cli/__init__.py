"""The `hf-mpprune` command line: one module per verb, each with `register(subparsers)`.

`main` builds the parser and runs a verb; `prune`, `deploy` (audit, bench), `certify`, `demo` and the recipe
verbs (run, push) live in their own modules. May import: everything else in `hf_mpprune`.
"""

from .main import main


__all__ = ["main"]
