"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import (
    hybrid,  # noqa: I001
    magnitude,
    rmt,  # noqa: I001
    ser,  # noqa: I001
)
