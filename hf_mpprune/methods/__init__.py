"""Pruning methods: one module per method, each registering itself in `hf_mpprune.core.registry`.

Owns the shared helpers (`common`: calibration options and batches, reconstruction and its time split, row
budgets, cumulative selection, SEB and MP layer weights), the layer allocations of the one-shot pruners
(`allocation`: uniform, OWL, AlphaPruning, MP; a helper like `common`, not a method), one file per unstructured method (`ser.py` also registers
Hybrid, `sparsegpt.py` also mp-sparsegpt: each is the same algorithm with another schedule or budget) and `kn/` for
k:n methods. Adding a method = one file that calls `@register_method(...)` + one import line here. May import:
`hf_mpprune.core` and `hf_mpprune.spectral`; a method module never imports another method module (only the
helpers `common` and `allocation`).
"""

from . import magnitude, mp_wanda, rmt, seb, ser, sparsegpt, wanda
from .kn import baselines, cast
