"""File names of our sidecars, the library tag, and layer-role vocabulary."""

CONFIG_NAME = "mpprune_config.json"
MASKS_NAME = "mpprune_masks.safetensors"
LEDGER_NAME = "mpprune_ledger.json"
SPECTRA_NAME = "mpprune_spectra.json"
RECIPE_NAME = "recipe.yaml"
# The list of every file a save wrote (relative paths): a later save may replace exactly these and nothing else.
FILES_NAME = "mpprune_files.json"
LIBRARY_TAG = "hf-mpprune"

ROLES = ("attn", "mlp", "head", "embed", "other")
# `targets` that select every prunable layer, the task head and the input embeddings included (analysis, audits).
EVERY_ROLE = tuple(f"role:{r}" for r in ROLES)

__version__ = "0.1.0"
