"""Spectral analysis: the Marchenko–Pastur law, the per-matrix fit and the per-model report and plots.

Owns `law` (MP edges, density, closed-form CDF, quantiles, the Tracy–Widom quantile), `fit` (BEMA fit, soft edge,
`fit_mp`, `analyze`, `SpectralReport`), `tail` (the power-law tail exponent PL_Alpha_Hill of an ESD) and `plots` (matplotlib figures, an optional dependency; plots import the
law, never the fit). May import: `hf_mpprune.core`.
"""
