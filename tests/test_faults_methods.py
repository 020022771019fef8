"""Fault suite over EVERY registered method (`hf_mpprune.list_methods()`: one-shot, cyclic, k:n): a failure at any
point of `MPPruner.prune` leaves the model exactly as it was (one snapshot at the pruner level, whatever helper the
method used), non-finite parameters and activations are a `DataError` naming the culprit, and a zero-size layer is
excluded with its reason. A method registered without an entry in `CONFIGS` fails `test_every_method_is_covered`."""

import hashlib

import pytest
import torch
from torch import nn

from hf_mpprune import DataError, MPPruner, PruningConfig, list_methods
from hf_mpprune.core.masks import Masks
from hf_mpprune.core.registry import get_method
from tests.test_cycles import SMALL_SER, StubTrainStep
from tests.tiny_models import vit_inputs


pytestmark = pytest.mark.usefixtures("one_thread")

# One small config per registered method on the tiny ViT (SER / Hybrid at 0.3: Hybrid's SER stage).
CONFIGS = {
    "magnitude": {"sparsity": 0.5},
    "seb": {"sparsity": 0.5},
    "rmt": {"sparsity": 0.3},
    "wanda": {"sparsity": 0.5},
    "mp-wanda": {"sparsity": 0.5},
    "sparsegpt": {"sparsity": 0.5},
    "mp-sparsegpt": {"sparsity": 0.5},
    "ser": {"sparsity": 0.3, **SMALL_SER},
    "hybrid": {"sparsity": 0.3, **SMALL_SER},
    "cast": {"pattern": "2:4"},
    "wanda-kn": {"pattern": "2:4"},
    "sparsegpt-kn": {"pattern": "2:4"},
}
METHODS = sorted(CONFIGS)
CALIBRATED = [m for m in METHODS if get_method(m).needs_calibration]
TRAINED = [m for m in METHODS if get_method(m).needs_training]


def _state(model: nn.Module) -> str:
    """Parameters, buffers, and every module's hooks and instance attributes: what a failed call must not change."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    for name, mod in model.named_modules():
        h.update(
            f"{name}:{sorted(mod._forward_pre_hooks)}:{sorted(mod._forward_hooks)}:{sorted(mod.__dict__)}".encode()
        )
    return h.hexdigest()


def _prune(model, method, train_step=None):
    pruner = MPPruner(model, PruningConfig.from_dict({"method": method, **CONFIGS[method]}))
    pruner.analyze(progress=False)
    step = train_step if train_step is not None else StubTrainStep()
    return pruner, lambda: pruner.prune(calibration=[vit_inputs(8)], train_step=step)


def test_every_method_is_covered():
    built_in = [m for m in list_methods() if (get_method(m).config_cls.__module__ or "").startswith("hf_mpprune.")]
    assert METHODS == built_in  # methods registered by other tests (docs pages) in this process are not ours
    assert CALIBRATED and TRAINED and [m for m in METHODS if get_method(m).structured]


@pytest.mark.parametrize("method", METHODS)
def test_failure_after_the_method_puts_everything_back(tiny_vit, method, monkeypatch):
    """The masks are being applied when the failure hits: every weight the method wrote (OBS updates, re-fits,
    CAST projections, SER's phase A) and every zero already applied is put back."""
    pruner, run = _prune(tiny_vit, method)
    before = _state(tiny_vit)
    real_apply = Masks.apply_

    def apply_then_fail(self, model):
        real_apply(self, model)
        raise RuntimeError("injected: disk, signal or bug after the masks were applied")

    monkeypatch.setattr(Masks, "apply_", apply_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        run()
    assert _state(tiny_vit) == before and pruner.masks is None and pruner.ledger.steps == []
    monkeypatch.undo()
    masks = run()  # the same pruner works afterwards
    assert pruner.masks is masks and len(pruner.ledger.steps) == 1


@pytest.mark.parametrize("method", METHODS)
def test_nan_layernorm_is_refused_before_any_work(tiny_vit, method):
    """A NaN in a parameter the registry does not prune (a LayerNorm) poisons every statistic after it."""
    with torch.no_grad():
        tiny_vit.vit.layers[1].layernorm_after.weight[0] = float("nan")
    pruner, run = _prune(tiny_vit, method)
    before = _state(tiny_vit)
    with pytest.raises(DataError, match=r"parameter 'vit\.layers\.1\.layernorm_after\.weight' has 1 NaN"):
        run()
    assert _state(tiny_vit) == before and pruner.masks is None


@pytest.mark.parametrize("method", CALIBRATED)
def test_nan_activations_midway_are_refused_and_undone(tiny_vit, method):
    """Finite parameters, but block 1 produces NaN: sequential methods have already written block 0 when the
    statistics of `vit.layers.1.mlp.fc1` (Hessian, input norms, CAST's moments) turn out NaN."""
    pruner, run = _prune(tiny_vit, method)
    before = _state(tiny_vit)
    norm = tiny_vit.vit.layers[1].layernorm_after
    handle = norm.register_forward_hook(lambda mod, args, out: out * float("nan"))
    with pytest.raises(DataError, match=r"calibration statistics \(inputs\) of layer 'vit\.layers\.1\.mlp\.fc1'"):
        run()
    handle.remove()
    assert _state(tiny_vit) == before and pruner.masks is None


@pytest.mark.parametrize("method", TRAINED)
def test_failure_inside_training_is_undone(tiny_vit, method):
    """SER's phase A writes every reservoir entry, then the train step dies: parameters, buffers and attributes
    of the whole model are put back (methods that train snapshot the whole model)."""

    class Dies(StubTrainStep):
        def __call__(self, model, masks, **kw):
            super().__call__(model, masks, **kw)
            model.vit.layernorm.weight.data.add_(1.0)  # training touches parameters outside the registry
            raise KeyboardInterrupt

    pruner, run = _prune(tiny_vit, method, train_step=Dies())
    before = _state(tiny_vit)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert _state(tiny_vit) == before and pruner.masks is None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_size_layer_is_excluded_with_its_reason(tiny_vit, method):
    tiny_vit.vit.extra = nn.Linear(0, 4)  # registered, never called
    pruner, run = _prune(tiny_vit, method)
    masks = run()
    assert "vit.extra" not in masks.names and "vit.extra" not in pruner.layers.names
    assert "nothing to prune" in pruner.ledger.steps[-1]["excluded_layers"]["vit.extra"]
