"""Issue 17 (cost): block-cached sequential calibration, the fast exact re-fit, the factorisation shortcut, the
threaded eigenvalues, MP-budgeted SparseGPT and the time split in the ledger."""

import copy
import math

import pytest
import torch
from torch import nn

import hf_mpprune.core.blockwise as bw
import hf_mpprune.core.joined as joined_mod
from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.blockwise import block_sequential
from hf_mpprune.core.config import KeepPattern
from hf_mpprune.core.layers import discover_layers
from hf_mpprune.core.obs import _inv_chol_upper, damped, obs_reconstruct
from hf_mpprune.core.threads import parallel_map, split
from hf_mpprune.spectral.fit import gram_eigvals
from tests import tiny_models as tm


def _calib(kind):
    torch.manual_seed(1)
    if kind == "vit":
        return [tm.vit_inputs(batch=4) for _ in range(2)]
    return [tm.bert_inputs(batch=4, seq=8) for _ in range(2)]


def _prune(model, cfg, calib, plain, monkeypatch):
    with monkeypatch.context() as mp:
        if plain:
            mp.setattr(bw, "find_blocks", lambda model, layers: None)
        pruner = MPPruner(model, PruningConfig.from_dict(cfg))
        pruner.prune(calibration=calib)
    return pruner


@pytest.mark.parametrize("joined", [False, True])
@pytest.mark.parametrize("kind", ["bert", "vit"])
@pytest.mark.parametrize(
    "cfg",
    [
        {"method": "sparsegpt", "sparsity": 0.5},
        {"method": "wanda", "sparsity": 0.6, "reconstruct": True, "reconstruct_solver": "exact"},
        {"method": "sparsegpt", "pattern": "2:4"},
        {"method": "cast", "pattern": "2:4", "reconstruct": True, "reconstruct_solver": "exact"},
    ],
)
def test_block_path_equals_per_layer_forwards(kind, cfg, joined, tiny_bert, tiny_vit, monkeypatch):
    """Cached block inputs: bit-identical to re-running the model per layer; with the batches joined into one
    (one block forward per block, re-fit inside the forward) the same up to float rounding, same masks."""
    model = tiny_bert if kind == "bert" else tiny_vit
    calib = _calib(kind)
    plain_model, block_model = copy.deepcopy(model), copy.deepcopy(model)
    p0 = _prune(plain_model, cfg, calib, True, monkeypatch)
    with monkeypatch.context() as mp:
        if not joined:
            mp.setattr(joined_mod, "join_batches", lambda batches: None)
        p1 = _prune(block_model, cfg, calib, False, monkeypatch)
    a, b = plain_model.state_dict(), block_model.state_dict()
    if joined:
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
        assert any(not torch.equal(a[k], b[k]) for k in a)  # really another computation (one joined batch)
    else:
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert p0.masks.sha256() == p1.masks.sha256()
    split_ = p1.ledger.steps[-1]["time_split"]
    rec = split_.get("reconstruction") or split_
    if "path" not in rec:  # wanda + reconstruct: the path is in the reconstruct record
        rec = p1.ledger.steps[-1]["reconstruct"]["time_split"]
    assert rec["path"] == "blocks"
    assert rec.get("joined_batches") == (len(calib) if joined else None)


def test_joined_batches_pad_to_the_longest_and_refuse_what_does_not_line_up():
    from hf_mpprune.core.joined import join_batches

    ids = [torch.arange(1, 11).reshape(2, 5), torch.arange(1, 10).reshape(3, 3)]
    masks = [torch.ones(2, 5, dtype=torch.long), torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])]
    batches = [{"input_ids": i, "attention_mask": m, "flag": True} for i, m in zip(ids, masks)]
    out, real = join_batches(batches)
    assert out["input_ids"].shape == out["attention_mask"].shape == (5, 5) and out["flag"] is True
    assert torch.equal(out["input_ids"][2:, :3], ids[1]) and (out["input_ids"][2:, 3:] == 0).all()
    assert torch.equal(out["attention_mask"][2:, :3], masks[1]) and (out["attention_mask"][2:, 3:] == 0).all()
    assert torch.equal(real, out["attention_mask"].bool()) and int(real.sum()) == 10 + 6
    h = [torch.randn(2, 5, 4), torch.randn(3, 5, 4)]
    args = join_batches([{"x": h[0]}, {"x": h[1]}])[0]
    assert torch.equal(args["x"], torch.cat(h))
    assert join_batches([{"x": h[0]}, {"x": torch.randn(3, 6, 4)}]) is None  # other length and no mask to pad with
    assert join_batches([{"x": h[0], "flag": True}, {"x": h[1], "flag": False}]) is None  # other flags
    assert join_batches([{"x": h[0]}, {"y": h[1]}]) is None  # other keys
    assert join_batches([batches[0], {"input_ids": ids[1]}]) is None  # a mask in one batch only


def test_block_plan_groups_shared_inputs_and_falls_back(tiny_bert):
    layers = list(discover_layers(tiny_bert))
    calls = []
    batches = _calib("bert")

    def on_layer(la, h):
        calls.append((la.name, h))

    tm_ = block_sequential(tiny_bert, layers, batches, on_layer)
    assert tm_.path == "blocks" and [n for n, _ in calls] == [la.name for la in layers][: len(calls)]
    h = dict(calls)
    q, k, v = (f"encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value"))
    assert h[q] is h[k] is h[v]  # one Hessian for the three projections fed the same tensor
    out = "encoder.layer.0.attention.output.dense"
    assert h[out] is not h[q] and h[out].shape == h[q].shape

    class NoBlocks(nn.Module):  # no ModuleList: the plain path, with its reason
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    net = NoBlocks()
    seen = []
    tm2 = block_sequential(net, list(discover_layers(net)), [{"x": torch.randn(5, 6)}], lambda la, h: seen.append(la))
    assert tm2.path.startswith("plain") and len(seen) == 2


def _problem(rows=24, cols=40, samples=300, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g).double()
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w.to(dtype), x, 2 * x.T @ x / samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.85])  # kept form, tie, pruned (OBS) form
def test_fast_refit_matches_dense_least_squares(dtype, density):
    w, x, h = _problem(dtype=dtype)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(w.shape, generator=g) < density
    keep[0] = False  # an empty row
    keep[1] = True  # a full row
    stats = {}
    got = obs_reconstruct(w, h, keep, percdamp=0.0, stats=stats)
    assert got.dtype == dtype and bool((got[~keep] == 0).all())
    hd = h.double()
    for r in range(w.shape[0]):
        k = keep[r].nonzero().squeeze(1)
        if len(k) == 0:
            continue
        ref = torch.linalg.solve(hd[k][:, k], (hd @ w[r].double())[k])
        tol = 1e-4 if dtype == torch.float32 else 1e-9
        torch.testing.assert_close(got[r, k].double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
    if density > 0.5:
        assert stats["pruned_form_rows"] > 0
    if density < 0.5:
        assert stats["kept_form_rows"] > 0
    assert stats["float64_fallback_rows"] == 0


def test_refit_falls_back_to_float64_when_float32_cannot_factor(monkeypatch):
    w, x, h = _problem(rows=6, cols=16, seed=5)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    ref = obs_reconstruct(w.double(), h, keep, percdamp=0.0)  # float64 throughout
    real = torch.linalg.cholesky_ex
    marked = []

    def failing(a, **kw):  # float32 factorisation reports failure on every other system
        chol, info = real(a, **kw)
        info = info.clone()
        info[::2] = 1
        marked.append(len(info[::2]))
        return chol, info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing)
    stats = {}
    got = obs_reconstruct(w, h, keep, percdamp=0.0, stats=stats)
    assert stats["float64_fallback_rows"] == sum(marked) > 0  # the failed float32 systems went to float64
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_inverse_cholesky_factor_shortcut():
    _, _, h = _problem(cols=64, seed=4)
    h = damped(h, 0.01)
    textbook = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    u = _inv_chol_upper(h)
    torch.testing.assert_close(u, textbook, rtol=1e-9, atol=1e-12)
    assert bool((u.tril(-1) == 0).all())


def test_threaded_eigvalsh_equals_batched():
    g = torch.Generator().manual_seed(0)
    mats = torch.randn(5, 20, 30, generator=g, dtype=torch.float64)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ev = gram_eigvals(mats)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)
    ref = torch.linalg.eigvalsh(mats @ mats.mT).clamp_min(0).numpy()
    assert ev.shape == (5, 20) and abs(ev - ref).max() < 1e-9 * abs(ref).max()
    assert parallel_map(lambda s: s.stop - s.start, split(10, 3), workers=2) == [3, 4, 3]


def test_mp_sparsegpt_budgets_exact_and_beta0_is_sparsegpt(tiny_bert):
    calib = _calib("bert")
    cfg = {"method": "mp-sparsegpt", "sparsity": 0.6, "beta": -0.5}
    pruner = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict(cfg))
    masks = pruner.prune(calibration=calib)
    assert masks.num_pruned == math.floor(0.6 * pruner.layers.total_params)
    rec = pruner.ledger.steps[-1]
    spars = rec["allocation"]["layer_sparsity"]
    assert max(spars.values()) - min(spars.values()) > 0.05  # the MP weights move budgets between layers
    assert {n: round(float((~masks[n]).float().mean()), 6) for n in masks.names} == {
        n: round(v, 6) for n, v in spars.items()
    }
    assert set(rec["time_split"]) >= {"calibration_forwards_s", "hessians_s", "mask_choice_and_update_s"}
    base = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict({"method": "sparsegpt", "sparsity": 0.6}))
    zero = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict({**cfg, "beta": 0.0}))
    assert base.prune(calibration=calib).sha256() == zero.prune(calibration=calib).sha256()


def test_time_split_recorded(tiny_bert):
    cfg = {"method": "mp-wanda", "sparsity": 0.5, "reconstruct": True}
    pruner = MPPruner(tiny_bert, PruningConfig.from_dict(cfg))
    pruner.prune(calibration=_calib("bert"))
    split_ = pruner.ledger.steps[-1]["time_split"]
    assert set(split_) == {"calibration_forwards_s", "hessians_s", "mask_choice_s", "reconstruction_s"}
    assert all(v >= 0 for v in split_.values()) and split_["reconstruction_s"] > 0
    rec = pruner.ledger.steps[-1]["reconstruct"]
    assert rec["solver_name"] == "cg" and 0 <= rec["solver_stats"]["cg_max_rel_residual"] < 1
    exact = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict({**cfg, "reconstruct_solver": "exact"}))
    exact.prune(calibration=_calib("bert"))
    assert exact.ledger.steps[-1]["reconstruct"]["solver_stats"]["float64_fallback_rows"] == 0


def _loss(w, w_hat, h):
    d = w.double() - w_hat.double()
    return float(torch.einsum("ri,ij,rj->", d, h.double(), d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cg_refit_lowers_the_loss_every_step_and_converges_to_exact(dtype):
    w, x, h = _problem(rows=32, cols=48, dtype=dtype)
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.45
    keep[0], keep[1] = False, True  # an empty row and a full row
    exact = obs_reconstruct(w, h, keep, percdamp=0.0, solver="exact")
    base = _loss(w, w * keep, h)  # the masked original: CG's starting point
    best = _loss(w, exact, h)
    losses = []
    for it in (1, 3, 10, 30, 200):
        stats = {}
        got = obs_reconstruct(w, h, keep, percdamp=0.0, solver="cg", iters=it, stats=stats)
        assert got.dtype == dtype and bool((got[~keep] == 0).all())
        torch.testing.assert_close(got[1], exact[1])  # a full row: nothing to re-fit, w itself
        losses.append(_loss(w, got, h))
    assert base > losses[0] > losses[2] > best  # strictly better than masking, worse than exact
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), losses  # monotone in the steps
    assert (losses[-1] - best) / (base - best) < 1e-4  # 200 steps: the exact minimiser's loss
    assert stats["cg_max_rel_residual"] < 1e-2


def test_refit_options_are_validated_and_reach_cast(tiny_bert):
    from hf_mpprune.core.errors import ConfigError

    for bad in ({"reconstruct_solver": "lu"}, {"reconstruct_iters": 0}, {"reconstruct_iters": 2.5}):
        for method in ({"method": "wanda", "sparsity": 0.5}, {"method": "cast", "pattern": "2:4"}):
            with pytest.raises(ConfigError, match=next(iter(bad))):
                PruningConfig.from_dict({**method, "reconstruct": True, **bad})
    cfg = {"method": "cast", "pattern": "2:4", "reconstruct": True, "reconstruct_solver": "cg", "reconstruct_iters": 3}
    pruner = MPPruner(copy.deepcopy(tiny_bert), PruningConfig.from_dict(cfg))
    pruner.prune(calibration=_calib("bert"))
    rec = pruner.ledger.steps[-1]["reconstruct"]
    assert rec["solver_name"] == "cg" and rec["solver"].startswith("3 ")


def test_sparsegpt_block_granularity_is_exact_and_one_forward_per_block(tiny_bert):
    calib = _calib("bert")

    def run(granularity):
        model = copy.deepcopy(tiny_bert)
        calls = {"n": 0}
        for blk in model.encoder.layer:
            blk.register_forward_pre_hook(lambda mod, args: calls.__setitem__("n", calls["n"] + 1))
        cfg = {"method": "sparsegpt", "sparsity": 0.5, "sequential": granularity}
        pruner = MPPruner(model, PruningConfig.from_dict(cfg))
        masks = pruner.prune(calibration=calib)
        assert masks.num_pruned == math.floor(0.5 * pruner.layers.total_params)
        assert pruner.ledger.steps[-1]["time_split"]["path"] == "blocks"
        assert pruner.ledger.steps[-1]["time_split"]["joined_batches"] == len(calib)
        return calls["n"], masks

    n_layer, m_layer = run("layer")
    n_block, m_block = run("block")
    # the calibration batches are joined into one: layer granularity re-fits inside ONE forward per block (the
    # hooks on each input group's first layer), block granularity needs 2 (capture, then propagate; the last block's
    # output feeds nothing, so it is not propagated); the rest (planning forwards, the check of the joined batch) is
    # the same for both
    blocks = len(tiny_bert.encoder.layer)
    assert n_block - n_layer == blocks - 1
    assert m_layer.sha256() != m_block.sha256()  # a different (coarser) convention, not the same result
    with pytest.raises(Exception, match="sequential"):
        PruningConfig.from_dict({"method": "sparsegpt", "sequential": "nope"})


def test_sparsegpt_sweep_same_with_and_without_threads(monkeypatch):
    """Large layers sweep with the process's threads, small ones single-threaded: the same masks and weights."""
    import hf_mpprune.core.obs as obs

    w, x, h = _problem(rows=48, cols=96, seed=7)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = {}
        for limit in (0, 10**9):  # 0: every layer counts as large (threaded); 10**9: single-threaded
            monkeypatch.setattr(obs, "SWEEP_THREADED_NUMEL", limit)
            out[limit] = [obs.sparsegpt_prune(w, h, t, blocksize=32) for t in (0.6, KeepPattern.parse("2:4"))]
            assert torch.get_num_threads() == 2  # the thread count is restored either way
    finally:
        torch.set_num_threads(prev)
    for (wa, ka), (wb, kb) in zip(out[0], out[10**9]):
        assert torch.equal(ka, kb)
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5)
