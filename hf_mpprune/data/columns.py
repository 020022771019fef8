"""Which columns hold the image, the text (and text pair) and the label: named in the spec, or detected from the
dataset's features where that is unambiguous; otherwise a `ConfigError` that lists the columns and their types."""

from dataclasses import dataclass

import datasets

from ..core.errors import ConfigError


LABEL_NAMES = ("label", "labels", "fine_label", "target", "class", "category")
TEXT_NAMES = ("text", "sentence", "content", "document", "query")
PAIR_NAMES = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
              ("question", "sentence"), ("text", "text_pair"), ("anchor", "positive"))  # fmt: skip


@dataclass
class Columns:
    image: str | None = None
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v is not None}


def describe(features: datasets.Features) -> str:
    def kind(f) -> str:
        if isinstance(f, datasets.Image):
            return "image"
        if isinstance(f, datasets.ClassLabel):
            return f"label ({f.num_classes} classes)"
        if isinstance(f, datasets.Value):
            return f.dtype
        return type(f).__name__

    return ", ".join(f"{name} ({kind(f)})" for name, f in features.items())


def _check(name: str | None, what: str, features: datasets.Features, source: str) -> str | None:
    if name is not None and name not in features:
        raise ConfigError(
            f"{what} column {name!r} is not in {source}; its columns are: {describe(features)}. "
            f"Set {what.replace(' ', '_')}_column to one of them"
        )
    return name


def _one(candidates: list[str], what: str, features: datasets.Features, source: str) -> str | None:
    if len(candidates) > 1:
        raise ConfigError(
            f"several columns of {source} could be the {what} column ({', '.join(candidates)}); its columns are: "
            f"{describe(features)}. Name one with {what.replace(' ', '_')}_column"
        )
    return candidates[0] if candidates else None


def detect_columns(features: datasets.Features, modality: str, *, spec=None, source: str = "the dataset") -> Columns:
    """Columns for a `modality` (`"image"` or `"text"`) model. `spec` (a `DatasetSpec`) may name them."""
    named = Columns(
        image=_check(getattr(spec, "image_column", None), "image", features, source),
        text=_check(getattr(spec, "text_column", None), "text", features, source),
        text_pair=_check(getattr(spec, "text_pair_column", None), "text pair", features, source),
        label=_check(getattr(spec, "label_column", None), "label", features, source),
    )
    cols = Columns(**vars(named))
    if cols.label is None:
        class_labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        cols.label = _one(class_labels, "label", features, source) or next(
            (n for n in LABEL_NAMES if n in features), None
        )
    if modality == "image":
        if cols.image is None:
            images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
            cols.image = _one(images, "image", features, source)
        if cols.image is None:
            raise ConfigError(
                f"the model takes images but {source} has no image column; its columns are: {describe(features)}. "
                "Set image_column, or use a dataset with an Image feature (e.g. an imagefolder)"
            )
        return cols
    if modality != "text":
        raise ConfigError(f"modality must be 'image' or 'text', got {modality!r}")
    if cols.text is None:
        strings = [
            n for n, f in features.items() if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
        ]
        pair = next((p for p in PAIR_NAMES if p[0] in strings and p[1] in strings), None)
        if pair is not None and cols.text_pair is None:
            cols.text, cols.text_pair = pair
        elif len(strings) == 1:
            cols.text = strings[0]
        else:
            by_name = [n for n in TEXT_NAMES if n in strings]
            cols.text = by_name[0] if len(by_name) == 1 else None
            if cols.text is None:
                what = "no text column" if not strings else f"several text columns ({', '.join(strings)})"
                raise ConfigError(
                    f"the model takes text but {source} has {what}; its columns are: {describe(features)}. "
                    "Set text_column (and text_pair_column for pairs)"
                )
    return cols
