"""Model-card metadata that is looked up rather than configured: license, `pipeline_tag`, title, relation.

* **license**: the recipe's `model.license` if given, else the `license` (and `license_name` / `license_link` for
  `license: other`) of the base model's own card: `README.md` in the base model folder, or for a Hub id the
  card already in the local Hugging Face cache (no download).
* **pipeline_tag**: from transformers' pipeline registry (`transformers.pipelines.SUPPORTED_TASKS`): the tasks
  whose Auto classes map a config to the model's class; among several (e.g. `ViTModel` serves both
  `feature-extraction` and `image-feature-extraction`) the one whose input type matches the model's main input.
* **title**: the model name: the Hub repo name when pushing, else the recipe's `name`, else
  `<base model name>-mpprune-<method>-<2of4 | sNNN>`.
* **base_model_relation**: `finetune` when a Hub `base_model` is named and the weights differ from it (pruned or
  trained); the Hub's other relations (adapter, merge, quantized) never apply to a pruned dense checkpoint.
"""

import functools
import logging
import os
import re
from typing import Any

from huggingface_hub import ModelCard, try_to_load_from_cache
from transformers.pipelines import SUPPORTED_TASKS


logger = logging.getLogger(__name__)

_INPUT_TYPES = {"pixel_values": "image", "input_ids": "text", "input_values": "audio", "input_features": "audio"}
LICENSE_KEYS = ("license", "license_name", "license_link")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@functools.lru_cache(maxsize=1)
def _task_index() -> dict[str, list[tuple[str, str]]]:
    """Model class name -> [(task, task input type)] in registry order."""
    index: dict[str, list[tuple[str, str]]] = {}
    for task, info in SUPPORTED_TASKS.items():
        for auto_cls in info.get("pt", ()):
            names = getattr(getattr(auto_cls, "_model_mapping", None), "_model_mapping", {}) or {}
            for value in names.values():
                for cls_name in (value,) if isinstance(value, str) else tuple(value):
                    if (task, info.get("type", "")) not in index.setdefault(cls_name, []):
                        index[cls_name].append((task, info.get("type", "")))
    return index


def pipeline_tag(model_class: str, main_input: str | None = None) -> str | None:
    """The pipeline task of a transformers model class (None when no pipeline serves it)."""
    candidates = _task_index().get(model_class, [])
    if not candidates:
        return None
    kind = _INPUT_TYPES.get(main_input or "")
    matching = [t for t, typ in candidates if typ == kind]
    return (matching or [t for t, _ in candidates])[0]


def _card_license(text: str) -> dict[str, str]:
    data = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    return {k: str(data[k]) for k in LICENSE_KEYS if data.get(k)}


def base_card_license(base: str | None, revision: str | None = None) -> dict[str, str]:
    """License fields of the base model's card: a local folder's README.md, or a Hub card already in the cache."""
    if not base:
        return {}
    path = os.path.join(os.path.expanduser(base), "README.md") if os.path.isdir(os.path.expanduser(base)) else None
    if path is None and _HUB_ID.match(base):
        try:
            cached = try_to_load_from_cache(base, "README.md", revision=revision)
        except ValueError as e:  # huggingface_hub's HFValidationError: not a valid repo id after all
            logger.info("no cached card for %r: %s", base, e)
            cached = None
        path = cached if isinstance(cached, str) else None
    if path is None or not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        found = _card_license(f.read())
    logger.info("license %s inherited from %s", found.get("license"), path)
    return found


def card_license(pruner: Any) -> dict[str, str]:
    """`{license, license_name?, license_link?}` from the recipe, else from the base model's card; {} if unknown."""
    recipe = getattr(pruner, "recipe", None)
    model = recipe.get("model") if isinstance(recipe, dict) else None
    model = model if isinstance(model, dict) else {}
    if model.get("license"):
        return {k: str(model[k]) for k in LICENSE_KEYS if model.get(k)}
    identity = pruner.ledger.identity
    return base_card_license(identity.get("base_model"), identity.get("base_revision"))


def default_model_name(pruner: Any) -> str:
    """The recipe's `name` if any, else `<base name>-mpprune-<method>-<2of4 | sNNN>`, e.g.
    `all-MiniLM-L6-v2-mpprune-wanda-2of4`."""
    recipe = getattr(pruner, "recipe", None)
    if isinstance(recipe, dict) and isinstance(recipe.get("name"), str) and recipe["name"].strip():
        return recipe["name"].strip()
    base = str(pruner.ledger.identity.get("base_model") or "")
    name = re.split(r"[/:]", os.path.normpath(base))[-1] if base else type(pruner.model).__name__  # builtin:x -> x
    if name in ("", ".", "model"):  # a package's bare `model/` folder says nothing
        name = getattr(getattr(pruner.model, "config", None), "model_type", None) or type(pruner.model).__name__
    if pruner.masks is None:
        return f"{name}-mpprune-analysis"
    method = pruner.config.method if pruner.config is not None else "pruned"
    pattern = pruner.masks.pattern
    tail = (
        f"{pattern.keep}of{pattern.group}" if pattern is not None else f"s{round(pruner.masks.sparsity() * 100):03d}"
    )
    return f"{name}-mpprune-{method}-{tail}"


def base_model_relation(pruner: Any, base_model: str | None) -> str | None:
    records = pruner.ledger.steps
    changed = pruner.masks is not None or any(r.get("kind") in ("distill", "finetune") for r in records)
    return "finetune" if base_model and changed else None
