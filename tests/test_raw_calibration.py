"""`MPPruner.prune(calibration=...)` takes a raw `datasets` dataset (image or text column) and prepares it with the
model's own processor, through the data layer the CLI and `oneshot` use; what it cannot prepare is refused with the
column named and the fix (issue 25)."""

import os

import datasets
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, DataCollatorWithPadding

from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.builtins.sources import make_sentences

from .data_helpers import digits_imagefolder, tiny_bert_dir, tiny_vit_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    base = tmp_path_factory.mktemp("raw")
    return tiny_vit_dir(str(base / "vit")), digits_imagefolder(str(base / "photos"), n_train=24, n_val=4)


def _pixels(processor):
    def transform(batch):
        return {
            "pixel_values": processor([im.convert("RGB") for im in batch["image"]], return_tensors="pt")[
                "pixel_values"
            ]
        }

    return transform


@pytest.mark.parametrize("config", [PruningConfig("wanda", 0.5, calibration_samples=16),
                                    PruningConfig("cast", pattern="2:4", calibration_samples=16)], ids=["wanda", "cast"])  # fmt: skip
def test_a_raw_imagefolder_calibrates_like_the_processed_one(photos, config):
    vit, folder = photos
    raw = datasets.load_dataset("imagefolder", data_dir=folder)["train"]
    pruner = MPPruner.from_pretrained(vit, config)
    got = pruner.prune(calibration=raw)
    manual = MPPruner.from_pretrained(vit, config)  # the transformers image-classification guide's way, by hand
    want = manual.prune(calibration=raw.with_transform(_pixels(AutoImageProcessor.from_pretrained(vit))))
    assert got.sha256() == want.sha256() and got.sparsity() == pytest.approx(want.sparsity())


def test_a_raw_text_dataset_is_tokenized_and_padded_per_batch(tmp_path, minilm_path):
    bert = tiny_bert_dir(str(tmp_path / "bert"), tokenizer_from=minilm_path)
    sentences = make_sentences(24, seed=2)
    raw = datasets.Dataset.from_dict({"text": sentences, "id": list(range(24))})
    config = PruningConfig("wanda", 0.5, calibration_samples=24, calibration_batch_size=8)
    got = MPPruner.from_pretrained(bert, config).prune(calibration=raw)
    tok = AutoTokenizer.from_pretrained(bert)
    rows = [dict(tok(s, truncation=True, max_length=512)) for s in sentences]

    class Padded:  # the tokenizer's rows, padded per batch by its collator
        collator = DataCollatorWithPadding(tok)

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    want = MPPruner.from_pretrained(bert, config).prune(calibration=Padded())
    assert got.sha256() == want.sha256()


def test_what_cannot_be_prepared_is_refused_with_the_column_and_the_fix(photos, tmp_path):
    vit, folder = photos
    raw = datasets.load_dataset("imagefolder", data_dir=folder)
    config = PruningConfig("wanda", 0.5, calibration_samples=8)
    pruner = MPPruner.from_pretrained(vit, config)
    with pytest.raises(ConfigError, match=r"DatasetDict with splits \['train', 'validation'\].*dataset\['train'\]"):
        pruner.prune(calibration=raw)
    model = pruner.model
    bare = MPPruner(model, config)
    bare.source = None  # an in-memory model with no folder to take a processor from
    with pytest.raises(ConfigError, match=r"raw image column 'image'.*processor=AutoImageProcessor"):
        bare.prune(calibration=raw["train"])
    odd = datasets.Dataset.from_dict({"caption": ["a"] * 4, "alt": ["b"] * 4})
    with pytest.raises(
        ConfigError, match=r"no image column; its columns are: caption \(string\), alt \(string\).*rename_column"
    ):
        pruner.prune(calibration=odd)
    assert torch.equal(pruner.model.vit.layers[0].mlp.fc1.weight, model.vit.layers[0].mlp.fc1.weight)
    assert pruner.masks is None and not os.listdir(tmp_path)  # nothing pruned, nothing written
