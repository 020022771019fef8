"""Issue 23: decoder language models (`AutoModelForCausalLM`) through the pipeline: layer roles of the current
decoder families, block-cached sequential calibration with the blocks' keyword inputs replayed (rotary position
embeddings, attention masks; no KV cache), every method, CAST 2:4, save -> plain reload, export."""

import copy
import logging

import pytest
import torch

import hf_mpprune.core.blockwise as bw
import hf_mpprune.core.joined as joined_mod
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
            mp.setattr(joined_mod, "join_batches", lambda batches: None)
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


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_padded_batches_of_other_lengths_are_joined_and_padding_stays_out(kind, monkeypatch):
    """Left-padded batches of different lengths: joined into ONE batch (padded to the longest, per-kind keyword
    inputs captured on the joined batch), with the same Hessians as the per-batch cached path and the plain path,
    and as the same sequences with more padding (padded positions never enter a Hessian)."""
    model = _model(kind)
    torch.manual_seed(2)
    batches = [tm.lm_inputs(batch=2, seq=n, vocab=model.config.vocab_size, pad_left=3) for n in (12, 9)]
    more = [{k: torch.cat([torch.zeros_like(v[:, :4]), v], 1) for k, v in b.items()} for b in batches]
    t0, h0 = _hessians(copy.deepcopy(model), batches, monkeypatch, plain=True)
    t1, h1 = _hessians(copy.deepcopy(model), batches, monkeypatch)
    t2, h2 = _hessians(copy.deepcopy(model), batches, monkeypatch, joined=False)
    t3, h3 = _hessians(copy.deepcopy(model), more, monkeypatch)
    assert t1.extra.get("joined_batches") == 2 == t3.extra.get("joined_batches") and "joined_batches" not in t2.extra
    assert t1.path == t2.path == t3.path == "blocks" and t1.extra.get("block_kinds") == (
        2 if kind == "gemma3" else None
    )
    for name in h0:
        for other in (h1, h2, h3):
            torch.testing.assert_close(other[name], h0[name], rtol=1e-5, atol=1e-6 * float(h0[name].abs().max()))


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


# ---- layers and roles ---------------------------------------------------------------------------------------------
def _family(name):
    import transformers as tr

    if name == "gpt2":
        return tm.tiny_gpt2()
    if name == "opt":
        cfg = tr.OPTConfig(vocab_size=99, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64, word_embed_proj_dim=32)  # fmt: skip
        return tr.OPTForCausalLM(cfg).eval()
    return tm.tiny_llama(name)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt2", "opt"])
def test_decoder_layers_have_attn_and_mlp_roles_and_lm_head_stays_dense(name):
    """Every registered layer of a decoder block is an attention or MLP projection; the LM head and the embedding
    projections (OPT's project_in / project_out) are left dense by default, each with its reason."""
    model = _family(name)
    layers = discover_layers(model)
    roles = layers.by_role()
    assert {la.role for la in layers} == {"attn", "mlp"}
    leaf = {la.name.rsplit(".", 1)[-1] for la in layers}
    expected = {
        "gpt2": {"c_attn", "c_proj", "c_fc"},
        "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    }.get(name, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    assert leaf == expected
    assert len(roles["attn"]) and len(roles["mlp"]) and not roles["head"] and not roles["other"]
    assert "lm_head" in layers.excluded  # tied to the embedding, or skipped as the task head
    if name == "opt":
        assert {"model.decoder.project_in", "model.decoder.project_out"} <= set(layers.excluded)
    if name == "llama":  # GQA: k / v project to fewer heads than q
        assert layers["model.layers.0.self_attn.k_proj"].shape == (32, 64)
        assert layers["model.layers.0.self_attn.q_proj"].shape == (64, 64)
    targeted = discover_layers(model, targets=["Linear", "Conv1D", "role:head"])
    assert ("lm_head" in targeted) == (not model.config.tie_word_embeddings)


def test_analyze_fits_every_decoder_matrix():
    """MP analysis without a config covers every matrix, the (untied) LM head included; with a pruning config
    only the block projections."""
    model = tm.tiny_llama()
    report = MPPruner(model).analyze(progress=False)
    names = [r.name for r in report]
    assert len(names) == 15 and "lm_head" in names and all(r.fit.sigma_plus > 0 for r in report)
    pruned = MPPruner(model, PruningConfig(method="mp-wanda", sparsity=0.5)).analyze(progress=False)
    assert len(pruned) == 14 and "lm_head" not in [r.name for r in pruned]


# ---- every method, save -> plain reload, export ------------------------------------------------------------------
def _lm_step(batches):
    """A real train step for the cyclic methods (SER / Hybrid): SGD on the causal-LM loss over `batches`; only the
    `trainable` entries move in SER's phase A, and pruned entries stay zero when fine-tuning under `masks`."""

    def step(model, masks, *, phase, trainable=None, **kw):
        grads = trainable if trainable is not None else (dict(masks.items()) if masks is not None else {})
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        model.train()
        for b in batches:
            model(**b, labels=b["input_ids"], use_cache=False).loss.backward()
            for name, keep in grads.items():
                w = model.get_submodule(name).weight
                w.grad.mul_(keep.to(w.grad.dtype))
            opt.step()
            opt.zero_grad()
            if masks is not None:
                masks.apply_(model)
        model.eval()
        return {"steps": len(batches)}

    return step


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_every_registered_method_prunes_a_causal_lm(kind):
    """Every method of `hf_mpprune.list_methods()` on a tiny Llama (GQA) and GPT-2 (fused Conv1D): exact 50 %
    (k:n methods: a legal 2:4 pattern), exact zeros, finite logits; sequential methods on cached blocks."""
    import hf_mpprune
    from hf_mpprune.core.masks import kn_violations
    from hf_mpprune.core.registry import get_method

    batches = _batches(seq=16)
    x = tm.lm_inputs(batch=2, seq=10)
    for method in hf_mpprune.list_methods():
        model = _model(kind)
        spec = get_method(method)
        cfg = {"method": method, "pattern": "2:4"} if spec.structured else {"method": method, "sparsity": 0.5}
        pruner = MPPruner(model, PruningConfig.from_dict(cfg))
        masks = pruner.prune(calibration=batches, train_step=_lm_step(batches) if spec.needs_training else None)
        assert masks.num_pruned == pruner.layers.total_params // 2, method
        for la in pruner.layers:
            assert bool((la.weight[~masks[la.name]] == 0).all()), (method, la.name)
            if spec.structured:
                assert kn_violations(la.matrix_view().detach(), masks.pattern)[1] == 0, (method, la.name)
        with torch.no_grad():
            assert torch.isfinite(model(**x).logits).all(), method
        split = pruner.ledger.steps[-1].get("time_split") or {}
        if method in ("sparsegpt", "mp-sparsegpt", "sparsegpt-kn"):
            assert split["path"] == "blocks", method


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_save_then_plain_automodel_gives_identical_logits(kind, tmp_path):
    """sparsegpt 50 % and CAST 2:4 -> save_pretrained -> transformers' AutoModelForCausalLM (no hf_mpprune) and
    MPPruner.from_pretrained (masks verified) give the pruned model's logits bit for bit."""
    from transformers import AutoModelForCausalLM

    x = tm.lm_inputs(batch=2, seq=10, pad_left=2)
    for cfg in ({"method": "sparsegpt", "sparsity": 0.5}, {"method": "cast", "pattern": "2:4"}):
        model = _model(kind)
        pruner = MPPruner(model, PruningConfig.from_dict(cfg))
        pruner.prune(calibration=_batches())
        out = tmp_path / cfg["method"]
        pruner.save_pretrained(out)
        with torch.no_grad():
            want = model(**x).logits
            plain = AutoModelForCausalLM.from_pretrained(out).eval()
            assert type(plain) is type(model) and torch.equal(plain(**x).logits, want)
            back = MPPruner.from_pretrained(out)
            assert back.masks.sha256() == pruner.masks.sha256() and torch.equal(back.model.eval()(**x).logits, want)


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("llama", "pt2"), pytest.param("gpt2", "pt2", marks=pytest.mark.slow),  # ~20 s per export on 2 cores
     pytest.param("llama", "onnx", marks=pytest.mark.slow), pytest.param("gpt2", "onnx", marks=pytest.mark.slow)],
)  # fmt: skip
def test_pruned_causal_lm_exports_with_its_zeros(kind, fmt, tmp_path):
    """torch.export / ONNX of the pruned decoder (full-sequence forward, no KV cache among the outputs): the
    artifact gives eager's logits at other batch sizes / lengths and keeps every pruned zero bit-exact; the
    model's use_cache setting is restored afterwards."""
    from hf_mpprune.deploy.export import export

    model = _model(kind)
    pruner = MPPruner(model, PruningConfig(method="wanda", sparsity=0.5))
    pruner.prune(calibration=_batches())
    report = export(model, tmp_path / f"lm.{fmt}", format=fmt, masks=pruner.masks)
    assert report.output_names == ["logits"] and report.max_abs_diff <= 1e-5
    assert report.layers_checked == len(pruner.layers) and report.zeros_checked == pruner.masks.num_pruned
    assert model.config.use_cache is True


# ---- frozen-mask fine-tuning -------------------------------------------------------------------------------------
def _windows(n=8, seq=16, vocab=99):
    torch.manual_seed(2)
    ids = torch.randint(3, vocab, (n, seq))
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]


def _args(tmp_path, **kw):
    from hf_mpprune import MPDistillationArguments

    base = {
        "output_dir": str(tmp_path / "run"), "use_cpu": True, "report_to": "none", "learning_rate": 1e-2,
        "warmup_steps": 0, "max_steps": 3, "per_device_train_batch_size": 4, "save_strategy": "no", "seed": 0,
        "disable_tqdm": True, "label_smoothing": 0.0,
    }  # fmt: skip
    return MPDistillationArguments(**{**base, **kw})


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_kd_on_a_causal_lm_shifts_labels_like_transformers(kind, tmp_path):
    """The trainer's loss for a causal LM compares the logits at t with the token at t + 1: with kd_alpha=0 and no
    label smoothing it equals the model's own loss (transformers' ForCausalLM loss), and a teacher equal to the
    student gives KD = 0."""
    from hf_mpprune import MPDistillationTrainer

    model = _model(kind)
    MPPruner(model, PruningConfig(method="magnitude", sparsity=0.5)).prune()
    batch = {k: torch.stack([w[k] for w in _windows()[:4]]) for k in ("input_ids", "attention_mask", "labels")}
    ce = MPDistillationTrainer(model, None, args=_args(tmp_path, kd_alpha=0.0), train_dataset=_windows())
    with torch.no_grad():
        ours, ref = ce.compute_loss(model, batch), model(**batch).loss
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    kd = MPDistillationTrainer(model, copy.deepcopy(model), args=_args(tmp_path, kd_alpha=1.0), train_dataset=[])
    with torch.no_grad():
        assert float(kd.compute_loss(model, batch)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_frozen_mask_distillation_of_a_causal_lm_keeps_every_zero(kind, tmp_path):
    """Logit KD from the dense model: the loss falls, weights move, every pruned entry stays exactly zero, and
    the ledger records the distill step; the result reloads in plain transformers."""
    from transformers import AutoModelForCausalLM

    from hf_mpprune import MPDistillationTrainer

    teacher = _model(kind)
    student = copy.deepcopy(teacher)
    pruner = MPPruner(student, PruningConfig(method="sparsegpt", sparsity=0.6))
    pruner.prune(calibration=_batches())
    before = {la.name: la.weight.detach().clone() for la in pruner.layers}
    args = _args(tmp_path, kd_alpha=0.5, max_steps=6, logging_strategy="steps", logging_steps=1)
    trainer = MPDistillationTrainer(student, teacher, args=args, train_dataset=_windows())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    moved = 0
    for la in pruner.layers:
        keep = pruner.masks[la.name]
        assert bool((la.weight[~keep] == 0).all()), la.name
        moved += int((la.weight[keep] != before[la.name][keep]).sum())
    assert moved > 0
    assert pruner.ledger.steps[-1]["kind"] == "distill"
    pruner.save_pretrained(tmp_path / "kd")
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "kd"), type(student))


def test_lora_on_a_pruned_llama_merges_with_every_zero_kept(tmp_path):
    """PEFT LoRA on q/k/v/o and the MLP of a pruned Llama, trained by the trainer (masks found through the
    wrapper), then `masked_merge`: a plain LlamaForCausalLM with every pruned entry exactly zero, a lossy step
    in the ledger, and a checkpoint that MPPruner.from_pretrained verifies."""
    peft = pytest.importorskip("peft")  # optional extra `hf-mpprune[peft]`
    from hf_mpprune import MPDistillationTrainer
    from hf_mpprune.training.peft import masked_merge

    teacher = tm.tiny_llama()
    student = copy.deepcopy(teacher)
    pruner = MPPruner(student, PruningConfig(method="wanda", sparsity=0.5))
    pruner.prune(calibration=_batches())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = peft.get_peft_model(student, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    trainer = MPDistillationTrainer(lora, teacher, args=_args(tmp_path, kd_alpha=0.5), train_dataset=_windows())
    assert trainer.masks is not None
    trainer.train()
    merged = masked_merge(lora, eval_inputs=tm.lm_inputs(batch=2, seq=8))
    assert type(merged).__name__ == "LlamaForCausalLM"
    for la in discover_layers(merged):
        assert bool((la.weight[~pruner.masks[la.name]] == 0).all()), la.name
    step = pruner.ledger.steps[-1]
    assert step["kind"] == "adapter-merge" and step["lossy"] and 0 < step["update_retention"] < 1
    pruner.save_pretrained(tmp_path / "lora")
    assert MPPruner.from_pretrained(tmp_path / "lora").masks.sha256() == pruner.masks.sha256()
