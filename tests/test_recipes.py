"""Recipes: every shipped file validates; bad input gives clear errors; the offline magnitude recipes run (the
builtins go through the same data layer as user datasets)."""

import copy
import glob
import json
import os

import pytest
import yaml

from hf_mpprune import ConfigError, MPPruner, list_methods
from hf_mpprune.recipes.runner import run_recipe
from hf_mpprune.recipes.schema import LIBRARY, load_recipe, recipe_from_dict


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(LIBRARY, "*.yaml")))
GOOD = {"model": {"id": "builtin:digits-vit"}, "pruning": {"method": "magnitude", "sparsity": 0.5}}


def test_recipe_files_present():
    names = {os.path.basename(f) for f in FILES}
    assert len(FILES) >= 11 and {"vit_b16_hybrid_s050.yaml", "minilm_mp_wanda_s050.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_every_recipe_validates(path):
    r = load_recipe(path)
    assert r.model.id and r.pruning and all(s.method in list_methods() for s in r.pruning)
    for step in r.pruning:
        assert all(0 <= t < 1 for t in step.targets())


def _bad(mutate, match):
    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict(d)


def test_bad_recipes_rejected_with_clear_errors(tmp_path):
    _bad(lambda d: d.update(pruningg={}), r"unknown recipe key\(s\) \['pruningg'\]")
    _bad(lambda d: d["model"].update(revison="main"), r"unknown key\(s\) \['revison'\] in recipe section 'model'")
    _bad(lambda d: d["pruning"].update(sparsty=0.5), r"unknown key\(s\) \['sparsty'\]")
    _bad(lambda d: d["pruning"].update(sparsity="half"), "sparsity must be a number")
    _bad(lambda d: d.update(seed="zero"), "'seed' = 'zero' has the wrong type")
    _bad(lambda d: d.update(model=["x"]), "'model'.*wrong type")
    _bad(lambda d: d.pop("model"), "needs a 'model' section")
    _bad(lambda d: d["model"].update(id=" "), "model.id is empty")
    _bad(lambda d: d.update(calibration={"dataset": "x", "size": "many"}), r"calibration.size = 'many'")
    _bad(lambda d: d["pruning"].update(method="nonsense"), "not a registered method")
    _bad(lambda d: d["pruning"].update(schedule=[0.5, 0.2]), "non-decreasing")
    _bad(lambda d: d["pruning"].update(schedule=[0.2, 0.4]), r"sparsity 0.5 != last schedule entry 0.4")
    _bad(lambda d: d.update(pruning=[{"method": "magnitude"}, {"method": "magnitude", "ignore": ["classifier"]}]),
         "differs from pruning")  # fmt: skip
    _bad(lambda d: d["pruning"].update(method="cast", spectral={"bema_alfa": 1}), "bema_alfa")
    (tmp_path / "r.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "r.yaml")


def test_unregistered_method_is_rejected_at_load(tmp_path):
    bad = copy.deepcopy(GOOD)
    bad["pruning"]["method"] = "not-a-method"
    with pytest.raises(ConfigError, match="'not-a-method' is not a registered method"):
        recipe_from_dict(bad)


def test_push_without_repo_id_fails_before_work(tmp_path):
    r = recipe_from_dict(GOOD)
    with pytest.raises(ConfigError, match="push.repo_id"):
        run_recipe(r, output_dir=str(tmp_path / "out"), push=True, cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path) == []


def test_run_digits_magnitude_recipe_ci_size(tmp_path):
    data = yaml.safe_load(open(os.path.join(LIBRARY, "digits_vit_magnitude_s050.yaml")))
    data["model"]["train_epochs"] = 1  # CI size: the dense model is barely trained; the pipeline is what we test
    data["distill"]["num_train_epochs"] = 1
    data["output"]["plots"] = False
    result = run_recipe(recipe_from_dict(data), output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-5)
    back = MPPruner.from_pretrained(result["output_dir"])  # masks still match the zeros after the KD epoch
    led = back.ledger
    assert [s.get("target_sparsity") for s in led.steps[:3]] == [0.2, 0.35, 0.5] and led.steps[3]["kind"] == "distill"
    assert {m["stage"] for m in led.metrics} == {"base", "pruned", "distilled"}
    assert {m["split"] for m in led.metrics} == {"test"} and {m["name"] for m in led.metrics} == {"top1", "top5"}
    assert (
        set(led.data["splits"]) == {"train", "selection", "evaluation"}
        and led.audits[0]["exact_zeros"] >= back.masks.num_pruned
    )
    sel, train = led.data["splits"]["selection"], led.data["splits"]["train"]  # selection carved from train
    assert sel["dataset"] == train["dataset"] == "builtin:digits:train" and not set(sel["indices"]) & set(
        train["indices"]
    )
    assert led.steps[3]["trainer"] == "MPDistillationTrainer" and led.steps[3]["num_train_epochs"] == 1
    # the schedule ran through run_cycles: one fine-tune per target, selection accuracy on rows carved from train
    assert all(s["finetune"]["steps"] > 0 and "accuracy" in s["post_ft_selection"] for s in led.steps[:3])
    assert {"load", "analyze", "prune", "distill"} <= set(led.timings) and led.seeds == {"recipe": 0}
    saved = yaml.safe_load(open(os.path.join(result["output_dir"], "recipe.yaml")))
    assert recipe_from_dict(saved).pruning[0].schedule == [0.2, 0.35, 0.5]
    assert os.path.isdir(tmp_path / "cache")
    json.dumps(result)


def test_cli_run_minilm_magnitude(tmp_path, capsys, minilm_path):
    from hf_mpprune.cli.main import main

    rc = main(["run", os.path.join(LIBRARY, "minilm_magnitude_s050.yaml"), "--output", str(tmp_path / "m"),
               "--set", "evaluation.size=32", "--set", "output.plots=false"])  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-5) and 0 < result["accuracy"] < 1  # embedding agreement
    assert result["base_metrics"]["embedding_agreement"] == pytest.approx(1.0)
    led = json.load(open(tmp_path / "m" / "mpprune_ledger.json"))
    assert led["data"]["splits"]["evaluation"]["count"] == 32  # --set reached the recipe
    assert main(["push", str(tmp_path / "m"), "--repo-id", ""]) == 2  # clear error, nothing uploaded
    assert "repo_id" in capsys.readouterr().err
