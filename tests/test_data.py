"""The data layer: split expressions, loading local datasets, column detection, seeded carving with provenance,
and one clear error (nothing written) for each kind of bad input."""

import os

import datasets
import numpy as np
import pytest

from hf_mpprune import ConfigError, Ledger
from hf_mpprune.data import DataPlan, DatasetSpec, detect_columns, load_split, parse_split
from hf_mpprune.data.spec import slice_indices
from hf_mpprune.recipes.runner import run_recipe
from hf_mpprune.recipes.schema import apply_overrides, recipe_from_dict
from tests.data_helpers import N_TRAIN, N_VAL, digits_imagefolder, sentences_jsonl, tiny_vit_dir


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "images": digits_imagefolder(str(root / "digits")),
        "small": digits_imagefolder(str(root / "digits8"), n_train=20, n_val=10, size=8),
        "jsonl": sentences_jsonl(str(root / "s.jsonl")),
        "vit": tiny_vit_dir(str(root / "vit")),
        "vit_noresize": tiny_vit_dir(str(root / "vit_noresize"), do_resize=False),
    }


def test_split_expressions():
    base, instruction = parse_split("train[:2%]")  # datasets' own parser
    assert base == "train" and isinstance(instruction, datasets.ReadInstruction)
    assert slice_indices("train[:2%]", 1000).tolist() == list(range(20))
    assert slice_indices("validation[-5:]", 100).tolist() == [95, 96, 97, 98, 99]
    assert slice_indices("train[10:20]", 100).tolist() == list(range(10, 20))
    assert slice_indices("train[50%:]", 7).tolist() == [4, 5, 6]  # round(3.5) = 4, as datasets rounds
    for bad in ("train[", "train[1.5:]", "a b", "", "train+validation"):
        with pytest.raises(ConfigError, match="split"):
            slice_indices(bad, 10)


def test_imagefolder_and_jsonl_load_with_provenance(local):
    tr = load_split(DatasetSpec(local["images"]), "train[:10%]")
    assert len(tr.base) == N_TRAIN and tr.indices.tolist() == list(range(30))
    assert tr.info["fingerprint"] and tr.key.endswith(":train")
    cols = detect_columns(tr.base.features, "image")
    assert (cols.image, cols.label) == ("image", "label")
    js = load_split(DatasetSpec(local["jsonl"]), "train")
    assert detect_columns(js.base.features, "text").text == "sentence" and len(js.base) == 96


def test_column_errors_list_the_columns(local):
    feats = load_split(DatasetSpec(local["images"]), "train").base.features
    with pytest.raises(ConfigError, match=r"image column 'pic' is not in .*image \(image\), label \(label"):
        detect_columns(feats, "image", spec=DatasetSpec("x", image_column="pic"))
    two = datasets.Features({"a": datasets.Value("string"), "b": datasets.Value("string")})
    with pytest.raises(ConfigError, match=r"several text columns \(a, b\).*Set text_column"):
        detect_columns(two, "text")
    pair = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string")})
    assert detect_columns(pair, "text").to_dict() == {"text": "premise", "text_pair": "hypothesis"}


def test_plan_carves_disjoint_roles_and_records_hashes(local):
    plan = DataPlan()
    plan.add_train(DatasetSpec(local["images"], selection=0.2, seed=3), selection=True)
    plan.add_calibration(DatasetSpec(local["images"], size=50, seed=3))
    plan.add_evaluation(DatasetSpec(local["images"]))
    sel, train, cal = plan["selection"].indices, plan["train"].indices, plan["calibration"].indices
    assert sel.size == 60 and train.size == 240 and cal.size == 50
    assert not np.intersect1d(sel, train).size and not np.intersect1d(sel, cal).size
    assert plan["evaluation"].indices.size == N_VAL
    ledger = Ledger()
    plan.record(ledger)
    splits = ledger.data["splits"]
    assert set(splits) == {"train", "selection", "calibration", "evaluation"}
    assert splits["selection"]["role"] == "selection" and splits["train"]["role"] == "other"
    assert all(len(s["sha256"]) == 64 and s["fingerprint"] for s in splits.values())
    ledger.check_disjoint()
    # same seed, same rows; another seed, other rows
    again = DataPlan()
    again.add_train(DatasetSpec(local["images"], selection=0.2, seed=3), selection=True)
    assert again["selection"].indices.tolist() == sel.tolist()


def test_overlapping_calibration_and_evaluation_is_an_error(local):
    plan = DataPlan()
    plan.add_calibration(DatasetSpec(local["images"], split="train[:60%]"))
    with pytest.raises(ConfigError, match=r"evaluation and calibration data overlap: \d+ row\(s\).*disjoint"):
        plan.add_evaluation(DatasetSpec(local["images"], split="train[50%:]"))


def test_set_overrides():
    data = {"model": {"id": "a"}, "pruning": [{"method": "ser"}, {"method": "cast"}], "push": {"repo_id": "x/y"}}
    out = apply_overrides(data, ["model.id=./m", "pruning.sparsity=0.6", "pruning.1.pattern=2:4", "push=null",
                                 "calibration.size=16", "calibration.dataset=./d"])  # fmt: skip
    assert out["model"]["id"] == "./m" and [s["sparsity"] for s in out["pruning"]] == [0.6, 0.6]
    assert out["pruning"][1]["pattern"] == "2:4" and "push" not in out and data["push"] == {"repo_id": "x/y"}
    assert out["calibration"] == {"size": 16, "dataset": "./d"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(data, ["model.id"])


def _recipe(local, **sections):
    base = {
        "model": {"id": local["vit"]}, "pruning": {"method": "wanda", "sparsity": 0.5},
        "calibration": {"dataset": local["images"], "size": 16}, "evaluation": {"dataset": local["images"]},
        "output": {"plots": False},
    }  # fmt: skip
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(base)


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"calibration": {"image_column": "picture"}}, r"image column 'picture' is not in .*its columns are: image"),
        ({"evaluation": {"split": "test"}}, r"has no split 'test'; its splits are \['train', 'validation'\]"),
        ({"evaluation": {"split": "train[:20%]"}, "calibration": {"split": "train[:30%]", "size": None}},
         r"overlap: \d+ row\(s\) of .*digits:train"),
        ("small", r"the images of .* do not match the processor: .* pixel_values of shape \(3, 8, 8\) .* takes \(3, 32, 32\)"),
    ],
    ids=["unknown-column", "missing-split", "overlap", "image-mismatch"],
)  # fmt: skip
def test_bad_input_one_clear_error_nothing_written(local, tmp_path, sections, match):
    if sections == "small":  # 8×8 images and a processor that does not resize them, for a 32×32 ViT
        recipe = _recipe(local, model={"processor": local["vit_noresize"]}, calibration={"dataset": local["small"]},
                         evaluation={"dataset": local["small"]})  # fmt: skip
    else:
        recipe = _recipe(local, **sections)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        run_recipe(recipe, output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert not out.exists() and os.listdir(tmp_path) == []  # nothing written: no output dir, no cache


def test_cli_prune_with_dataset_then_eval(local, tmp_path, capsys):
    import json

    from hf_mpprune.cli.main import main

    out = str(tmp_path / "p")
    argv = ["prune", local["vit"], "--method", "wanda", "--sparsity", "0.5", "--dataset", local["images"],
            "--split", "train[:50%]", "--samples", "16", "--eval-split", "validation", "--ignore", "role:head",
            "--output", out]  # fmt: skip
    assert main(argv) == 0
    assert "wanda: sparsity 0.5000 over 12 layers" in capsys.readouterr().out  # 2 blocks x 6; head, embedding dense
    led = Ledger.from_json(os.path.join(out, "mpprune_ledger.json"))
    cal = led.data["splits"]["calibration"]
    assert cal["split"] == "train[:50%]" and cal["count"] == 16 and max(cal["indices"]) < N_TRAIN // 2
    pruned = next(m for m in led.metrics if m["stage"] == "pruned" and m["name"] == "top1")
    assert main(["eval", out, "--dataset", local["images"]]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "image-classification" and record["split"] == "validation"
    assert record["metrics"]["top1"] == pruned["value"]
    assert main(["eval", out, "--dataset", local["images"], "--split", "test"]) == 2
    assert "no split 'test'; its splits are ['train', 'validation']" in capsys.readouterr().err
