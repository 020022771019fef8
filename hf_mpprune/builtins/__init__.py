"""Built-in models and data that need no network: the digits ViT and its data, MiniLM and its sentences.

Owns `digits` (sklearn digits splits, the small ViT, its training and cache, the same data as an image
`datasets.DatasetDict` with its `ViTImageProcessor`), `minilm` (all-MiniLM-L6-v2 and its template sentences as a
text dataset), `sources` (seeded sentences, token windows, digits pixels and random inputs for calibration) and
`register` (makes `builtin:*` names resolvable by the data layer). May import: every stage up to `hf_mpprune.data`
(not `recipes` or `cli`).
"""

from . import register
