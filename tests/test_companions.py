"""Checkpoints keep what they came with: the processor of the source folder is saved by default, a
sentence-transformers folder keeps its module stack, `SentenceTransformer(out)` reproduces the pruned model's
embeddings exactly, `pipeline(task, model=out)` works, and `MaskFreezeCallback` keeps every zero through a
`SentenceTransformerTrainer` run (issue 25)."""

import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import pipeline

from hf_mpprune import MaskFreezeCallback, Masks, MPPruner, PruningConfig
from hf_mpprune.builtins.sources import make_sentences

from .data_helpers import tiny_vit_dir


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@pytest.fixture(scope="module")
def pruned_minilm(tmp_path_factory, minilm_path):
    out = str(tmp_path_factory.mktemp("st") / "minilm-50")
    pruner = MPPruner.from_pretrained(minilm_path, PruningConfig("magnitude", 0.5))
    pruner.prune()
    pruner.save_pretrained(out)
    return pruner, out


def test_sentence_transformers_folder_keeps_its_module_stack_and_tokenizer(pruned_minilm, minilm_path):
    _, out = pruned_minilm
    for name in (*ST_FILES, "1_Pooling/config.json", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.path.isdir(os.path.join(out, "2_Normalize"))
    for name in ST_FILES:
        assert open(os.path.join(out, name)).read() == open(os.path.join(minilm_path, name)).read()


def test_sentence_transformer_reproduces_the_pruned_embeddings_exactly(pruned_minilm, minilm_path):
    pruner, out = pruned_minilm
    sentences = make_sentences(16, seed=5)
    reference = SentenceTransformer(minilm_path, device="cpu")  # the source's pipeline around the pruned weights
    reference.transformers_model.load_state_dict(pruner.model.state_dict())
    want = reference.encode(sentences, convert_to_tensor=True)
    got = SentenceTransformer(out, device="cpu").encode(sentences, convert_to_tensor=True)
    assert torch.equal(got, want)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(sentences)))  # the Normalize module is there
    dense = SentenceTransformer(minilm_path, device="cpu").encode(sentences, convert_to_tensor=True)
    assert not torch.equal(got, dense)  # the pruned weights, not the source's


def test_pipeline_loads_the_pruned_folder(pruned_minilm, tmp_path):
    pruner, out = pruned_minilm
    text = "the mountain cabin was cold in the evening"
    features = np.asarray(pipeline("feature-extraction", model=out, device="cpu")(text))
    with torch.no_grad():
        ids = pruner.processor(text, return_tensors="pt")
        want = pruner.model(**ids).last_hidden_state.numpy()
    np.testing.assert_allclose(features, want, rtol=0, atol=1e-5)
    vit = tiny_vit_dir(str(tmp_path / "vit"))
    p = MPPruner.from_pretrained(vit, PruningConfig("magnitude", 0.5))
    p.prune()
    p.save_pretrained(tmp_path / "vit-50")
    assert os.path.isfile(tmp_path / "vit-50" / "preprocessor_config.json")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    preds = pipeline("image-classification", model=str(tmp_path / "vit-50"), device="cpu")(image, top_k=3)
    assert len(preds) == 3 and {"label", "score"} <= set(preds[0])


def test_processor_false_saves_none(tmp_path):
    vit = tiny_vit_dir(str(tmp_path / "vit"))
    p = MPPruner.from_pretrained(vit, PruningConfig("magnitude", 0.5))
    p.prune()
    p.save_pretrained(tmp_path / "bare", processor=False)
    assert not os.path.isfile(tmp_path / "bare" / "preprocessor_config.json")


def test_mask_freeze_callback_keeps_every_zero_through_sentence_transformer_trainer(pruned_minilm, tmp_path):
    _, out = pruned_minilm
    model = SentenceTransformer(out, device="cpu")
    masks = Masks.load(os.path.join(out, "mpprune_masks.safetensors"))
    before = {n: model.transformers_model.get_submodule(n).weight.detach().clone() for n in masks.names}
    sentences = make_sentences(16, seed=7)
    data = Dataset.from_dict({"anchor": sentences[:8], "positive": sentences[8:]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(model),
        callbacks=[MaskFreezeCallback(masks)],
    )  # fmt: skip
    trainer.train()
    changed = 0
    for name, keep in masks.items():
        w = model.transformers_model.get_submodule(name).weight.detach()
        assert int((w[~keep] != 0).sum()) == 0, name
        changed += int((w[keep] != before[name][keep]).sum())
    assert changed > 0  # the kept weights were trained
