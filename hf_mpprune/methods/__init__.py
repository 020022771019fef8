"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import cast, kn_baselines, magnitude, mp_wanda, seb, sparsegpt, wanda
