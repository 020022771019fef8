"""Layer allocations (uniform, OWL, AlphaPruning, MP) under Wanda and SparseGPT: the formulas on hand-made inputs,
a planted outlier channel, the Hill estimator on samples with a known power-law tail, the exact budget, the ledger
record, and the refusals."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.methods.allocation import alpha_multipliers, outlier_ratio, owl_block_sparsity
from hf_mpprune.methods.common import layer_budgets
from hf_mpprune.spectral.tail import pl_alpha_hill
from tests.test_methods_oneshot import calib_for as calib


pytestmark = pytest.mark.usefixtures("one_thread")


def pruned_counts(masks) -> dict[str, int]:
    return {n: int((~masks[n]).sum()) for n in masks.names}


# ---- OWL ------------------------------------------------------------------------------------------------------------
def test_outlier_ratio_hand_made():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 13.0]])  # mean 2.5: only 13 is above 5 × 2.5
    assert outlier_ratio([a], 5.0) == 1 / 8
    assert outlier_ratio([a], 3.0) == 1 / 8 and outlier_ratio([a], 0.3) == 1.0
    # a block's layers count together: the mean is over all their entries (here 2.0), not per layer
    b = torch.ones(2, 4)
    assert outlier_ratio([a, b], 5.0) == 1 / 16
    assert outlier_ratio([b], 5.0) == 0.0


def test_owl_block_sparsity_formula():
    s = owl_block_sparsity({0: 0.01, 1: 0.03, 2: 0.02}, 0.5, 0.08)  # scaled 0, .16, .08 -> centred -.08, .08, 0
    assert s == pytest.approx({0: 0.58, 1: 0.42, 2: 0.50})
    skew = owl_block_sparsity({0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0}, 0.6, 0.08)
    vals = list(skew.values())
    assert max(vals) - min(vals) == pytest.approx(0.16)  # spread exactly 2λ, centred on s
    assert sum(vals) / 4 == pytest.approx(0.6) and all(0.6 - 0.16 <= v <= 0.6 + 0.16 for v in vals)
    assert skew[3] == pytest.approx(0.6 - 0.12)  # the outlier-heavy block keeps the most weights
    assert owl_block_sparsity({0: 0.2, 1: 0.2}, 0.5, 0.08) == {0: 0.5, 1: 0.5}  # equal ratios: uniform
    assert owl_block_sparsity({0: 0.0, 1: 1.0}, 0.05, 0.08)[1] == 0.01  # a rate at or below 0 is floored


def test_owl_protects_the_block_with_a_planted_outlier_channel(tiny_bert):
    cfg = PruningConfig.from_dict({"method": "wanda", "sparsity": 0.6, "allocation": "owl"})
    clean = MPPruner(copy.deepcopy(tiny_bert), cfg)
    clean.prune(calibration=calib("bert"))
    before = clean.ledger.steps[-1]["allocation"]["outlier_ratio"][1]
    planted = copy.deepcopy(tiny_bert)
    with torch.no_grad():  # four 10x channels in the hidden state that block 1 reads (outlier features)
        planted.encoder.layer[0].output.LayerNorm.weight[[5, 17, 30, 41]] = 10.0
    pruner = MPPruner(planted, cfg)
    masks = pruner.prune(calibration=calib("bert"))
    rec = pruner.ledger.steps[-1]["allocation"]
    assert rec["outlier_ratio"][1] > before and rec["outlier_ratio"][1] > rec["outlier_ratio"][0]
    assert rec["block_sparsity"][1] == pytest.approx(0.6 - 0.08) and rec["block_sparsity"][0] == pytest.approx(0.68)
    spars = {n: c / masks[n].numel() for n, c in pruned_counts(masks).items()}
    in_block = {b: [v for n, v in spars.items() if n.startswith(f"encoder.layer.{b}.")] for b in (0, 1)}
    assert max(in_block[1]) < min(in_block[0])  # every layer of the outlier block keeps more
    assert masks.num_pruned == math.floor(0.6 * pruner.layers.total_params)


# ---- AlphaPruning ---------------------------------------------------------------------------------------------------
def pareto(n: int, alpha: float, xmin: float, seed: int) -> np.ndarray:
    """n draws of the density ∝ x^(−alpha) above xmin."""
    return xmin * np.random.default_rng(seed).random(n) ** (-1.0 / (alpha - 1.0))


def test_pl_alpha_hill_hand_formula():
    alpha, xmin, _ = pl_alpha_hill([8.0, 1.0, 4.0, 2.0, 0.0], "median")  # zero dropped; x_min = 4 (index 2 of 4)
    assert xmin == 4.0 and alpha == pytest.approx(1 + 2 / math.log(2))
    with pytest.raises(ValueError, match="xmin"):
        pl_alpha_hill([1.0, 2.0], "mode")


@pytest.mark.parametrize("rule", ["median", "peak"])
@pytest.mark.parametrize("true_alpha", [2.5, 4.0])
def test_pl_alpha_hill_recovers_a_pure_power_law(rule, true_alpha):
    est = [pl_alpha_hill(pareto(2000, true_alpha, 0.5, seed), rule)[0] for seed in range(3)]
    assert abs(np.mean(est) - true_alpha) < 0.12 * (true_alpha - 1)


def test_peak_rule_finds_the_tail_above_a_bulk():
    rng = np.random.default_rng(0)
    bulk = rng.uniform(0.05, 1.0, 1500)  # a bulk that is no power law, its log-histogram peaks just below 1
    ev = np.concatenate([bulk, pareto(500, 3.0, 1.0, 1)])
    alpha, xmin, d = pl_alpha_hill(ev, "peak")
    assert abs(alpha - 3.0) < 0.35 and 0.6 < xmin < 1.5 and d < 0.1
    assert pl_alpha_hill(ev, "median")[2] > 2 * d  # the median cut-off lands in the bulk: a worse power-law fit


def test_alpha_multipliers_monotone_and_budget_exact():
    mult = alpha_multipliers({"a": 2.0, "b": 3.0, "c": 4.0, "d": None}, 0.3)
    assert mult == pytest.approx({"a": 0.7, "b": 1.0, "c": 1.3, "d": 1.0})
    assert alpha_multipliers({"a": 2.0, "b": 2.0}, 0.3) == {"a": 1.0, "b": 1.0}
    numel = {"a": 1000, "b": 3000, "c": 2000, "d": 777}
    counts = layer_budgets(numel, mult, 0.6, 0.95)
    assert sum(counts.values()) == math.floor(0.6 * sum(numel.values()))  # parameter-weighted mean exactly s
    spars = {n: counts[n] / numel[n] for n in numel}
    assert spars["a"] < spars["b"] < spars["c"]  # larger α ⇒ pruned more
    assert spars["c"] / spars["a"] == pytest.approx(1.3 / 0.7, rel=1e-2)  # one common scale


def test_alphapruning_alpha_is_that_of_the_weights_esd(tiny_vit):
    pruner = MPPruner(
        tiny_vit, PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5, "allocation": "alphapruning"})
    )
    assert pruner.spectra is None
    dense = {la.name: la.matrix_view().detach().clone() for la in pruner.layers}
    pruner.prune(calibration=calib("vit"))
    assert pruner.spectra is not None  # the allocation asked the pruner for the dense spectra
    rec = pruner.ledger.steps[-1]["allocation"]
    assert (rec["modality"], rec["alpha_epsilon"], rec["alpha_xmin"], rec["mapping"]) == (
        "vision",
        0.2,
        "median",
        "per matrix",
    )
    for name, w in dense.items():  # an independent ESD (float64 SVD of the dense weight) gives the same α
        ev = torch.linalg.svdvals(w.double()).square().numpy()
        assert rec["alpha"][name] == pytest.approx(pl_alpha_hill(ev, "median")[0], rel=1e-9)
    order = sorted(rec["alpha"], key=rec["alpha"].get)
    spars = rec["layer_sparsity"]
    assert spars[order[0]] < spars[order[-1]]


# ---- every allocation under both pruners ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize(
    ("method", "allocation", "reconstruct"),
    [("wanda", "owl", False), ("wanda", "owl", True), ("wanda", "alphapruning", False), ("wanda", "mp", False),
     ("sparsegpt", "alphapruning", False), ("sparsegpt", "owl", False), ("sparsegpt", "mp", False)],
)  # fmt: skip
def test_exact_budget_and_ledger_every_allocation(kind, method, allocation, reconstruct, tiny_vit, tiny_bert):
    model = tiny_vit if kind == "vit" else tiny_bert
    cfg = {"method": method, "sparsity": 0.6, "allocation": allocation, "reconstruct": reconstruct}
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    masks = pruner.prune(calibration=calib(kind))
    assert masks.num_pruned == math.floor(0.6 * pruner.layers.total_params)
    for la in pruner.layers:
        assert bool((la.weight[~masks[la.name]] == 0).all())
    rec = pruner.ledger.steps[-1]["allocation"]
    assert rec["allocation"] == allocation
    got = {n: c / masks[n].numel() for n, c in pruned_counts(masks).items()}
    assert got == pytest.approx(rec["layer_sparsity"], abs=1e-12)
    assert max(got.values()) - min(got.values()) > 0.02  # the allocation moved budgets between layers
    assert {"owl": "outlier_ratio", "alphapruning": "alpha", "mp": "layer_weights"}[allocation] in rec


def test_wanda_owl_with_and_without_refit_share_the_mask_and_round_trip(tiny_bert, tmp_path):
    cfg = {"method": "wanda", "sparsity": 0.6, "allocation": "owl", "owl_m": 3.0}
    plain = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict(cfg))
    refit = MPPruner(tiny_bert, PruningConfig.from_dict({**cfg, "reconstruct": True}))
    m1, m2 = plain.prune(calibration=calib("bert")), refit.prune(calibration=calib("bert"))
    assert m1.sha256() == m2.sha256()  # the re-fit changes kept weights, never the allocation or the mask
    assert refit.ledger.steps[-1]["reconstruct"]["kind"] == "obs_least_squares"
    refit.save_pretrained(tmp_path / "ck")
    back = MPPruner.from_pretrained(tmp_path / "ck")
    assert back.config.allocation == "owl" and back.config.owl_m == 3.0 and back.masks == m2


def test_uniform_is_todays_rule_and_mp_is_mp_sparsegpt(tiny_bert):
    cal = calib("bert")

    def run(cfg):
        return MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict({"sparsity": 0.6, **cfg})).prune(
            calibration=cal
        )

    assert run({"method": "sparsegpt", "allocation": "mp"}).sha256() == run({"method": "mp-sparsegpt"}).sha256()
    counts = pruned_counts(run({"method": "wanda", "allocation": "mp"}))
    assert counts == pruned_counts(run({"method": "mp-wanda", "mapping": "layer"}))
    uniform = pruned_counts(run({"method": "wanda"}))
    numel = {n: tiny_bert.get_submodule(n).weight.numel() for n in uniform}
    assert uniform == layer_budgets(numel, dict.fromkeys(numel, 1.0), 0.6, 1.0)


# ---- refusals -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "match"),
    [({"method": "wanda", "allocation": "lamp"}, "must be one of"),
     ({"method": "wanda", "owl_m": 5.0}, r"\['owl_m'\] do nothing with allocation='uniform'"),
     ({"method": "sparsegpt", "allocation": "owl", "alpha_epsilon": 0.2}, r"\['alpha_epsilon'\] do nothing"),
     ({"method": "wanda", "allocation": "alphapruning", "owl_lambda": 0.1}, r"\['owl_lambda'\] do nothing"),
     ({"method": "wanda", "allocation": "owl", "pattern": "2:4"}, "k:n pattern fixes every layer's density"),
     ({"method": "sparsegpt", "allocation": "mp", "pattern": "2:4"}, "k:n pattern"),
     ({"method": "wanda", "allocation": "owl", "rounding": "row"}, "needs rounding='exact'"),
     ({"method": "mp-sparsegpt", "allocation": "owl"}, "use method='sparsegpt'"),
     ({"method": "wanda", "allocation": "owl", "owl_m": 0}, "owl_m=0 must be > 0"),
     ({"method": "wanda", "allocation": "owl", "owl_lambda": 0.6}, "owl_lambda=0.6"),
     ({"method": "wanda", "allocation": "alphapruning", "alpha_epsilon": 1.0}, "alpha_epsilon=1.0"),
     ({"method": "wanda", "allocation": "alphapruning", "alpha_xmin": "mode"}, "alpha_xmin='mode'")],
)  # fmt: skip
def test_refusals(cfg, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig.from_dict(cfg)


def test_owl_without_blocks_refused_before_any_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = MPPruner(model, PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5, "allocation": "owl"}))
    with pytest.raises(ConfigError, match="no repeated blocks"):
        pruner.prune(calibration=[{"input": torch.randn(4, 16)}])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and pruner.masks is None


def test_config_round_trip_and_cli_style_options():
    cfg = PruningConfig.from_dict(
        {"method": "wanda", "sparsity": 0.7, "allocation": "alphapruning", "alpha_epsilon": 0.25}
    )
    back = PruningConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.alpha_xmin is None
    assert PruningConfig(method="sparsegpt", allocation="owl", owl_m=5).owl_m == 5
    assert PruningConfig.from_dict({"method": "mp-sparsegpt"}).allocation == "mp"
