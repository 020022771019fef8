"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import magnitude, mp_wanda, seb, sparsegpt, wanda  # one-shot methods (issue 4)
