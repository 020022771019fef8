"""Every recipe option acts or is refused: the typed `audit` section (unknown keys, `tome_r` applied to evaluation,
distillation and the MAC audit, `legality` / `macs` switches), CAST handed the dense weights for free restoration by
the runner, and a tiny end-to-end run of the flagship's shape (unstructured source → CAST 2:4 with ToMe → distil →
evaluate → save) in seconds, on the builtin digits ViT's architecture."""

import copy
import os

import pytest

from hf_mpprune import ConfigError, MPPruner
from hf_mpprune.builtins.digits import build_digits_vit, digits_processor
from hf_mpprune.deploy.tome import tome_state
from hf_mpprune.recipes import stages
from hf_mpprune.recipes.runner import execute, run_recipe
from hf_mpprune.recipes.schema import recipe_from_dict
from hf_mpprune.training.trainer import MPDistillationTrainer


FLAGSHIP = {  # vit_b16_cast_2of4_tome8 at toy size: magnitude stands in for SER (no training between steps)
    "model": {"id": "builtin:digits-vit"},
    "pruning": [{"method": "magnitude", "sparsity": 0.35},
                {"method": "cast", "pattern": "2:4", "alpha_ser": 0.1, "free_restoration": True}],
    "calibration": {"dataset": "builtin:digits", "size": 32, "batch_size": 32},
    "train": {"dataset": "builtin:digits", "size": 128, "batch_size": 64},
    "evaluation": {"dataset": "builtin:digits", "size": 64, "batch_size": 64},
    "distill": {"num_train_epochs": 1, "per_device_train_batch_size": 64, "warmup_steps": 0},
    "audit": {"legality": True, "macs": True, "tome_r": 2},
    "output": {"plots": False},
}  # fmt: skip


@pytest.fixture
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("builtin-cache"))


def _run(tmp_path, data, cache):
    """The recipe on an untrained digits ViT of the builtin's architecture (no dense training: the pipeline is what
    is tested) with the builtin's processor, through the Python API of the runner."""
    model, processor = build_digits_vit(seed=0), digits_processor()
    recipe = recipe_from_dict(data)
    return execute(recipe, output_dir=str(tmp_path / "out"), cache_dir=cache, model=model, processor=processor)[1]


@pytest.mark.parametrize(
    ("audit", "match"),
    [({"tome": 8}, r"unknown key\(s\) \['tome'\] in recipe section 'audit'"), ({"tome_r": 0}, "tome_r = 0"),
     ({"tome_r": True}, "audit.tome_r = True has the wrong type"), ({"macs": "yes"}, "audit.macs = 'yes'")],
)  # fmt: skip
def test_audit_section_is_typed(audit, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_dict({**copy.deepcopy(FLAGSHIP), "audit": audit})


def test_flagship_shape_end_to_end(tmp_path, monkeypatch, cache):
    """ToMe is live for the pruned / distilled evaluations and the distillation, the MAC audit counts the merged
    graph against the dense model without ToMe, CAST gets the dense weights back, and the saved checkpoint has no
    ToMe in it (ToMe patches forwards, not weights) but records it."""
    seen = []
    real_eval, real_train = stages.evaluate_model, MPDistillationTrainer.train
    monkeypatch.setattr(
        stages, "evaluate_model", lambda m, *a, **k: seen.append(tome_state(m)) or real_eval(m, *a, **k)
    )
    monkeypatch.setattr(MPDistillationTrainer, "train",
                        lambda self, *a, **k: seen.append(tome_state(self.model)) or real_train(self, *a, **k))  # fmt: skip
    result = _run(tmp_path, FLAGSHIP, cache)
    assert [s is None for s in seen] == [True, False, False, False]  # base (dense), pruned, distill, distilled
    back = MPPruner.from_pretrained(result["output_dir"])
    cast_step = next(s for s in back.ledger.steps if s.get("method") == "cast")
    assert sum(r["restored_nonzero"] for r in cast_step["cast"]["layers"].values()) > 0  # dense values came back
    tome = next(s for s in back.ledger.steps if s.get("kind") == "tome")
    assert tome["r"] == 2 and "distillation" in tome["applied_to"]
    macs = next(a for a in back.ledger.audits if a["kind"] == "macs")
    assert macs["tome_r"] == 2 and macs["sparse_macs"] < macs["sparse_macs_without_tome"] < macs["dense_macs"]
    assert result["macs_ratio"] == pytest.approx(macs["sparse_macs"] / macs["dense_macs"])
    assert {m["stage"] for m in back.ledger.metrics} == {"base", "pruned", "distilled"}
    assert tome_state(back.model) is None and back.masks.pattern is not None
    assert next(a for a in back.ledger.audits if a["kind"] == "legality")["bad_groups"] == 0


def test_audit_switches_act(tmp_path, cache):
    data = {**copy.deepcopy(FLAGSHIP), "audit": {"legality": False, "macs": True}}
    data.pop("distill")
    data.pop("train")
    data["pruning"] = data["pruning"][:1]
    result = _run(tmp_path, data, cache)
    audits = MPPruner.from_pretrained(result["output_dir"]).ledger.audits
    assert [a["kind"] for a in audits] == ["macs"] and audits[0]["tome_r"] == 0
    assert result["macs_ratio"] == pytest.approx(audits[0]["sparse_macs"] / audits[0]["dense_macs"])


@pytest.mark.parametrize(
    ("change", "match"),
    [({"audit": {"macs": True}, "calibration": None, "evaluation": None, "distill": None, "train": None},
      "audit.macs counts MACs"),
     ({"audit": {"tome_r": 9}}, "ToMe r=9 is too large")],
)  # fmt: skip
def test_audit_options_that_cannot_act_are_refused_before_any_work(tmp_path, change, match, cache):
    data = {**copy.deepcopy(FLAGSHIP), **change}
    data = {k: v for k, v in data.items() if v is not None}
    data["pruning"] = data["pruning"][:1]
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, data, cache)
    assert os.listdir(tmp_path) == []  # no output folder: nothing written


def test_tome_on_a_model_it_does_not_support_is_refused(tmp_path, minilm_path, cache):
    data = {"model": {"id": "builtin:minilm"}, "pruning": {"method": "magnitude", "sparsity": 0.5},
            "evaluation": {"dataset": "builtin:minilm-text", "size": 8}, "audit": {"tome_r": 2}}  # fmt: skip
    with pytest.raises(ConfigError, match="ToMe supports transformers ViT / DeiT models"):
        run_recipe(recipe_from_dict(data), output_dir=str(tmp_path / "out"), cache_dir=cache)
    assert not os.path.exists(tmp_path / "out")
