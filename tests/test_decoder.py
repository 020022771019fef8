"""Issue 23: decoder language models (`AutoModelForCausalLM`) through the pipeline: layer roles of the current
decoder families, block-cached sequential calibration with the blocks' keyword inputs replayed (rotary position
embeddings, attention masks; no KV cache), every method, CAST 2:4, save -> plain reload, export."""

import copy
import logging

import pytest
import torch

import hf_mpprune.core.blockwise as bw
from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.blockwise import block_sequential
from hf_mpprune.core.layers import discover_layers
from tests import tiny_models as tm


def _model(kind):
    return tm.tiny_gpt2() if kind == "gpt2" else tm.tiny_llama(kind)


def _batches(n=2, seq=12, pad_left=3, vocab=99):
    torch.manual_seed(1)
    return [tm.lm_inputs(batch=3, seq=seq, vocab=vocab, pad_left=pad_left) for _ in range(n)]


def _hessians(model, batches, monkeypatch, *, plain=False, joined=True):
    """(path, {layer: H}) of a sequential run that rewrites every layer (each row's smallest half set to zero),
    so later Hessians depend on the earlier rewrites."""
    hs = {}

    def on_layer(layer, h):
        hs[layer.name] = h.clone()
        w = layer.matrix_view()
        cut = w.abs().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
        w.mul_((w.abs() > cut).to(w.dtype))

    with monkeypatch.context() as mp:
        if plain:
            mp.setattr(bw, "find_blocks", lambda model, layers: None)
        if not joined:
            mp.setattr(bw, "fuse_batches", lambda cache: None)
        timings = block_sequential(model, list(discover_layers(model)), batches, on_layer)
    return timings, hs


@pytest.mark.parametrize("joined", [False, True])
@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen3", "gemma3"])
def test_cached_blocks_give_the_plain_path_hessians(kind, joined, monkeypatch, caplog):
    """Per-layer Hessians of the block-cached path equal those of re-running the whole model per layer, on
    left-padded batches (a real attention mask reaches the blocks); no silent fallback: the path is 'blocks',
    logged, and Gemma 3's two kinds of layers (sliding-window / global: other masks) are replayed per kind."""
    model = _model(kind)
    batches = _batches(vocab=model.config.vocab_size)
    t0, h0 = _hessians(copy.deepcopy(model), batches, monkeypatch, plain=True)
    with caplog.at_level(logging.INFO, logger="hf_mpprune"):
        t1, h1 = _hessians(copy.deepcopy(model), batches, monkeypatch, joined=joined)
    assert t0.path.startswith("plain") and t1.path == "blocks"
    assert "cached block inputs" in caplog.text
    assert t1.extra.get("joined_batches") == (2 if joined else None)
    assert t1.extra.get("block_kinds") == (2 if kind == "gemma3" else None)
    assert list(h1) == list(h0) and len(h0) == len(discover_layers(model))
    for name in h0:
        torch.testing.assert_close(h1[name], h0[name], rtol=1e-5, atol=1e-7 * float(h0[name].abs().max()))


def test_one_kind_of_inputs_for_every_block_would_be_wrong(monkeypatch):
    """The per-kind replay is needed: handing Gemma 3's global layer the sliding-window mask of block 0 changes
    its Hessians (so the equality above is not vacuous)."""
    model = tm.tiny_llama("gemma3")
    batches = _batches()
    _, h0 = _hessians(copy.deepcopy(model), batches, monkeypatch, plain=True)
    with monkeypatch.context() as mp:
        mp.setattr(bw, "block_kinds", lambda inputs, types=None: [0] * len(inputs))
        _, h1 = _hessians(copy.deepcopy(model), batches, monkeypatch)
    late = [n for n in h0 if n.startswith("model.layers.2.")]
    assert late and any(not torch.allclose(h1[n], h0[n], rtol=1e-3) for n in late)


def test_calibration_forwards_build_no_kv_cache(monkeypatch):
    """Calibration forwards pass use_cache=False: the blocks get no cache object (a cache would force the plain
    path) and the model builds none."""
    model = tm.tiny_llama()
    seen = []
    model.model.layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((kwargs.get("use_cache"), kwargs.get("past_key_values"))),
        with_kwargs=True,
    )
    pruner = MPPruner(model, PruningConfig(method="sparsegpt", sparsity=0.5))
    pruner.prune(calibration=_batches())
    assert seen and all(use is False and cache is None for use, cache in seen)
    assert pruner.ledger.steps[-1]["time_split"]["path"] == "blocks"
