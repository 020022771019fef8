"""What a checkpoint keeps from the folder its model came from, so that the pruned folder loads like the source.

* The **processor** (tokenizer, image processor, or a processor of both), loaded with `AutoProcessor` when the
  source folder has its files, and saved with the checkpoint by `save_pretrained` / `push_to_hub`: `pipeline(task,
  model=out)` and `AutoTokenizer.from_pretrained(out)` work on the output.
* A **sentence-transformers module stack**: `modules.json`, the module folders it lists (e.g. `1_Pooling`,
  `2_Normalize`), `sentence_bert_config.json` and `config_sentence_transformers.json`, copied as they are, so that
  `SentenceTransformer(out)` builds the same pipeline (pooling, normalisation, sequence length) around the pruned
  weights. Without them it silently builds a different model (mean pooling only, no normalisation).
"""

import json
import logging
import os
import shutil
from typing import Any

from torch import nn
from transformers import AutoProcessor
from transformers.tokenization_utils_base import FULL_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

from ..core.errors import CheckpointError


logger = logging.getLogger(__name__)

PROCESSOR_FILES = (TOKENIZER_CONFIG_FILE, FULL_TOKENIZER_FILE, IMAGE_PROCESSOR_NAME, PROCESSOR_NAME)
ST_MODULES = "modules.json"
ST_FILES = (ST_MODULES, "sentence_bert_config.json", "config_sentence_transformers.json")


def source_dir(model: nn.Module) -> str | None:
    """The local folder `model` was loaded from (`config._name_or_path`; a Hub model: its snapshot folder)."""
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return path if os.path.isdir(path) else None


def saved_processor(path: str | None) -> Any:
    """The processor saved in `path` (`AutoProcessor`), or None when the folder holds no processor files."""
    if not path or not any(os.path.isfile(os.path.join(path, n)) for n in PROCESSOR_FILES):
        return None
    return AutoProcessor.from_pretrained(path)


def copy_module_stack(source: str | None, target: str) -> list[str]:
    """Copy a sentence-transformers module stack from `source` into `target`; returns the copied names."""
    if not source or not os.path.isfile(os.path.join(source, ST_MODULES)):
        return []
    try:
        with open(os.path.join(source, ST_MODULES), encoding="utf-8") as f:
            folders = [m.get("path", "") for m in json.load(f)]
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{os.path.join(source, ST_MODULES)!r} is not a sentence-transformers module list: "
                              f"{e}; restore it from the original model") from e  # fmt: skip
    copied = []
    for name in ST_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))
            copied.append(name)
    for folder in filter(None, folders):  # "" is the transformer itself: the checkpoint's own files
        if os.path.isdir(os.path.join(source, folder)):
            shutil.copytree(os.path.join(source, folder), os.path.join(target, folder))
        else:  # a module without files (Normalize) still gets its folder, as sentence-transformers writes it
            os.makedirs(os.path.join(target, folder))
        copied.append(folder)
    logger.info("kept the sentence-transformers modules of %s: %s", source, copied)
    return copied
