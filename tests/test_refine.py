"""Mask refinement (`refine=`): joint mask / weight ADMM ("admm", "alps") and prune-and-grow swaps ("dsnot") on
layers with planted structure, exact budgets and k:n legality, the RIA score by hand, refusals, the ledger record,
atomicity, and end-to-end runs on the tiny BERT / ViT."""

import copy

import pytest
import torch

from hf_mpprune import ConfigError, KeepPattern, MPPruner, PruningConfig
from hf_mpprune.core import refine as refine_mod
from hf_mpprune.core.admm import Budget, admm_prune, layer_objective
from hf_mpprune.core.masks import Masks, kn_violations
from hf_mpprune.core.obs import hessian, obs_reconstruct
from hf_mpprune.core.refine import LayerRefiner
from hf_mpprune.core.swap import swap_refine
from hf_mpprune.methods.common import kn_prune, row_prune
from hf_mpprune.methods.kn import baselines
from hf_mpprune.methods.kn.permute import bucket_permutation
from hf_mpprune.methods.kn.select import ria_scores
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def paired_layer(seed=0, out=8, pairs=8, rows=400):
    """Inputs in near-duplicate pairs (x_2k ≈ x_2k+1): keeping one of each pair loses almost nothing, since the
    re-fit moves the weight onto the twin. The 'wrong' mask keeps both members of the first half of the pairs
    and prunes the other half entirely (same count per row)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, pairs, generator=g, dtype=torch.float64)
    x = torch.stack([base, base + 0.05 * torch.randn(rows, pairs, generator=g, dtype=torch.float64)], 2)
    x = x.reshape(rows, 2 * pairs)
    w = torch.randn(out, 2 * pairs, generator=g, dtype=torch.float64)
    wrong = torch.zeros(out, 2 * pairs, dtype=torch.bool)
    wrong[:, :pairs] = True
    return w, hessian(x), wrong


def random_layer(seed=0, out=24, cols=34, rows=300):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g).double()
    return torch.randn(out, cols, generator=g, dtype=torch.float64), hessian(x)


def refit_objective(w, h, keep):
    return layer_objective(w, obs_reconstruct(w, h, keep, percdamp=0.0), h)


def wanda_rows(w, h, s):
    score = w.abs() * h.diagonal().sqrt()
    return row_prune(score, torch.full((w.shape[0],), int(s * w.shape[1])))


@pytest.mark.parametrize("schedule", ["admm", "alps"])
def test_admm_finds_the_mask_a_wrong_initial_mask_misses(schedule):
    w, h, wrong = paired_layer()
    _, keep = admm_prune(w, h, wrong, Budget.of(wrong, None, None), schedule=schedule)
    assert torch.equal((~keep).sum(1), (~wrong).sum(1))  # every row prunes exactly what the initial mask pruned
    fixed, joint = refit_objective(w, h, wrong), refit_objective(w, h, keep)
    assert joint < 0.1 * fixed, (joint, fixed)  # one of each pair kept: the twin carries the weight
    pair_kept = keep.reshape(8, 8, 2).sum(-1)
    assert int((pair_kept == 0).sum()) < int((wrong.reshape(8, 8, 2).sum(-1) == 0).sum())


@pytest.mark.parametrize("schedule", ["admm", "alps"])
def test_admm_beats_the_fixed_mask_refit_at_the_same_row_budget(schedule):
    w, h = random_layer(cols=32)
    for s in (0.6, 0.7):
        keep0 = wanda_rows(w, h, s)
        forced = torch.zeros_like(keep0)
        forced[:, 0] = ~keep0[:, 0]  # entries pruned "in an earlier cycle" stay pruned
        _, keep = admm_prune(w, h, keep0, Budget.of(keep0, None, forced), schedule=schedule, stats=(st := {}))
        assert torch.equal((~keep).sum(1), (~keep0).sum(1)) and not bool((keep & forced).any())
        assert refit_objective(w, h, keep) < refit_objective(w, h, keep0)
        assert st["iterations"] >= 1 and st["buffer_bytes"] > 0


@pytest.mark.parametrize("schedule", ["admm", "alps"])
def test_admm_kn_stays_legal_and_keeps_the_tail(schedule):
    w, h = random_layer(cols=34)  # 8 groups of 4 and a tail of 2 columns
    pat = KeepPattern(2, 4)
    keep0 = kn_prune(w.abs() * h.diagonal().sqrt(), pat)
    keep0[:, 32] = False  # a tail the method left partly pruned stays exactly as it was
    _, keep = admm_prune(w, h, keep0, Budget.of(keep0, pat, None), schedule=schedule, iters=30)
    assert kn_violations(keep.double(), pat) == (24 * 8, 0, 2)
    assert bool((keep[:, :32].reshape(24, 8, 4).sum(-1) == 2).all())
    assert torch.equal(keep[:, 32:], keep0[:, 32:])
    assert refit_objective(w, h, keep) < refit_objective(w, h, keep0)


def test_budget_of_a_layer_that_does_not_follow_the_pattern_uses_row_counts():
    keep0 = torch.ones(4, 8, dtype=torch.bool)  # e.g. a head a k:n method skipped
    keep0[0, :3] = False
    b = Budget.of(keep0, KeepPattern(2, 4), None)
    assert b.pattern is None and b.counts.tolist() == [3, 0, 0, 0]


def test_dsnot_never_raises_its_error_and_keeps_counts():
    w, h, wrong = paired_layer(seed=1)
    errors = [layer_objective(w, w * wrong, h)]
    for cycles in range(1, 12):
        keep = swap_refine(w, h, wrong, Budget.of(wrong, None, None), cycles=cycles, stats=(st := {}))
        assert torch.equal((~keep).sum(1), (~wrong).sum(1))
        errors.append(layer_objective(w, w * keep, h))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0] and st["swaps"] > 0


def test_dsnot_kn_and_forced_entries():
    w, h = random_layer(seed=2, cols=34)
    pat = KeepPattern(2, 4)
    keep0 = kn_prune(w.abs() * h.diagonal().sqrt(), pat)
    forced = ~keep0 & (torch.rand(keep0.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    keep = swap_refine(w, h, keep0, Budget.of(keep0, pat, forced), cycles=50)
    assert kn_violations(keep.double(), pat)[1] == 0 and bool((keep[:, :32].reshape(24, 8, 4).sum(-1) == 2).all())
    assert not bool((keep & forced).any()) and torch.equal(keep[:, 32:], keep0[:, 32:])
    assert layer_objective(w, w * keep, h) < layer_objective(w, w * keep0, h)


def test_ria_score_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0]])
    sq = torch.tensor([16.0, 1.0, 81.0])  # ‖x_j‖₂ = 4, 1, 9; a = 0.5 -> 2, 1, 3
    # |W| / column sums (4, 3, 1) + |W| / row sums (3, 5)
    hand = torch.tensor(
        [[(1 / 4 + 1 / 3) * 2, (2 / 3 + 2 / 3) * 1, 0.0], [(3 / 4 + 3 / 5) * 2, (1 / 3 + 1 / 5) * 1, (1 + 1 / 5) * 3]]
    )
    torch.testing.assert_close(ria_scores(w.abs(), sq), hand.double())


def test_snake_reallocation_by_hand():
    imp = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2])  # channels by decreasing importance, G = 2 groups of 4
    # buckets (0,1) (2,3) (4,5) (6,7); odd buckets dealt in reverse: group 0 = 0, 3, 4, 7; group 1 = 1, 2, 5, 6
    assert bucket_permutation(imp, 4, snake=True).tolist() == [0, 3, 4, 7, 1, 2, 5, 6]
    assert bucket_permutation(imp, 4).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"method": "wanda", "refine": "nope"}, "refine="),
        ({"method": "wanda", "refine": "admm", "refine_iters": 0}, "refine_iters"),
        ({"method": "wanda", "refine_iters": 5}, "does nothing without refine"),
        ({"method": "sparsegpt", "refine": "dsnot"}, "needs reconstruct=True"),
        ({"method": "wanda-kn", "pattern": "2:4", "refine": "admm"}, "unknown key"),
        ({"method": "wanda-kn", "pattern": "2:4", "score": "magnitude"}, "score="),
        ({"method": "cast", "pattern": "2:4", "perm_importance": "ria"}, "without permute_align"),
        ({"method": "cast", "pattern": "2:4", "refine": "admm", "refine_iters": -1}, "refine_iters"),
    ],
)
def test_options_refuse_nonsense(cfg, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig.from_dict(cfg)


@pytest.mark.parametrize("method", ["magnitude", "seb"])
def test_refine_without_calibration_is_refused(method, tiny_bert):
    pruner = MPPruner(tiny_bert, PruningConfig.from_dict({"method": method, "refine": "dsnot"}))
    with pytest.raises(ConfigError, match="calibration"):
        pruner.prune()
    assert pruner.masks is None


def calib(kind):
    torch.manual_seed(1)
    if kind == "vit":
        return [tm.vit_inputs(batch=4) for _ in range(2)]
    return [tm.bert_inputs(batch=4, seq=8) for _ in range(2)]


def prune(model, kind, **cfg):
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    return pruner, pruner.prune(calibration=calib(kind))


@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize(
    ("method", "refine"),
    [("wanda", "admm"), ("mp-wanda", "alps"), ("sparsegpt", "admm"), ("wanda", "dsnot"), ("mp-sparsegpt", "dsnot")],
)
def test_end_to_end_exact_budgets_and_ledger(kind, method, refine, tiny_bert, tiny_vit):
    model = tiny_bert if kind == "bert" else tiny_vit
    opts = {"method": method, "sparsity": 0.6, "refine_iters": 25}
    if method == "mp-sparsegpt":
        opts["reconstruct"] = True
    base_opts = {k: v for k, v in opts.items() if k not in ("refine_iters", "reconstruct")}  # refused without refine
    _, base = prune(copy.deepcopy(model), kind, **base_opts)
    pruner, masks = prune(model, kind, refine=refine, **opts)
    # Wanda's masks come first, so every row prunes exactly what it did without refine; SparseGPT's later layers
    # see a differently refined upstream, so there the layer counts (the method's budget) are compared
    per = (lambda m: (~m).sum(1)) if "wanda" in method else (lambda m: int((~m).sum()))
    for la in pruner.layers:
        assert torch.equal(torch.as_tensor(per(masks[la.name])), torch.as_tensor(per(base[la.name]))), la.name
        assert bool((la.weight[~masks[la.name]] == 0).all())
    assert masks != base  # the refinement moved entries
    step = pruner.ledger.steps[-1]
    rec = step["refine"]
    assert step["config"]["refine"] == refine and rec["kind"] == refine and rec["max_iterations"] == 25
    assert set(rec["layers"]) == set(pruner.layers.names)
    assert all(r["objective"] <= r["initial_mask_objective"] * (1 + 1e-9) for r in rec["layers"].values())
    assert rec["total_objective"] < rec["total_initial_mask_objective"]
    assert {r["weights"] for r in rec["layers"].values()} <= ({"refit"} if refine == "dsnot" else {"refit", "admm"})
    assert set(rec["time_split"]) == {"refine_s", "refit_s", "initial_mask_refit_and_objectives_s"}
    assert rec["memory"]["largest_layer_buffers_mib"] > 0
    assert rec["weights"].startswith("least-squares") == (refine != "dsnot" or opts.get("reconstruct", False))


@pytest.mark.parametrize("refine", ["admm", "dsnot"])
def test_kn_refine_stays_legal(refine, tiny_bert):
    for method in ("wanda", "cast"):
        pruner, masks = prune(copy.deepcopy(tiny_bert), "bert", method=method, pattern="2:4", refine=refine,
                              reconstruct=True, refine_iters=20)  # fmt: skip
        for la in pruner.layers:
            if la.role == "head" and method == "cast":
                continue
            assert kn_violations(la.matrix_view().detach(), KeepPattern(2, 4))[1] == 0, la.name
            assert bool((la.matrix_view(masks[la.name]).reshape(la.shape[0], -1, 4).sum(-1) == 2).all())
        assert pruner.ledger.steps[-1]["refine"]["total_objective"] > 0


def test_ria_and_snake_reallocation_feed_wanda_kn(tiny_vit, monkeypatch):
    x = tm.vit_inputs(batch=2)
    with torch.no_grad():
        dense_out = copy.deepcopy(tiny_vit)(**x).logits
    _, bmasks = prune(copy.deepcopy(tiny_vit), "vit", method="wanda-kn", pattern="2:4")
    pruner, masks = prune(copy.deepcopy(tiny_vit), "vit", method="wanda-kn", pattern="2:4", score="ria",
                          permute_align=True, perm_importance="ria")  # fmt: skip
    step = pruner.ledger.steps[-1]
    assert step["kn"]["score"] == "ria" and step["legality"]["ok"] and step["folded_permutations"]
    assert set(step["time_split"]) == {"permutation_s", "calibration_forwards_s", "mask_choice_s"}
    assert step["memory"]["process_peak_rss_mib"] > 0
    assert masks != bmasks
    # the reallocation alone is exact: with the selection switched off, the permuted model gives the dense outputs
    monkeypatch.setattr(baselines, "kn_select", lambda ctx, *a: Masks.from_model(ctx.model, ctx.layers.names))
    perm_only, _ = prune(tiny_vit, "vit", method="wanda-kn", pattern="2:4", permute_align=True, perm_importance="ria")
    assert perm_only.ledger.steps[-1]["folded_permutations"]
    with torch.no_grad():
        torch.testing.assert_close(tiny_vit(**x).logits, dense_out, rtol=1e-5, atol=1e-5)


def test_failure_midway_leaves_the_model_unchanged(tiny_bert, monkeypatch):
    calls = {"n": 0}
    real = refine_mod.admm_prune

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated failure in layer 4")
        return real(*args, **kwargs)

    monkeypatch.setattr(refine_mod, "admm_prune", flaky)
    before = {k: v.detach().clone() for k, v in tiny_bert.state_dict().items()}
    pruner = MPPruner(tiny_bert, PruningConfig.from_dict({"method": "wanda", "sparsity": 0.6, "refine": "admm"}))
    with pytest.raises(RuntimeError, match="simulated"):
        pruner.prune(calibration=calib("bert"))
    after = tiny_bert.state_dict()
    assert calls["n"] == 4 and all(torch.equal(before[k], after[k]) for k in before) and pruner.masks is None


def test_magnitude_kn_refit_and_refine_target_the_dense_weights(tiny_bert):
    dense = {k: v.detach().clone() for k, v in tiny_bert.state_dict().items()}
    pruner, masks = prune(tiny_bert, "bert", method="magnitude", pattern="2:4", reconstruct=True, refine="dsnot")
    la = pruner.layers.layers[0]
    kept = masks[la.name]
    assert not torch.equal(la.weight[kept], dense[la.name + ".weight"][kept])  # re-fitted, not the masked original
    assert kn_violations(la.matrix_view().detach(), KeepPattern(2, 4))[1] == 0
    assert pruner.ledger.steps[-1]["refine"]["total_objective"] > 0


def test_layer_refiner_takes_the_better_weights_and_guards_the_initial_mask(monkeypatch):
    w, h = random_layer(seed=3, cols=32)
    s = torch.logspace(-1, 1, 32, dtype=torch.float64)  # inputs on very different scales
    h = h * s.unsqueeze(0) * s.unsqueeze(1)
    cfg = PruningConfig.from_dict({"method": "wanda", "refine": "alps"})
    keep0 = wanda_rows(w, h, 0.6)
    ref = LayerRefiner(cfg, cfg.refit_kwargs(), {})
    new, keep = ref("l", w, h, keep0)
    rec = ref.layers["l"]
    assert layer_objective(w, new, h) == pytest.approx(rec["objective"])
    assert rec["objective"] <= layer_objective(w, obs_reconstruct(w, h, keep, **cfg.refit_kwargs()), h) + 1e-9
    assert rec["objective"] < rec["initial_mask_objective"] and not rec["kept_initial_mask"]
    # a refinement that does worse than the method's mask is not taken: the layer keeps the mask and its re-fit
    worst = row_prune(-(w.abs() * h.diagonal().sqrt()), (~keep0).sum(1))
    monkeypatch.setattr(refine_mod, "admm_prune", lambda W, *a, **k: (W * worst, worst))
    new, keep = ref("bad", w, h, keep0)
    assert torch.equal(keep, keep0) and ref.layers["bad"]["kept_initial_mask"]
    torch.testing.assert_close(new, obs_reconstruct(w, h, keep0, **cfg.refit_kwargs()))
