"""Registers the builtins with the data layer, so that recipes name them like any model or dataset:
`builtin:digits-vit` (model folder with its processor), `builtin:digits` (image DatasetDict), `builtin:minilm`
(model folder with its tokenizer), `builtin:minilm-text` (text DatasetDict)."""

from ..data.spec import register_dataset_source, register_model_source
from .digits import digits_dataset, digits_vit_dir
from .minilm import minilm_path, minilm_text


def _digits(spec) -> object:
    return digits_dataset(0)  # the split the builtin digits ViT is trained on (whatever the draw seed)


register_model_source("builtin:digits-vit", digits_vit_dir)
register_model_source("builtin:minilm", minilm_path)
register_dataset_source("builtin:digits", _digits)
register_dataset_source("builtin:minilm-text", minilm_text)
