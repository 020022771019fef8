"""Deployment: 2:4 semi-structured conversion (CUDA), exact MAC counts, the speed audit and token merging (ToMe).

Owns `semi_structured`, `macs`, `speed` and `tome`. May import: `hf_mpprune.core`, `hf_mpprune.spectral`,
`hf_mpprune.methods` (the k:n legality audit runs before any conversion).
"""
