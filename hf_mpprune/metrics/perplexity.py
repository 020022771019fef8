"""Perplexity of a causal language model on a token stream, the way transformers' "Perplexity of fixed-length
models" guide computes it: windows of at most `max_length` tokens moved by `stride`; in every window only the
tokens not scored by an earlier window are targets, the others are context. No token is scored twice. With
`stride < max_length` every token after the first is scored, with at least `max_length - stride` tokens of context;
with `stride == max_length` (non-overlapping windows, the convention of the LLM pruning papers' WikiText numbers)
the first token of each window has no context and is not scored.

One departure from the guide's loop: the last window ends at the stream's end and starts `max_length` tokens
before it (more context for the last targets, the same targets), so every window has the same length and windows
are batched. The per-window sums of negative log-likelihoods and target counts are returned, so that a paired
bootstrap over windows can compare two models on the same stream.
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError


def stride_windows(ids: Sequence[int], max_length: int, stride: int | None = None) -> list[dict[str, list[int]]]:
    """Rows `{"input_ids", "labels"}` (labels -100 on context positions) covering the stream `ids`."""
    stride = max_length if stride is None else stride
    if max_length < 2 or not 1 <= stride <= max_length:
        raise ConfigError(f"need max_length >= 2 and 1 <= stride <= max_length, got {max_length} and {stride}")
    ids = [int(t) for t in ids]
    n = len(ids)
    if n < 2:
        raise ConfigError(f"the evaluation text has {n} token(s): at least 2 are needed for a perplexity")
    rows, begin, prev_end = [], 0, 0
    while True:
        end = min(begin + max_length, n)
        start = max(0, end - max_length)
        window = ids[start:end]
        context = prev_end - start
        rows.append({"input_ids": window, "labels": [-100] * context + window[context:]})
        prev_end = end
        if end == n:
            return rows
        begin += stride


@torch.no_grad()
def window_nll(model: nn.Module, windows: list[dict], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(negative log-likelihood sum, number of targets) per window, float64 / int64 arrays, no KV cache."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    nll, count = [], []
    try:
        for i in range(0, len(windows), batch_size):
            rows = windows[i : i + batch_size]
            if len({len(r["input_ids"]) for r in rows}) != 1:
                raise ConfigError("windows of one batch must have the same length (use stride_windows)")
            ids = torch.tensor([r["input_ids"] for r in rows], device=device)
            labels = torch.tensor([r["labels"] for r in rows], device=device)[:, 1:]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
            nll.append(loss.double().sum(1).cpu().numpy())
            count.append((labels != -100).sum(1).cpu().numpy())
    finally:
        model.train(was)
    return np.concatenate(nll), np.concatenate(count).astype(np.int64)


def perplexity(nll: np.ndarray, count: np.ndarray) -> float:
    """exp(total NLL / total targets)."""
    total = int(np.sum(count))
    if total == 0:
        raise ConfigError("no target tokens: the evaluation windows score nothing")
    return float(np.exp(np.sum(nll) / total))


__all__ = ["perplexity", "stride_windows", "window_nll"]
