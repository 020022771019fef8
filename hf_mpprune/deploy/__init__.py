"""Deployment: 2:4 semi-structured conversion (CUDA), exact MAC counts, the speed audit, token merging (ToMe) and
export to ONNX / `torch.export`.

Owns `semi_structured`, `macs`, `speed`, `tome` and `export`. May import: `hf_mpprune.core`, `hf_mpprune.spectral`,
`hf_mpprune.methods` (the k:n legality audit runs before any conversion).
"""
