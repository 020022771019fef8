"""`python -m hf_mpprune.demo`: the same as `hf-mpprune demo` (see `hf_mpprune.cli.demo`)."""

import sys

from .cli.demo import main


if __name__ == "__main__":
    sys.exit(main())
