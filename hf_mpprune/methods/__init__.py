"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import hybrid, magnitude, rmt, ser  # cyclic methods (SER, Hybrid, classical RMT)
