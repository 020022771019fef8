"""Spectral analysis: the Marchenko–Pastur law, the per-matrix fit and the per-model report and plots.

Owns `fit` (MP density/CDF/quantiles, BEMA fit, Tracy–Widom edge, `fit_mp`, `analyze`, `SpectralReport`) and
`plots` (matplotlib figures, an optional dependency). May import: `hf_mpprune.core`.
"""
