"""Pruning methods. Each module registers itself; adding a method = one file + one import line here."""

from . import cast, hybrid, kn_baselines, magnitude, mp_sparsegpt, mp_wanda, rmt, seb, ser, sparsegpt, wanda
