"""Property tests (hypothesis): random JSON / YAML documents given to config and recipe parsing either load or
raise `ConfigError` (with a message), never anything else. Keys are drawn mostly from the real field names so the
documents reach deep into validation; examples are kept few so the suite stays fast."""

import dataclasses
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_mpprune import ConfigError, PruningConfig, list_methods
from hf_mpprune.core.config import config_class
from hf_mpprune.recipes.schema import recipe_from_dict


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_FIELDS = sorted({f.name for m in list_methods() for f in dataclasses.fields(config_class(m))})
_SPECTRAL = ["bema_alpha", "bema_beta", "compat", "view", "device"]
_RECIPE = ["name", "description", "seed", "model", "pruning", "calibration", "evaluation", "finetune", "distill",
           "audit", "output", "push"]  # fmt: skip
_MODEL = ["id", "revision", "dtype", "train_epochs"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)  # denormals are flushed (conftest)
    | st.sampled_from(["", "2:4", "a:b", "magnitude", "wanda", "float33", "float16", "exact", "repo", "Linear", "x"])
    | st.text(max_size=8)
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                      max_size=3), max_leaves=8)  # fmt: skip


def _doc(keys: list[str], nested: dict | None = None):
    key = st.sampled_from(keys) | st.text(max_size=6)
    base = st.dictionaries(key, values, max_size=5)
    if not nested:
        return base
    parts = {
        k: st.dictionaries(st.sampled_from(v) | st.text(max_size=4), values, max_size=4) for k, v in nested.items()
    }
    return st.tuples(base, st.fixed_dictionaries({}, optional=parts)).map(lambda t: {**t[0], **t[1]})


config_docs = _doc(_FIELDS, {"spectral": _SPECTRAL}) | st.builds(
    lambda m, d: {**d, "method": m}, st.sampled_from(list_methods()), _doc(_FIELDS, {"spectral": _SPECTRAL})
)
recipe_docs = _doc(_RECIPE, {"model": _MODEL, "pruning": _FIELDS + ["schedule"], "output": ["dir", "plots"]})


def _loads_or_config_error(fn, arg):
    try:
        return fn(arg)
    except ConfigError as e:
        message = str(e)
    assert message, "a ConfigError must say what is wrong"
    return None


@SETTINGS
@given(config_docs)
def test_random_config_documents_load_or_raise_config_error(doc):
    cfg = _loads_or_config_error(PruningConfig.from_dict, doc)
    if cfg is not None:  # what loads is valid and round-trips
        assert 0.0 <= cfg.sparsity < 1.0 and not math.isnan(cfg.sparsity)
        cfg = cfg.resolve()
        assert PruningConfig.from_dict(cfg.to_dict()) == cfg


@SETTINGS
@given(recipe_docs)
def test_random_recipe_documents_load_or_raise_config_error(doc):
    _loads_or_config_error(recipe_from_dict, doc)


@SETTINGS
@given(st.text(max_size=60) | recipe_docs.map(lambda d: yaml.safe_dump(d, default_flow_style=True)))
def test_random_yaml_text_into_config_parsing(text):
    _loads_or_config_error(PruningConfig.from_yaml, text)


@pytest.mark.parametrize(
    "doc",
    [
        {"method": "magnitude", "sparsity": "abc", "schedule": [0.1, 0.2]},
        {"method": "magnitude", "schedule": [0.1, "x"]},
        {"method": "magnitude", "sparsity": 0.5, "schedule": [0.5]},
    ],
)
def test_schedule_edge_cases(doc):
    _loads_or_config_error(recipe_from_dict, {"model": {"id": "builtin:digits-vit"}, "pruning": doc})
