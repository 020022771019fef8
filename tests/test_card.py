"""Model cards: license inherited from the base card or the recipe, pipeline_tag from transformers' pipeline
registry, title from the model name, base_model_relation, model-index that round-trips through huggingface_hub."""

import os

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData, metadata_eval_result
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from transformers import BertConfig, BertModel

import hf_mpprune.hub.card_meta as card_meta
from hf_mpprune import KeepPattern, MPPruner, PruningConfig
from hf_mpprune.hub.card import make_card
from hf_mpprune.hub.card_meta import pipeline_tag


BASE_CARD = "---\nlicense: other\nlicense_name: tiny-license\nlicense_link: LICENSE\nlanguage: en\n---\n# base\n"


@pytest.fixture
def base_dir(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    path = tmp_path / "tiny-bert-base"
    BertModel(cfg).save_pretrained(path)
    (path / "README.md").write_text(BASE_CARD, encoding="utf-8")
    return path


def _pruned(path):
    pruner = MPPruner.from_pretrained(path)
    pruner = MPPruner(pruner.model, PruningConfig("magnitude", 0.5, pattern=KeepPattern(2, 4)))
    pruner.ledger.identity["base_model"] = str(path)
    pruner.prune()
    rec = pruner.ledger.add_metric(
        "accuracy", 0.75, dataset="nyu-mll/glue", split="validation", task="text-classification"
    )
    rec.update(dataset_config="sst2", dataset_revision="bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c")
    pruner.ledger.add_metric("accuracy", 0.8, dataset="nyu-mll/glue", split="validation", stage="base")
    return pruner


def test_card_has_license_pipeline_tag_title_and_valid_model_index(base_dir, tmp_path):
    out = _pruned(base_dir).save_pretrained(tmp_path / "out-folder")
    text = (tmp_path / "out-folder" / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)  # strict parse: raises on malformed metadata / model-index
    data = card.data
    assert (data.license, data.license_name, data.license_link) == ("other", "tiny-license", "LICENSE")
    assert data.pipeline_tag == "feature-extraction" and data.library_name == "transformers"
    assert "# tiny-bert-base-mpprune-magnitude-2of4" in card.text and "out-folder" not in card.text.split("\n")[1]
    assert data.model_name == "tiny-bert-base-mpprune-magnitude-2of4" and os.path.basename(out) == "out-folder"
    assert data.base_model is None and getattr(data, "base_model_relation", None) is None  # local base: no Hub link
    (res,) = data.eval_results  # base-stage numbers stay out of model-index
    assert (res.dataset_config, res.dataset_revision, res.dataset_split) == (
        "sst2", "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c", "validation",
    )  # fmt: skip
    # huggingface_hub's own round trip: model-index -> EvalResult -> model-index is lossless
    meta = yaml.safe_load(text.split("---")[1])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == data.model_name and eval_results_to_model_index(name, results) == meta["model-index"]
    # and equals what huggingface_hub's documented helper builds for the same numbers
    ref = metadata_eval_result(
        model_pretty_name=name, task_pretty_name=None, task_id="text-classification", metrics_pretty_name="accuracy (pruned)",
        metrics_id="accuracy", metrics_value=0.75, dataset_pretty_name="nyu-mll/glue", dataset_id="nyu-mll/glue",
        dataset_config="sst2", dataset_split="validation", dataset_revision="bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c",
    )  # fmt: skip
    for metric in ref["model-index"][0]["results"][0]["metrics"]:
        assert metric.pop("verified") is False  # the helper always adds `verified: false`; we leave it unset
    assert ref["model-index"] == meta["model-index"]
    ModelCardData(
        **{k.replace("-", "_"): v for k, v in meta.items() if k != "model-index"}, ignore_metadata_errors=False
    )


def test_hub_base_model_gives_relation_and_cached_card_license(base_dir, tmp_path, monkeypatch):
    pruner = _pruned(base_dir)
    pruner.ledger.identity["base_model"] = "tiny-org/tiny-bert"
    cached = tmp_path / "cached-card.md"
    cached.write_text("---\nlicense: apache-2.0\n---\n", encoding="utf-8")
    seen = []
    monkeypatch.setattr(
        card_meta, "try_to_load_from_cache", lambda repo, f, revision=None: seen.append(repo) or str(cached)
    )
    data = ModelCard(make_card(pruner)).data
    assert seen == ["tiny-org/tiny-bert"] and data.license == "apache-2.0"
    assert data.base_model == "tiny-org/tiny-bert" and data.base_model_relation == "finetune"
    assert data.model_name == "tiny-bert-mpprune-magnitude-2of4"
    pruner.recipe = {"name": "tiny-bert-2of4", "model": {"id": "tiny-org/tiny-bert", "license": "mit"}}
    data = ModelCard(make_card(pruner)).data
    assert data.license == "mit" and data.model_name == "tiny-bert-2of4"  # the recipe wins
    pruner.recipe, pruner.ledger.identity["base_model"] = None, "builtin:digits-vit"
    assert ModelCard(make_card(pruner)).data.model_name == "digits-vit-mpprune-magnitude-2of4"


def test_pipeline_tag_comes_from_the_pipeline_registry():
    assert pipeline_tag("ViTForImageClassification", "pixel_values") == "image-classification"
    assert pipeline_tag("ViTModel", "pixel_values") == "image-feature-extraction"  # AutoModel serves both kinds
    assert pipeline_tag("BertModel", "input_ids") == "feature-extraction"
    assert pipeline_tag("BertForMaskedLM", "input_ids") == "fill-mask"
    assert pipeline_tag("GPT2LMHeadModel", "input_ids") == "text-generation"
    assert pipeline_tag("NotATransformersModel", "input_ids") is None


def test_model_cards_readme_has_real_newlines():
    path = os.path.join(os.path.dirname(__file__), "..", "model_cards", "README.md")
    text = open(path, encoding="utf-8").read()
    assert "\\n" not in text and text.startswith("# Model cards\n\n")


def test_no_license_for_ids_that_are_not_hub_ids(tmp_path):
    from hf_mpprune.hub.card_meta import base_card_license

    assert base_card_license("builtin:minilm") == {} and base_card_license("a/b/c--d") == {}
    assert base_card_license("org/bad..name") == {}  # passes our shape check, refused by huggingface_hub
    assert base_card_license(str(tmp_path / "missing-folder")) == {} and base_card_license(None) == {}
