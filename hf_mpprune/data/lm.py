"""Text data the way decoder language models are calibrated and evaluated (docs/llm.md).

* The documents of a split are joined with blank lines (`"\n\n"`) and tokenized as one text with the tokenizer's
  defaults (e.g. one BOS token at the start for Llama tokenizers): the token stream of transformers' perplexity
  guide and of the WikiText numbers of the LLM pruning papers, so that a perplexity here is comparable to theirs.
* **Calibration**: fixed-length windows of `max_length` tokens cut from that stream, the documents taken in a
  seeded random order, until `size` windows are filled (default 128: the 128 × 2048 convention of SparseGPT /
  Wanda, with `max_length` scaled to the model). Windows have no padding; only the documents used are recorded.
* **Evaluation**: perplexity over the whole stream of the evaluation rows (in their order), with windows of
  `max_length` moved by `stride` (default `max_length`: non-overlapping), as in transformers' "perplexity of
  fixed-length models" (`hf_mpprune.metrics.perplexity`).
* **Training** (distillation): the stream cut into `max_length` windows whose labels are their own tokens.

`max_length` defaults to the model's context (`max_position_embeddings` / `n_positions`), at most 2048.
"""

import logging

import datasets
import numpy as np
from torch import nn
from transformers import default_data_collator

from ..core.errors import ConfigError
from ..metrics.perplexity import stride_windows
from .columns import Columns
from .preprocess import Prepared


logger = logging.getLogger(__name__)

DEFAULT_WINDOWS = 128
MAX_DEFAULT_LENGTH = 2048


def window_length(model: nn.Module, max_length: int | None) -> int:
    """The window length: `max_length`, else the model's context capped at 2048; `ConfigError` past the context."""
    cfg = getattr(model, "config", None)
    context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if max_length is None:
        return min(context or MAX_DEFAULT_LENGTH, MAX_DEFAULT_LENGTH)
    if max_length < 2 or (context and max_length > context):
        raise ConfigError(f"max_length={max_length} must be >= 2 and at most the model's context ({context})")
    return max_length


def token_stream(texts, tokenizer) -> list[int]:
    """The documents joined with `"\n\n"` and tokenized as one text (the tokenizer's default special tokens)."""
    return list(tokenizer("\n\n".join(texts), verbose=False)["input_ids"])


def _rows(ids: list[int], length: int, labels: bool) -> list[dict]:
    rows = []
    for i in range(0, len(ids) - length + 1, length):
        w = ids[i : i + length]
        rows.append({"input_ids": w, "attention_mask": [1] * length, **({"labels": w} if labels else {})})
    return rows


def calibration_windows(
    ds: datasets.Dataset, order: np.ndarray, tokenizer, column: str, length: int, count: int
) -> tuple[list[dict], np.ndarray]:
    """`count` windows of `length` tokens from the documents `ds[order]` taken in that order, and the rows used.
    Documents are tokenized 64 at a time until the windows are filled (a large split is never tokenized whole)."""
    ids: list[int] = []
    used = 0
    step = 64
    while len(ids) < count * length and used < len(order):
        chunk = order[used : used + step]
        ids += token_stream(ds.select(chunk.tolist())[column], tokenizer)
        used += len(chunk)
    rows = _rows(ids, length, labels=False)[:count]
    if not rows:
        raise ConfigError(
            f"the calibration documents hold {len(ids)} tokens: not one window of max_length={length}; "
            "use more rows or a smaller max_length"
        )
    if len(rows) < count:
        logger.warning("calibration: only %d windows of %d tokens (asked for %d)", len(rows), length, count)
    return rows, order[:used]


def prepare_lm(
    ds: datasets.Dataset, indices: np.ndarray, tokenizer, columns: Columns, role: str, *, max_length: int,
    stride: int | None = None, size: int | None = None,
) -> tuple[Prepared, np.ndarray]:  # fmt: skip
    """Rows of token windows for `role` (calibration / evaluation / train / selection) and the rows of `ds` used."""
    if columns.text is None:
        raise ConfigError("a language model needs a text column: set text_column")
    if role == "calibration":
        rows, used = calibration_windows(ds, indices, tokenizer, columns.text, max_length, size or DEFAULT_WINDOWS)
    else:
        ids = token_stream(ds.select(indices.tolist())[columns.text], tokenizer)
        rows = stride_windows(ids, max_length, stride) if role == "evaluation" else _rows(ids, max_length, True)
        used = indices
        if not rows:
            raise ConfigError(f"the {role} rows hold {len(ids)} tokens: not one window of max_length={max_length}")
    prepared = Prepared(
        datasets.Dataset.from_list(rows), default_data_collator, columns, "text", role != "calibration"
    )
    return prepared, used


__all__ = ["calibration_windows", "prepare_lm", "token_stream", "window_length"]
