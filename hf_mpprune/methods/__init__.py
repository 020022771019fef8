"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import magnitude
from . import cast
from . import kn_baselines
