"""Reading a model's output: the one `logits_of` used by training, deployment checks and certificates, and
`is_causal_lm` (is the output next-token logits, to be compared with labels shifted by one)."""

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


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


_CAUSAL_LM_CLASSES = {
    name
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    for name in ((value,) if isinstance(value, str) else value)
}


def is_causal_lm(model) -> bool:
    """A decoder language model (an `AutoModelForCausalLM` class, or a model whose loss is transformers'
    `ForCausalLM` loss): its logits at position t predict token t + 1 (labels are shifted), and its forward takes
    `use_cache`. A PEFT wrapper is looked through."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    return type(base).__name__ in _CAUSAL_LM_CLASSES or getattr(base, "loss_type", None) == "ForCausalLM"
