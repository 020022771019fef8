"""Preprocessing with the model's own processor: `AutoImageProcessor` for image models, `AutoTokenizer` for text
models, applied lazily through `Dataset.with_transform` (the transformers image-classification guide's way), plus
the matching collator. `probe` pushes a first batch through the model so that a dataset that does not fit the
processor or the model fails with one clear error before any work is done."""

import logging
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, DataCollatorWithPadding, default_data_collator

from ..core.errors import ConfigError
from .columns import Columns, detect_columns


logger = logging.getLogger(__name__)


def modality(model: nn.Module) -> str:
    """`"image"` when the model's main input is `pixel_values`, `"text"` when it is `input_ids`."""
    name = getattr(model, "main_input_name", None)
    if name == "pixel_values":
        return "image"
    if name == "input_ids":
        return "text"
    cfg = getattr(model, "config", None)
    if getattr(cfg, "vocab_size", None):
        return "text"
    if getattr(cfg, "num_channels", None):
        return "image"
    raise ConfigError(f"cannot tell whether {type(model).__name__} takes images or text (main_input_name={name!r})")


def load_processor(name_or_path: str, kind: str, **hub: Any):
    """The model's own image processor (`kind="image"`) or tokenizer (`kind="text"`) from a folder or Hub id."""
    cls = AutoImageProcessor if kind == "image" else AutoTokenizer
    try:
        return cls.from_pretrained(name_or_path, **hub)
    except (OSError, ValueError, KeyError) as e:
        what = "image processor (preprocessor_config.json)" if kind == "image" else "tokenizer"
        raise ConfigError(
            f"no {what} in {name_or_path!r}: {e}. Save it next to the model (processor.save_pretrained(dir)) or "
            "name one with model.processor in the recipe"
        ) from e


@dataclass
class Prepared:
    """A dataset whose rows are model inputs (+ `labels`), and the collator that batches them."""

    dataset: datasets.Dataset
    collator: Any
    columns: Columns
    modality: str
    has_labels: bool

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[i]

    def batch(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        raw = self.dataset[start:stop]
        n = len(next(iter(raw.values())))
        return self.collator([{k: v[i] for k, v in raw.items()} for i in range(n)])

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.batch(i, min(i + batch_size, len(self)))


def _image_mode(channels: int | None) -> str | None:
    return {1: "L", 3: "RGB"}.get(channels or 0)


def prepare(
    ds: datasets.Dataset, processor, columns: Columns, kind: str, *, channels: int | None = None,
    max_length: int | None = None, pad_to_max_length: bool = False, with_labels: bool = True,
) -> Prepared:  # fmt: skip
    """Attach the preprocessing transform to `ds` (rows become model inputs). Images are converted to the model's
    channel mode (`RGB` for 3 channels, `L` for 1, as in transformers' run_image_classification.py)."""
    label = columns.label if with_labels else None
    if kind == "image":
        mode, col = _image_mode(channels), columns.image

        def transform(batch):
            imgs = [
                im.convert(mode) if mode and hasattr(im, "convert") and im.mode != mode else im for im in batch[col]
            ]
            out = {"pixel_values": processor(images=imgs, return_tensors="pt")["pixel_values"]}
            if label is not None:
                out["labels"] = torch.as_tensor(batch[label], dtype=torch.long)
            return out

        collator = default_data_collator
    else:
        text, pair = columns.text, columns.text_pair
        kw = {"truncation": True, "max_length": max_length or min(getattr(processor, "model_max_length", 512), 512)}
        if pad_to_max_length:  # fixed length: rows batch with a plain DataLoader (the default train step)
            kw.update(padding="max_length", return_tensors="pt")

        def transform(batch):
            args = (batch[text], batch[pair]) if pair else (batch[text],)
            out = dict(processor(*args, **kw))
            if label is not None:
                out["labels"] = torch.as_tensor(batch[label], dtype=torch.long)
            return out

        collator = DataCollatorWithPadding(processor) if not pad_to_max_length else default_data_collator
    return Prepared(ds.with_transform(transform), collator, columns, kind, label is not None)


def _describe_images(ds: datasets.Dataset, col: str) -> str:
    try:
        im = ds.with_format(None)[0][col]
        return f"the first image is {getattr(im, 'mode', '?')} {getattr(im, 'size', '?')}"
    except Exception:  # describing is best effort only
        return "the images could not be read"


@torch.no_grad()
def probe(model: nn.Module, prepared: Prepared, raw: datasets.Dataset, source: str, processor=None) -> None:
    """Preprocess two rows and run them through the model; `ConfigError` describing the mismatch otherwise."""
    cfg = getattr(model, "config", None)
    try:
        batch = prepared.batch(0, min(2, len(prepared)))
    except Exception as e:  # processors raise many types on unsuitable input
        what = _describe_images(raw, prepared.columns.image) if prepared.modality == "image" else "the text"
        raise ConfigError(
            f"{source} cannot be preprocessed by {type(processor).__name__}: {what}; {type(e).__name__}: {e}"
        ) from e
    if prepared.modality == "image":
        pv = batch["pixel_values"]
        size = getattr(cfg, "image_size", None)
        hw = tuple(size) if isinstance(size, list | tuple) else (size, size) if size else None
        want_c = getattr(cfg, "num_channels", None)
        if pv.dim() != 4 or (want_c and pv.shape[1] != want_c) or (hw and tuple(pv.shape[-2:]) != hw):
            raise ConfigError(
                f"the images of {source} do not match the processor: {type(processor).__name__} turns them into "
                f"pixel_values of shape {tuple(pv.shape[1:])} but {type(model).__name__} takes "
                f"({want_c}, {hw[0] if hw else '?'}, {hw[1] if hw else '?'}); "
                f"{_describe_images(raw, prepared.columns.image)}. Use the processor saved with the model, or set its "
                "size / do_resize so that it produces the model's input size"
            )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
    except Exception as e:  # a forward that fails on this data: the dataset does not fit the model
        shapes = {k: tuple(v.shape) for k, v in batch.items()}
        raise ConfigError(f"inputs {shapes} made from {source} do not fit {type(model).__name__}: {e}") from e
    finally:
        model.train(was_training)


def is_raw(data: Any, model: nn.Module) -> bool:
    """A `datasets.Dataset` (or `DatasetDict`) whose rows are not model inputs yet: no column named like the model's
    main input and no transform attached (`with_transform` / `set_format`)."""
    if isinstance(data, datasets.DatasetDict):
        return True
    if not isinstance(data, datasets.Dataset) or data.format.get("type") is not None:
        return False
    return getattr(model, "main_input_name", "input_ids") not in data.column_names


def prepare_raw(
    data: datasets.Dataset, model: nn.Module, processor, source: str = "the calibration dataset"
) -> Prepared:
    """Raw image or text rows prepared with the model's own processor, the way the recipes, the CLI and `oneshot`
    prepare theirs (`detect_columns`, `prepare`, `probe`); `ConfigError` naming the column and the fix otherwise."""
    if isinstance(data, datasets.DatasetDict):
        raise ConfigError(
            f"{source} is a DatasetDict with splits {sorted(data)}: pass one split, e.g. dataset['train']"
        )
    kind = modality(model)
    try:
        cols = detect_columns(data.features, kind, source=source)
    except ConfigError as e:
        raise ConfigError(f"{e}; or rename it with dataset.rename_column(old, 'text' / 'image'), or pass rows that "
                          "are already model inputs (dataset.with_transform(...))") from e  # fmt: skip
    if processor is None:
        col = cols.image if kind == "image" else cols.text
        what = "AutoImageProcessor" if kind == "image" else "AutoTokenizer"
        raise ConfigError(
            f"{source} has a raw {kind} column {col!r} but {type(model).__name__} came without a processor to turn it "
            f"into model inputs: load the model from a folder that has one (MPPruner.from_pretrained), pass "
            f"MPPruner(model, config, processor={what}.from_pretrained(...)), or map the rows yourself "
            "(dataset.with_transform(...))"
        )
    channels = getattr(getattr(model, "config", None), "num_channels", None)
    prepared = prepare(data, processor, cols, kind, channels=channels, with_labels=False)
    probe(model, prepared, data, source, processor)
    return prepared
