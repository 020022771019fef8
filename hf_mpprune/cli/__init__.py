"""The `hf-mpprune` command line: one module per verb, each with `register(subparsers)`.

Owns `main` (the parser, the error policy and exit codes), `args` (argument types), and one module per verb:
`prune`, `deploy` (audit, bench), `certify`, `export`, `env`, `demo`, `eval`; the recipe verbs (run, push) are
registered by the recipe runner. May import: everything else in `hf_mpprune`.
"""

from .main import main


__all__ = ["main"]
