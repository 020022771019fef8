"""Built-in models and data that need no network: the digits ViT and its data, MiniLM and its sentences.

Owns `digits` (sklearn digits splits, the small ViT, its training and cache) and `sources` (seeded sentences,
token windows, digits pixels and random inputs for calibration). May import: every stage up to
`hf_mpprune.pruner` (not `recipes` or `cli`).
"""
