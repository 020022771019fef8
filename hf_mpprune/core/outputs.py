"""Reading a model's output: the one `logits_of` used by training, deployment checks and certificates."""

import torch


def logits_of(output, *, hidden_fallback: bool = False) -> torch.Tensor:
    """The logits of a model output: `output.logits` (transformers outputs, or a dict with "logits"), the first
    element of a tuple, or the output itself when it is a tensor. With `hidden_fallback`, an encoder output without
    logits gives its `last_hidden_state` (what a deployment check compares for a headless model)."""
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is not None:
        return logits
    if hidden_fallback and getattr(output, "last_hidden_state", None) is not None:
        return output.last_hidden_state
    if isinstance(output, tuple | list):
        return output[0]
    return output
