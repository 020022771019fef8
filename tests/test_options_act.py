"""Every option acts or is refused, and the ledger records what ran: a re-fit that SparseGPT would not do, re-fit
settings without the re-fit, CAST options that need another option, and calibration batches passed ready-made
(the config's sampling fields were not applied: the ledger says so and records the batches actually used)."""

import pytest

from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.core.calibration import as_batches
from hf_mpprune.core.registry import get_method
from tests.tiny_models import vit_inputs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("options", "match"),
    [({"method": "sparsegpt", "reconstruct": True}, "reconstruct=True has no effect on method 'sparsegpt'"),
     ({"method": "mp-sparsegpt", "reconstruct": True}, "reconstruct=True has no effect on method 'mp-sparsegpt'"),
     ({"method": "wanda", "reconstruct_solver": "exact"}, "reconstruct_solver='exact' has no effect on method 'wanda'"),
     ({"method": "mp-wanda", "reconstruct_iters": 3}, "reconstruct_iters=3 has no effect on method 'mp-wanda'"),
     ({"method": "seb", "percdamp": 0.05}, "percdamp=0.05 has no effect on method 'seb' without reconstruct=True"),
     ({"method": "cast", "pattern": "2:4", "percdamp": 0.1}, "percdamp=0.1 has no effect on method 'cast'"),
     ({"method": "cast", "pattern": "2:4", "permute_unfoldable": True}, "without permute_align=True"),
     ({"method": "cast", "pattern": "2:4", "perm_importance": "paper"}, "perm_importance='paper' has no effect")],
)  # fmt: skip
def test_options_without_effect_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig.from_dict(options)


def test_the_same_options_are_accepted_where_they_act():
    assert PruningConfig.from_dict({"method": "sparsegpt", "percdamp": 0.05}).percdamp == 0.05  # its own damping
    cfg = PruningConfig.from_dict({"method": "wanda", "reconstruct": True, "reconstruct_solver": "exact"})
    assert cfg.reconstruct_solver == "exact"
    cast = {"method": "cast", "pattern": "2:4", "permute_align": True, "permute_unfoldable": True}
    assert PruningConfig.from_dict({**cast, "perm_importance": "paper"}).permute_unfoldable


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "cast"])
def test_ready_made_batches_are_recorded_as_used(tiny_vit, method):
    """as_batches(...) sampled 6 rows in batches of 3 with seed 5; the config says 128 / 16 / seed 0. The ledger
    step records the batches that ran and keeps the config's sampling values apart, marked as not applied."""
    data = [vit_inputs(3), vit_inputs(3), vit_inputs(3)]
    ready = as_batches(data, num_samples=6, batch_size=3, seed=5)
    extra = {"pattern": "2:4"} if get_method(method).structured else {"sparsity": 0.5}
    pruner = MPPruner(tiny_vit, PruningConfig.from_dict({"method": method, **extra}))
    pruner.prune(calibration=ready)
    step = pruner.ledger.steps[-1]
    assert step["calibration"]["prebuilt"] and step["calibration"]["num_samples"] == 6
    assert step["calibration"]["batch_size"] == 3 and step["calibration"]["seed"] == 5
    assert step["config"]["calibration_samples"] == 6 and step["config"]["calibration_batch_size"] == 3
    assert step["config"]["calibration_config_not_applied"] == {
        "calibration_samples": 128, "calibration_batch_size": 16, "seed": 0,
    }  # fmt: skip


def test_sampled_batches_record_the_config(tiny_vit):
    pruner = MPPruner(tiny_vit, PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5, "calibration_samples": 4,
                                                         "calibration_batch_size": 2}))  # fmt: skip
    pruner.prune(calibration=[vit_inputs(8)])
    step = pruner.ledger.steps[-1]
    assert "prebuilt" not in step["calibration"] and "calibration_config_not_applied" not in step["config"]
    assert step["config"]["calibration_samples"] == 4
