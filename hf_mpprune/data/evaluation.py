"""Evaluation as users expect it: top-1 / top-5 for image and text classifiers, perplexity for decoder language
models, embedding agreement with the dense model for encoders. The numbers come from `hf_mpprune.metrics` (the one
implementation; the packaged `evaluate` modules wrap the same functions for users of `evaluate.load`) and go into
the ledger with the dataset's id, config, split and revision, which is what the model card's model-index is built
from."""

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.ledger import Ledger
from ..core.outputs import is_causal_lm
from ..core.tasks import infer_task
from ..metrics import compute_topk, embedding_agreement
from ..metrics.perplexity import perplexity, window_nll
from ..training.trainer import mean_pool
from .preprocess import Prepared


logger = logging.getLogger(__name__)

TASKS = {"image": "image-classification", "text": "text-classification"}


def task_of(model: nn.Module, prepared: Prepared) -> str:
    """`text-generation` (perplexity) for decoder language models, `image-classification` /
    `text-classification` for classifiers (their task from optimum's `TasksManager`) with labelled data,
    `feature-extraction` (embedding agreement) for encoders."""
    if is_causal_lm(model):
        return "text-generation"
    if infer_task(model) in TASKS.values() and prepared.has_labels:
        return TASKS[prepared.modality]
    return "feature-extraction"


@torch.no_grad()
def _outputs(model: nn.Module, batch: dict[str, torch.Tensor]):
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})


def evaluate_model(
    model: nn.Module, prepared: Prepared, *, task: str, teacher: nn.Module | None = None, batch_size: int = 64
) -> dict[str, float]:
    """`{"top1", "top5"}` (classification), `{"perplexity"}` (decoder LMs, on the stride windows of `prepared`,
    `hf_mpprune.metrics.perplexity`) or `{"embedding_agreement", "embedding_agreement_min"}` (encoders, against
    `teacher`, mean-pooled `last_hidden_state` as in sentence-transformers)."""
    if task == "text-generation":
        windows = prepared.dataset.with_format(None).to_list()
        return {"perplexity": perplexity(*window_nll(model, windows, batch_size=batch_size))}
    was = model.training
    model.eval()
    try:
        if task.endswith("classification"):
            logits, labels = [], []
            for b in prepared.batches(batch_size):
                logits.append(_outputs(model, b).logits.float().cpu())
                labels.append(b["labels"])
            z, y = torch.cat(logits).numpy(), torch.cat(labels).numpy()
            k = [1, 5] if z.shape[-1] > 5 else [1]
            return {key: float(v) for key, v in compute_topk(z, y, k).items()}
        if teacher is None:
            raise ConfigError("embedding agreement needs the dense model as a reference (teacher)")
        teacher.eval()
        s, t = [], []
        for b in prepared.batches(batch_size):
            mask = b.get("attention_mask")
            s.append(mean_pool(_outputs(model, b).last_hidden_state, mask).float().cpu())
            t.append(mean_pool(_outputs(teacher, b).last_hidden_state, mask).float().cpu())
        s_all, t_all = torch.cat(s).numpy(), torch.cat(t).numpy()
        res = embedding_agreement(s_all, t_all)
        return {"embedding_agreement": float(res["mean_cosine"]), "embedding_agreement_min": float(res["min_cosine"])}
    finally:
        model.train(was)


def record_metrics(ledger: Ledger, metrics: dict[str, float], info: dict[str, Any], *, task: str, stage: str) -> None:
    """One ledger metric per value, with the dataset id, split expression, config and revision (or fingerprint)."""
    for name, value in metrics.items():
        if not np.isfinite(value):
            raise ConfigError(f"metric {name} is {value}; the model produced non-finite outputs")
        rec = ledger.add_metric(name, value, dataset=info["dataset"], split=info["split"], task=task, stage=stage)
        rec.update(dataset_config=info.get("config"), dataset_revision=info.get("revision") or info.get("fingerprint"))
        if info.get("dataset_args"):
            rec["dataset_args"] = info["dataset_args"]
