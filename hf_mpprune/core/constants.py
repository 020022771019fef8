"""File names of our sidecars, the library tag, and layer-role vocabulary."""

CONFIG_NAME = "mpprune_config.json"
MASKS_NAME = "mpprune_masks.safetensors"
LEDGER_NAME = "mpprune_ledger.json"
SPECTRA_NAME = "mpprune_spectra.json"
RECIPE_NAME = "recipe.yaml"
LIBRARY_TAG = "hf-mpprune"

ROLES = ("attn", "mlp", "head", "embed", "other")

__version__ = "0.1.0"
