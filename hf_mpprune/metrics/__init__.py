"""Evaluation helpers for the Trainer: top-k accuracy (classifiers) and embedding agreement (encoders).

Plain functions, usable without the `evaluate` library (`compute_topk`, `embedding_agreement`,
`make_compute_metrics` for `Trainer(compute_metrics=...)`). The same metrics ship as `evaluate` modules inside
the package, because the Hub-hosted ones cannot be fetched offline::

    import evaluate
    from hf_mpprune.metrics import TOPK_ACCURACY, EMBEDDING_AGREEMENT
    topk = evaluate.load(TOPK_ACCURACY)            # a local folder: no Hub access
    topk.compute(predictions=logits, references=labels, k=[1, 5])
"""

import os
from collections.abc import Callable, Sequence

import numpy as np

from ..core.errors import ConfigError


_HERE = os.path.dirname(os.path.abspath(__file__))
TOPK_ACCURACY = os.path.join(_HERE, "topk_accuracy")
EMBEDDING_AGREEMENT = os.path.join(_HERE, "embedding_agreement")


def compute_topk(logits, labels, k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """`{"top1": …, "top5": …}`: fraction of rows whose label is among the k largest logits.

    Ties are broken by position (the earlier class wins), like `torch.topk` on CPU. `k` larger than the number
    of classes counts every row as correct. Rows labelled -100 are ignored.
    """
    scores = np.asarray(logits, dtype=np.float64)  # (N, C)
    y = np.asarray(labels).reshape(-1)  # (N,)
    keep = y != -100
    scores, y = scores[keep], y[keep]
    # rank of the true class = number of classes scoring strictly higher, plus earlier classes scoring equal
    true = scores[np.arange(len(y)), y][:, None]  # (N, 1)
    cols = np.arange(scores.shape[1])[None, :]
    rank = (scores > true).sum(1) + ((scores == true) & (cols < y[:, None])).sum(1)  # (N,)
    return {f"top{int(kk)}": float((rank < kk).mean()) if len(y) else 0.0 for kk in k}


def embedding_agreement(student, teacher) -> dict[str, float]:
    """Mean and minimum cosine similarity between paired embeddings `(N, H)` (1.0 = identical directions)."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    if s.shape != t.shape:
        raise ConfigError(f"embeddings must have the same shape, got {s.shape} and {t.shape}")
    num = (s * t).sum(-1)
    den = np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
    cos = num / den
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def make_compute_metrics(kind: str = "classification", k: Sequence[int] = (1, 5)) -> Callable:
    """A `compute_metrics(eval_pred)` for `Trainer`.

    * `"classification"`: top-k accuracy of `eval_pred.predictions` (logits) against `eval_pred.label_ids`.
    * `"embedding"`: agreement of `eval_pred.predictions` (student embeddings) with `eval_pred.label_ids`
      (teacher embeddings), which is what `MPDistillationTrainer` yields in `distill_mode="features"`.
    """
    if kind == "classification":

        def compute(eval_pred):
            preds = eval_pred.predictions
            preds = preds[0] if isinstance(preds, tuple) else preds
            return compute_topk(preds, eval_pred.label_ids, k)

    elif kind == "embedding":

        def compute(eval_pred):
            return embedding_agreement(eval_pred.predictions, eval_pred.label_ids)

    else:
        raise ConfigError(f"kind must be 'classification' or 'embedding', got {kind!r}")
    return compute


__all__ = ["EMBEDDING_AGREEMENT", "TOPK_ACCURACY", "compute_topk", "embedding_agreement", "make_compute_metrics"]
