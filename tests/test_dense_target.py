"""`refit_target="dense"`: the re-fit (and ADMM / ALPS) aims at the dense model's output of each layer, ‖Ŵ X − W X_d‖,
instead of the layer's own output on its current inputs. Known truths: the exact least-squares minimiser, the
identity case (X_d = X gives the sequential re-fit bit for bit), the statistics of an untouched model (cross = H =
dense H on every path), the dense statistics equal the dense model's own Hessians after upstream layers change,
and refusals before anything is written."""

import copy

import pytest
import torch

import hf_mpprune.core.blockwise as bw
import hf_mpprune.core.joined as joined_mod
from hf_mpprune import ConfigError, MPPruner, PruningConfig
from hf_mpprune.core.admm import Budget, admm_prune, layer_objective
from hf_mpprune.core.layers import discover_layers
from hf_mpprune.core.obs import hessian, obs_reconstruct
from hf_mpprune.core.refit import DenseTarget
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def layer_pair(seed=0, out=12, cols=20, rows=400):
    """A layer's current inputs X and its dense-model inputs X_d: X is X_d shrunk and perturbed (what upstream
    pruning does to the activations)."""
    g = torch.Generator().manual_seed(seed)
    x_d = torch.randn(rows, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g).double()
    x = 0.7 * x_d + 0.3 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    w = torch.randn(out, cols, generator=g, dtype=torch.float64)
    keep = torch.rand(out, cols, generator=g) > 0.6
    target = DenseTarget(2.0 * x_d.T @ x / rows, 2.0 * x_d.T @ x_d / rows)
    return w, x, x_d, keep, target


def test_exact_refit_is_the_least_squares_minimiser_of_the_dense_output():
    w, x, x_d, keep, target = layer_pair()
    got = obs_reconstruct(w, hessian(x), keep, percdamp=0.0, solver="exact", target=target)
    y = x_d @ w.T  # the dense model's output of the layer
    for r in range(w.shape[0]):
        cols = keep[r].nonzero().flatten()
        sol = torch.linalg.lstsq(x[:, cols], y[:, r : r + 1]).solution.flatten()
        torch.testing.assert_close(got[r, cols], sol, rtol=1e-7, atol=1e-9)
        assert bool((got[r, ~keep[r]] == 0).all())
    # the objective is the real squared error (scaled 2 / rows), and no other kept-set fit does better
    err = float(((x @ got.T - y) ** 2).sum()) * 2.0 / x.shape[0]
    assert layer_objective(w, got, hessian(x), target) == pytest.approx(err, rel=1e-9)
    seq = obs_reconstruct(w, hessian(x), keep, percdamp=0.0, solver="exact")
    assert layer_objective(w, seq, hessian(x), target) > err * 1.1  # the sequential fit misses the dense output


def test_cg_converges_to_the_exact_dense_target_fit():
    w, x, _, keep, target = layer_pair(seed=1)
    exact = obs_reconstruct(w, hessian(x), keep, percdamp=0.01, solver="exact", target=target)
    cg = obs_reconstruct(w, hessian(x), keep, percdamp=0.01, solver="cg", iters=60, target=target)
    torch.testing.assert_close(cg, exact, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_identical_inputs_give_the_sequential_refit(solver):
    w, x, _, keep, _ = layer_pair(seed=2)
    h = hessian(x)
    same = DenseTarget(h.clone(), h.clone())
    a = obs_reconstruct(w, h, keep, solver=solver, iters=8)
    b = obs_reconstruct(w, h, keep, solver=solver, iters=8, target=same)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert layer_objective(w, a, h) == pytest.approx(layer_objective(w, a, h, same), rel=1e-6, abs=1e-9)


def test_alps_with_identical_inputs_matches_and_with_a_dense_target_fits_it_better():
    w, x, _, keep, target = layer_pair(seed=3)
    h = hessian(x)
    budget = Budget.of(keep, None, None)
    z0, k0 = admm_prune(w, h, keep, budget, schedule="alps")
    z1, k1 = admm_prune(w, h, keep, budget, schedule="alps", target=DenseTarget(h.clone(), h.clone()))
    assert torch.equal(k0, k1)
    torch.testing.assert_close(z0, z1)
    zd, kd = admm_prune(w, h, keep, budget, schedule="alps", target=target)
    assert torch.equal((~kd).sum(1), (~keep).sum(1))  # the budget holds
    assert layer_objective(w, zd, h, target) < layer_objective(w, z0, h, target)


def _record(model, batches, fn, dense_target=True):
    seen = {}

    def on_layer(layer, h, target=None):
        seen[layer.name] = (h.clone(), target)
        fn(layer)

    tm_ = bw.block_sequential(model, list(discover_layers(model)), batches, on_layer, dense_target=dense_target)
    return seen, tm_


def _batches():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (6, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[4, 4:] = 0, 0  # padded rows, as a tokenizer gives them
    return [{"input_ids": ids[i : i + 3], "attention_mask": mask[i : i + 3]} for i in (0, 3)]


@pytest.mark.parametrize("join", [True, False])
def test_untouched_model_gives_cross_equal_to_h_on_every_block_layer(tiny_bert, monkeypatch, join):
    if not join:
        monkeypatch.setattr(joined_mod, "join_batches", lambda b: None)
    seen, tm_ = _record(tiny_bert, _batches(), lambda la: None)
    assert tm_.path == "blocks" and tm_.extra["refit_target"] == "dense"
    assert len(seen) == len(discover_layers(tiny_bert))
    assert seen["pooler.dense"][1] is None  # after the blocks: the sequential target
    block = [(h, t) for name, (h, t) in seen.items() if name.startswith("encoder.")]
    assert len(block) == len(seen) - 1 and all(t is not None for _, t in block)
    for h, t in block:
        torch.testing.assert_close(t.cross, h, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(t.dense_h, h, rtol=1e-5, atol=1e-6)


def test_dense_statistics_are_the_dense_models_after_upstream_pruning():
    model = tm.tiny_llama()
    dense_h, _ = _record(copy.deepcopy(model), _batches(), lambda la: None, dense_target=False)

    def halve(layer):  # prune every other input column: the downstream inputs change
        with torch.no_grad():
            layer.weight[:, ::2] = 0.0

    seen, _ = _record(model, _batches(), halve)
    changed = 0
    assert seen["lm_head"][1] is None if "lm_head" in seen else True
    seen = {name: v for name, v in seen.items() if v[1] is not None}
    assert len(seen) == 14  # 2 blocks × q, k, v, o, gate, up, down
    for name, (h, t) in seen.items():
        torch.testing.assert_close(t.dense_h, dense_h[name][0], rtol=1e-4, atol=1e-6)
        changed += not torch.allclose(t.cross, h, rtol=1e-3, atol=1e-5)
    assert changed >= len(seen) - 3  # all but the first block's first inputs moved


def test_refusals_before_anything_is_written(tiny_bert, monkeypatch):
    with pytest.raises(ConfigError, match="nothing re-fits"):
        PruningConfig(method="wanda", sparsity=0.5, refit_target="dense")
    with pytest.raises(ConfigError, match="must be one of"):
        PruningConfig(method="wanda", sparsity=0.5, reconstruct=True, refit_target="output")
    with pytest.raises(ConfigError, match="not supported on method 'cast'"):
        PruningConfig(method="cast", pattern="2:4", reconstruct=True, refit_target="dense")
    with pytest.raises(ConfigError, match="not supported on method 'sparsegpt'"):
        PruningConfig(method="sparsegpt", sparsity=0.5, refine="alps", refit_target="dense")
    assert PruningConfig(method="wanda", sparsity=0.5, refine="alps", refit_target="dense").refit_target == "dense"
    model = copy.deepcopy(tiny_bert)
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(bw, "find_blocks", lambda model, layers: None)  # a model without a repeated block list
    cfg = PruningConfig(method="wanda", sparsity=0.5, reconstruct=True, refit_target="dense")
    with pytest.raises(ConfigError, match="block-cached calibration path"):
        MPPruner(model, cfg).prune(calibration=_batches())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "wanda", "sparsity": 0.6, "reconstruct": True},
        {"method": "mp-wanda", "sparsity": 0.6, "refine": "alps"},
    ],
)
def test_end_to_end_on_a_tiny_llama(cfg):
    """Every path that re-fits takes the dense target: exact budgets, the ledger says so, and the weights differ
    from the sequential re-fit's (on the very same mask where the mask does not depend on the fit)."""
    runs = {}
    for target in ("sequential", "dense"):
        model = tm.tiny_llama()
        pruner = MPPruner(model, PruningConfig.from_dict({**cfg, "refit_target": target}))
        masks = pruner.prune(calibration=_batches())
        runs[target] = (model, masks, pruner.ledger.steps[-1])
    (m_seq, k_seq, _), (m_dense, k_dense, step) = runs["sequential"], runs["dense"]
    assert k_dense.sparsity() == pytest.approx(k_seq.sparsity()) and k_dense.sparsity() > 0.45
    text = step.get("reconstruct", {}).get("target", "") + step.get("refine", {}).get("objective", "")
    assert "refit_target='dense'" in text
    if "refine" not in cfg:
        assert k_dense.sha256() == k_seq.sha256()
    w_seq, w_dense = m_seq.state_dict(), m_dense.state_dict()
    assert any(not torch.allclose(w_seq[k], w_dense[k]) for k in w_seq if k.endswith("down_proj.weight"))


def test_plan_groups_shared_inputs_without_holding_every_layers_input(monkeypatch):
    """q / k / v (one input tensor) and gate / up form groups; o and down are alone — and the plan keeps at most
    one layer input alive at a time while it runs (it used to hold every layer's input of the first batch)."""
    import weakref

    model = tm.tiny_llama(num_hidden_layers=4)  # 16 distinct layer inputs in the first batch's forward
    layers = list(discover_layers(model))
    alive, peak = [], [0]
    real = bw._same_tensor

    def counting(a, b):
        if b is not None:
            alive.append(weakref.ref(b))
        peak[0] = max(peak[0], sum(r() is not None for r in alive))
        return real(a, b)

    monkeypatch.setattr(bw, "_same_tensor", counting)
    _, pl, why = bw.plan(model, layers, _batches())
    assert why == "blocks"
    names = [[[la.name.rsplit(".", 1)[-1] for la in g] for g in groups] for groups in pl.groups]
    assert names == [[["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]] * 4
    assert peak[0] <= 4  # the previous and current inputs, and those the block's forward itself still uses
