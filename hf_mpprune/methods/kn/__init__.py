"""k:n structured sparsity ("k kept of every n consecutive inputs").

Owns the k:n geometry (`geometry`: column orders, cells, candidate patterns, the k:n method config base and
`KNCalibration`), the legality audit (`legality`), CAST (`cast`, `cast_math`), channel permutations (`permute`)
and the k:n baselines (`baselines`: magnitude / Wanda / SparseGPT with a pattern). May import: `hf_mpprune.core`,
`hf_mpprune.spectral` and `hf_mpprune.methods.common`.
"""
