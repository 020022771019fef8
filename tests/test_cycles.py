"""SER, Hybrid, classical RMT and the cyclic pipeline on a tiny ViT (stub and tiny real train steps)."""

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from hf_mpprune import (
    ConfigError,
    CycleFinetune,
    HybridConfig,
    Masks,
    MPPruner,
    PruningConfig,
    RMTConfig,
    SERConfig,
    make_train_step,
    run_cycles,
)
from hf_mpprune.core.masks import keep_top
from hf_mpprune.methods.rmt import apportion
from hf_mpprune.methods.ser import drop_fired, ramp_multiplier


GRID = [0.1, 0.2, 0.25, 0.3]
SMALL_SER = {"phase_a_min_batches": 1, "phase_a_batch_size": 8}


class StubTrainStep:
    """Phase A writes a deterministic pseudo-random value into every trainable entry; fine-tune does nothing.
    Every call is logged so tests can check what the pipeline asked for."""

    def __init__(self, seed=0):
        self.seed, self.calls, self.phase_a_values, self.trainable = seed, [], {}, None

    def __call__(self, model, masks, *, phase, trainable, epochs, lr, optimizer, **kw):
        self.calls.append({"phase": phase, "epochs": epochs, "lr": lr, "optimizer": optimizer, **kw})
        if phase == "ser_phase_a":
            self.trainable = {n: m.clone() for n, m in trainable.items()}
            gen = torch.Generator().manual_seed(self.seed + len(self.calls))
            with torch.no_grad():
                for name, m in trainable.items():
                    w = model.get_submodule(name).weight
                    vals = torch.randn(w.shape, generator=gen)
                    w.copy_(torch.where(m, vals, w))
                    self.phase_a_values[name] = torch.where(m, vals, torch.zeros_like(vals))
        return {"steps": 1}


def _pruner(model, cfg):
    return MPPruner(model, cfg)


def _exact(pruner, s):
    return pruner.masks.num_pruned == math.floor(s * pruner.layers.total_params)


# ---- SER ----------------------------------------------------------------------------------------------------
def test_ser_exact_cumulative_restore_count_and_ranking(tiny_vit):
    pruner = _pruner(tiny_vit, SERConfig(sparsity=0.3, **SMALL_SER))
    stub, prev = StubTrainStep(), None
    names, P = pruner.layers.names, pruner.layers.total_params
    for s in GRID:
        masks = pruner.prune(train_step=stub, sparsity=s)
        rec = pruner.ledger.steps[-1]
        assert _exact(pruner, s)
        if prev is not None:
            assert masks.is_subset_of(prev)
        over, final = math.floor((s + 0.03) * P), math.floor(s * P)
        assert rec["restore_count"] == over - final == sum(rec["restored_by_layer"].values())
        res = stub.trainable
        assert sum(int(res[n].sum()) for n in names) == rec["reservoir_size"]
        if prev is not None:  # reservoir = newly removed entries only
            assert all(not bool((res[n] & ~prev[n]).any()) for n in names)
        # independent ranking: restored = top-k of |phase-A value| * rho inside the reservoir
        score = torch.cat([(stub.phase_a_values[n].abs() * rec["restore_rho"][n]).reshape(-1) for n in names])
        in_res = torch.cat([res[n].reshape(-1) for n in names])
        top = torch.topk(torch.where(in_res, score, torch.tensor(-1.0)), rec["restore_count"]).indices
        restored = {n: res[n] & masks[n] for n in names}
        got = torch.cat([restored[n].reshape(-1) for n in names]).nonzero().squeeze(1)
        assert set(top.tolist()) == set(got.tolist())
        for n in names:  # restored keep their phase-A value; other reservoir entries are exactly +0.0
            w = pruner.model.get_submodule(n).weight.detach()
            assert torch.equal(w[restored[n]], stub.phase_a_values[n][restored[n]])
            assert bool((w[~masks[n]] == 0).all())
        assert rec["stage"] == "ser" and set(rec["layer_weights"]) == set(names)
        assert rec["decisions"]["restore_multiplier"] == "inverse"
        prev = masks


def test_ser_without_train_step_is_a_clear_error_and_model_untouched(tiny_vit):
    pruner = _pruner(tiny_vit, SERConfig(sparsity=0.3))
    before = {n: p.detach().clone() for n, p in tiny_vit.named_parameters()}
    with pytest.raises(ConfigError, match="train_step"):
        pruner.prune()
    assert all(torch.equal(p, before[n]) for n, p in tiny_vit.named_parameters())
    with pytest.raises(ConfigError, match="restore_fraction"):
        SERConfig(overprune_margin=0.05, restore_fraction=0.03)
    with pytest.raises(ConfigError, match="restore_multiplier"):
        SERConfig(restore_multiplier="sideways")


def test_ser_same_seed_bit_identical_and_direct_multiplier_differs(tiny_vit):
    import copy

    shas = []
    for mult in ("inverse", "inverse", "direct"):
        pruner = _pruner(copy.deepcopy(tiny_vit), SERConfig(sparsity=0.4, restore_multiplier=mult, **SMALL_SER))
        pruner.prune(train_step=StubTrainStep(), sparsity=0.4)
        shas.append(pruner.masks.sha256())
    assert shas[0] == shas[1]
    assert shas[0] != shas[2]  # the restore multiplier matters (SEB weights are not all 1 at 0.43)


# ---- Hybrid and the pipeline --------------------------------------------------------------------------------
def _global_magnitude(pruner, prev, s):
    scores = [pruner.model.get_submodule(n).weight.detach().abs().masked_fill(~prev[n], -1.0) if prev else
              pruner.model.get_submodule(n).weight.detach().abs() for n in pruner.layers.names]  # fmt: skip
    keeps = keep_top(scores, math.floor(s * pruner.layers.total_params))
    return Masks(dict(zip(pruner.layers.names, keeps)))


def test_hybrid_fixed_switch_rule_via_run_cycles(tiny_vit):
    pruner = _pruner(tiny_vit, HybridConfig(sparsity=0.3, **SMALL_SER))
    stub = StubTrainStep()
    seen = []
    recs = run_cycles(pruner, GRID, train_step=stub, evaluate=lambda m: seen.append(1) or {"accuracy": 0.5},
                      finetune=CycleFinetune(lr=1e-3), progress=False)  # fmt: skip
    assert [r["stage"] for r in recs] == ["magnitude", "magnitude", "ser", "ser"]
    from hf_mpprune.hub.card import steps_table

    table = steps_table(pruner).splitlines()  # the model card names each cycle's stage
    assert [row.split(" | ")[1] for row in table] == ["hybrid (magnitude)"] * 2 + ["hybrid (ser)"] * 2
    assert recs is not None and pruner.ledger.steps[-len(GRID) :] == recs
    for r, s in zip(recs, GRID):
        assert r["target_sparsity"] == s
        assert round(r["achieved_sparsity"] * pruner.layers.total_params) == math.floor(s * pruner.layers.total_params)
        assert r["pre_ft"] == {"accuracy": 0.5} and r["post_ft"] == {"accuracy": 0.5}
        assert set(r["layer_weights"]) == set(pruner.layers.names) and "layer_sparsity" in r
        assert r["finetune"]["epochs"] == 1.0 and r["cycle_seconds"] >= 0
    # magnitude prefix uses the pipeline's FT settings, SER steps the keep-FT LR with the 1 -> 2 ramp
    ft = [c for c in stub.calls if c["phase"] == "finetune"]
    assert [c["lr"] for c in ft] == pytest.approx([1e-3, 1e-3, 5e-5, 1e-4])
    assert [c["optimizer"] for c in ft] == ["sgd"] * 4
    assert recs[2]["restore_count"] > 0 and recs[0].get("restore_count") is None
    assert len(seen) == 2 * len(GRID)
    ledger = json.loads(pruner.ledger.to_json())
    assert [st["stage"] for st in ledger["steps"]] == ["magnitude", "magnitude", "ser", "ser"]
    assert ledger["steps"][2]["config"]["phase_a_min_batches"] == 1


def test_config_round_trip_and_validation():
    cfg = HybridConfig(switch="drop_threshold", keep_ft_lr_ramp=(1.0, 3.0), transition_sparsity=0.3)
    assert PruningConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"switch": "sometimes"}, {"drop_reference": "eval_split"}, {"keep_ft_lr_ramp": (1.0, -1.0)}):
        with pytest.raises(ConfigError):
            HybridConfig(**bad)
    with pytest.raises(ConfigError, match="theta_mode"):
        RMTConfig(theta_mode="x")


def test_hybrid_magnitude_steps_equal_global_magnitude(tiny_vit):
    pruner = _pruner(tiny_vit, HybridConfig(sparsity=0.2))
    prev = None
    for s in (0.05, 0.2):
        want = _global_magnitude(pruner, prev, s)
        prev = pruner.prune(train_step=StubTrainStep(), sparsity=s)
        assert prev == want and pruner.ledger.steps[-1]["stage"] == "magnitude"


def test_drop_threshold_uses_only_the_selection_split(tiny_vit):
    """Selection accuracy falls 1 pp at s = 0.2; the eval split would have fired at 0.1 already."""
    pruner = _pruner(tiny_vit, HybridConfig(sparsity=0.3, switch="drop_threshold", **SMALL_SER))

    def current(m):
        return Masks.from_model(m, pruner.layers.names).sparsity()

    def selection(m):
        return {"accuracy": 0.95 if current(m) < 0.15 else 0.94}

    def evaluate(m):
        return {"accuracy": 0.95 if current(m) < 0.05 else 0.80}

    recs = run_cycles(pruner, GRID, train_step=StubTrainStep(), evaluate=evaluate, selection_eval=selection,
                      progress=False)  # fmt: skip
    assert [r["stage"] for r in recs] == ["magnitude", "magnitude", "ser", "ser"]
    assert pruner.config.transition_sparsity == 0.2
    assert recs[1]["switch"]["transition_sparsity"] == 0.2 and recs[1]["switch"]["reference"] == 0.95
    with pytest.raises(ConfigError, match="selection_eval"):
        run_cycles(_pruner(tiny_vit, HybridConfig(switch="drop_threshold")), GRID, train_step=StubTrainStep())


def test_hybrid_same_seed_bit_identical(tiny_vit):
    import copy

    shas = []
    for _ in range(2):
        pruner = _pruner(copy.deepcopy(tiny_vit), HybridConfig(sparsity=0.3, **SMALL_SER))
        recs = run_cycles(pruner, GRID, train_step=StubTrainStep(), progress=False)
        shas.append([r["mask_sha256"] for r in recs])
    assert shas[0] == shas[1]


def test_method_for_switches_method_per_step(tiny_vit):
    pruner = _pruner(tiny_vit, SERConfig(sparsity=0.2, **SMALL_SER))
    recs = run_cycles(pruner, [0.1, 0.2], train_step=StubTrainStep(), progress=False,
                      method_for=lambda s: "magnitude" if s <= 0.1 else "ser")  # fmt: skip
    assert [r["method"] for r in recs] == ["magnitude", "ser"] and [r["stage"] for r in recs] == ["magnitude", "ser"]
    assert _exact(pruner, 0.2) and pruner.config.phase_a_min_batches == 1  # SER fields survive the round trip


# ---- classical RMT ------------------------------------------------------------------------------------------
def test_rmt_exact_cumulative_records_and_deterministic(tiny_vit):
    import copy

    runs = []
    for _ in range(2):
        pruner = _pruner(copy.deepcopy(tiny_vit), RMTConfig(sparsity=0.3))
        prev, shas = None, []
        for s in (0.05, 0.1):
            masks = pruner.prune(sparsity=s)
            rec = pruner.ledger.steps[-1]
            assert _exact(pruner, s)
            assert prev is None or masks.is_subset_of(prev)
            assert sum(rec["new_pruned_by_layer"].values()) == masks.num_pruned - (prev.num_pruned if prev else 0)
            assert rec["cycle"] == round(s / 0.05)
            assert bool(rec["sv_sparsified_layers"]) == (rec["cycle"] % 2 == 0)
            for n in pruner.layers.names:  # weights agree with masks after the SV recomposition
                assert bool((pruner.model.get_submodule(n).weight[~masks[n]] == 0).all())
            prev = masks
            shas.append(masks.sha256())
        runs.append(shas)
    assert runs[0] == runs[1]


def test_apportion_exact_and_capped():
    assert apportion(10, [1.0, 1.0, 2.0], [100, 100, 100]) == [3, 2, 5]  # remainder tie -> lower index
    out = apportion(50, [10.0, 1.0, 1.0], [5, 100, 100])
    assert sum(out) == 50 and out[0] == 5 and out[1] + out[2] == 45
    assert apportion(7, [0.0, 0.0], [3, 4]) == [3, 4]
    with pytest.raises(ValueError):
        apportion(8, [1.0, 1.0], [3, 4])


# ---- pure helpers and the real default train step -----------------------------------------------------------
def test_ramp_and_drop_helpers():
    assert ramp_multiplier(0.25, [0.25, 0.5, 0.7], (1.0, 2.0)) == 1.0
    assert ramp_multiplier(0.7, [0.25, 0.5, 0.7], (1.0, 2.0)) == 2.0
    assert ramp_multiplier(0.475, [0.25, 0.7], (1.0, 2.0)) == pytest.approx(1.5)
    assert drop_fired(0.95, 0.942, 0.7) and not drop_fired(0.95, 0.944, 0.7)


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_real_train_step_phase_a_moves_only_reservoir_and_finetune_keeps_masks(tiny_vit):
    pruner = _pruner(tiny_vit, SERConfig(sparsity=0.3, phase_a_min_batches=2, phase_a_batch_size=8,
                                         phase_a_lr=1e-2))  # fmt: skip
    step = make_train_step(_data(), batch_size=8, seed=0)
    before = {n: p.detach().clone() for n, p in tiny_vit.named_parameters()}
    captured = {}

    def spy(model, masks, **kw):
        if kw["phase"] == "ser_phase_a":
            captured.update(kw["trainable"])
            out = step(model, masks, **kw)
            captured["_after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            return out
        return step(model, masks, **kw)

    pruner.prune(train_step=spy, sparsity=0.3)
    after, moved = captured.pop("_after"), 0
    for n, p in before.items():
        layer = n.rsplit(".", 1)[0]
        if n.endswith(".weight") and layer in captured:
            res = captured[layer]
            assert torch.equal(after[n][~res], p[~res])  # non-reservoir entries bit-identical
            moved += int((after[n][res] != 0).sum())  # reservoir entries trained from zero
        else:
            assert torch.equal(after[n], p), n  # biases, norms, embeddings frozen
    assert moved > 0 and all(p.requires_grad for p in tiny_vit.parameters())
    masks = pruner.masks
    out = step(tiny_vit, masks, phase="finetune", trainable=None, epochs=1.0, lr=1e-2, optimizer="sgd")
    assert out["steps"] == 2 and _exact(pruner, 0.3)
    assert Masks.from_model(tiny_vit, pruner.layers.names).num_pruned >= masks.num_pruned
    for n in pruner.layers.names:
        assert bool((tiny_vit.get_submodule(n).weight[~masks[n]] == 0).all())
    with pytest.raises(ConfigError, match="teacher"):
        make_train_step(_data(), loss="kd")


# ---- calibration-based methods along the grid ---------------------------------------------------------------
def test_run_cycles_passes_calibration_each_step_and_stays_cumulative(tiny_vit):
    from hf_mpprune.methods.wanda import WandaConfig

    calib = [{"pixel_values": torch.randn(4, *_pixel_shape(tiny_vit), generator=torch.Generator().manual_seed(i))}
             for i in range(4)]  # fmt: skip
    with pytest.raises(ConfigError, match="needs calibration"):  # missing calibration: clear error, nothing pruned
        run_cycles(_pruner(tiny_vit, WandaConfig(sparsity=0.3)), GRID, train_step=StubTrainStep(), progress=False)
    assert Masks.from_model(tiny_vit, MPPruner(tiny_vit).layers.names).sparsity() < 0.01
    pruner = _pruner(tiny_vit, WandaConfig(sparsity=0.3, calibration_samples=16, calibration_batch_size=4))
    recs = run_cycles(pruner, GRID, train_step=StubTrainStep(), progress=False, calibration=calib)
    assert [r["calibration"]["num_samples"] for r in recs] == [16] * len(GRID)
    history = [r["mask_sha256"] for r in recs]
    assert len(set(history)) == len(GRID)  # every step prunes more
    assert all(_exact_at(pruner, r) for r in recs)  # Wanda's default rounding is exact along the whole grid
    for layer in pruner.layers:  # and rows of a layer differ by at most one pruned entry
        per_row = (~layer.matrix_view(pruner.masks[layer.name])).sum(1)
        assert int(per_row.max() - per_row.min()) <= 1, layer.name


def _exact_at(pruner, rec):
    return round(rec["achieved_sparsity"] * pruner.layers.total_params) == math.floor(
        rec["target_sparsity"] * pruner.layers.total_params
    )


def _pixel_shape(model):
    c = model.config
    return (c.num_channels, c.image_size, c.image_size)


def test_run_cycles_fits_dense_spectra_once_for_an_allocation_that_reads_them(tiny_vit):
    from hf_mpprune.methods.wanda import WandaConfig

    calib = [{"pixel_values": torch.randn(4, *_pixel_shape(tiny_vit), generator=torch.Generator().manual_seed(i))}
             for i in range(2)]  # fmt: skip
    cfg = WandaConfig(sparsity=0.3, allocation="alphapruning", calibration_samples=8, calibration_batch_size=4)
    pruner = _pruner(tiny_vit, cfg)
    dense_top = {la.name: float(torch.linalg.svdvals(la.matrix_view().detach().double())[0]) for la in pruner.layers}
    recs = run_cycles(pruner, GRID, train_step=StubTrainStep(), progress=False, calibration=calib)
    fits = pruner.spectra.by_layer()  # fitted before the first cycle: the dense weights' spectra
    assert all(fits[n].singular_values[0] == pytest.approx(v, rel=1e-9) for n, v in dense_top.items())
    assert all(_exact_at(pruner, r) for r in recs) and len({r["mask_sha256"] for r in recs}) == len(GRID)
    assert all(r["allocation"]["alpha"] == recs[0]["allocation"]["alpha"] for r in recs)  # static α
