"""Data-path budget certificates (docs/algorithms.md §9; §16 rows 4-6): the bounds hold against independently computed
truths on a trained ReLU MLP, exactly on classifier heads, vanish for dead inputs, and bad inputs fail clearly."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_mpprune import budget_audit
from hf_mpprune.builtins.digits import train_digits_mlp
from hf_mpprune.certify.bounds import (
    check_step,
    cross_entropy,
    elastic_net_verdict,
    gaussian_budget_bound,
    margins,
    weight_norms,
)
from hf_mpprune.cli.main import main
from hf_mpprune.core.errors import ConfigError
from hf_mpprune.core.ledger import Ledger
from tests.tiny_models import MLP, vit_inputs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_mlp():
    """ReLU MLP 64-256-256-10 trained 250 Adam steps on digits (seed 0); audit set T = 240 held-out images."""
    net, X, y, acc = train_digits_mlp(seed=0, steps=250, n_train=1200, n_audit=240)
    assert acc > 0.9, f"digits MLP trained badly ({acc:.3f})"
    return net, X, y


def _truth(net, layer_idx, R, X, y):
    """Independent B_T and ΔCE for the Sequential MLP: ψ₁ by slicing, L = Π downstream ‖W‖_∞."""
    with torch.no_grad():
        psi = net[:layer_idx](X).double() if layer_idx else X.double()
        L = np.prod([net[j].weight.double().abs().sum(1).max().item() for j in range(layer_idx + 2, 5, 2)])
        eta = L * (psi @ R.t()).abs().amax(1).numpy()
    return 2 * eta.mean(), eta


def test_mlp_global_lemma_5_1_and_cor_5_2_over_random_and_magnitude_masks(digits_mlp):
    net, X, y = digits_mlp
    pruned = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(1)
    total_flips, nontrivial = 0, 0
    with torch.no_grad():
        z_dense = net(X)
    for idx in (0, 2):
        W = net[idx].weight.detach()
        order = W.abs().flatten().argsort()
        for k in range(100):
            s = 0.02 + 0.96 * k / 49 if k < 50 else torch.rand((), generator=gen).item() * 0.98
            if k < 50:  # magnitude mask at a swept sparsity
                keep = torch.ones(W.numel(), dtype=torch.bool)
                keep[order[: int(s * W.numel())]] = False
                keep = keep.view_as(W)
            else:  # random mask
                keep = torch.rand(W.shape, generator=gen) >= s
            with torch.no_grad():
                pruned[idx].weight.copy_(W * keep)
            rep = budget_audit(net, pruned, str(idx), X, labels=y, lipschitz="mlp_global")
            assert rep.violations == 0, (idx, k, rep.violation_details)
            la = rep[str(idx)]
            b_true, eta_true = _truth(net, idx, (W * ~keep).double(), X, y)
            assert la.check.budget == pytest.approx(b_true, rel=1e-9)
            with torch.no_grad():
                z = pruned(X)
            dce = (F.cross_entropy(z, y) - F.cross_entropy(z_dense, y)).item()
            assert la.check.delta_ce == pytest.approx(dce, abs=1e-5)
            assert abs(dce) <= b_true + 1e-5
            flipped = (z.argmax(1) != z_dense.argmax(1)).numpy()
            pred_margin = margins(z_dense.double().numpy(), y.numpy())[0]
            assert not np.any(flipped & (pred_margin > 2 * eta_true + 1e-4))
            assert la.check.flips == flipped.sum()
            total_flips += int(flipped.sum())
            nontrivial += abs(dce) > 1e-3
        with torch.no_grad():
            pruned[idx].weight.copy_(W)
    assert total_flips > 50 and nontrivial > 100  # the checks were exercised, not vacuous


def test_joint_thm_5_8_and_dense_model_untouched(digits_mlp):
    net, X, y = digits_mlp
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        for i in (0, 2):
            pruned[i].weight.mul_(pruned[i].weight.abs() > pruned[i].weight.abs().median())
    net.train()
    rep = budget_audit(net, pruned, ["2", "0"], X, labels=y, lipschitz="mlp_global", lambdas=(1e-4, 1e-3))
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert rep.violations == 0 and rep.joint.layers == ["0", "2"]
    assert rep.joint.check.budget == pytest.approx(sum(s["B_T"] for s in rep.joint.steps))
    assert rep.joint.check.delta_ce == pytest.approx(rep.ce_pruned_model - rep.ce_dense, abs=1e-6)
    assert rep.other_params_differ == []
    assert len(rep.can_flip_indices()) == rep.joint.check.can_flip >= rep.joint.check.flips
    assert len(rep.can_flip_indices("2")) == rep["2"].check.can_flip
    el = rep.joint.elastic
    assert el["form"] == "thm_5_4_mask_split" and el["kind"] == "certificate"
    assert el["certified_decrease"] <= el["realised_decrease"]  # certified ⇒ realised
    assert rep.certified_line.startswith(f"on the audit set ({len(X)} samples), at most ")
    ledger = Ledger()
    ledger.audits.append(rep.to_ledger())
    assert json.loads(ledger.to_json())["audits"][0]["violations"] == 0


def test_estimates_are_labelled_and_never_counted(digits_mlp):
    net, X, y = digits_mlp
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned[0].weight.mul_(torch.rand(pruned[0].weight.shape) > 0.7)
    for est in ("const", "jacobian_local", "secant"):
        rep = budget_audit(net, pruned, "0", X, lipschitz=est)
        assert rep.violations == 0 and not rep["0"].valid_bound
        assert rep.certified_line.startswith("ESTIMATE, NOT A CERTIFICATE")
    rep = budget_audit(net, pruned, "0", X, lipschitz="const")
    assert rep["0"].check.estimate_exceeded > 0  # L_s = 1 is not a bound here: flagged, not a violation
    sec = budget_audit(net, pruned, "0", X, lipschitz="secant")["0"]
    glob = budget_audit(net, pruned, "0", X, lipschitz="mlp_global")["0"]
    assert np.all(sec.secant <= glob.lipschitz * (1 + 1e-6))  # secant is a lower bound on a valid L_s


def test_zero_budget_dead_pixels(digits_mlp):
    net, X, y = digits_mlp
    dead = (X == 0).all(0)
    assert dead.sum() >= 2  # digits has always-zero border pixels
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned[0].weight[:, dead] = 0.0
    for est in ("mlp_global", "const"):
        la = budget_audit(net, pruned, "0", X, labels=y, lipschitz=est, lambdas=(1e-3, 0.0))["0"]
        assert la.check.budget == 0.0 and np.all(la.rpsi_inf == 0)
        assert abs(la.check.delta_ce) < 1e-7 and la.check.flips == 0 and la.check.can_flip == 0
        assert la.elastic["certified_decrease"] == (est == "mlp_global")  # B_T = 0 < λ₁‖R‖₁


def _head_checks(rep):
    la = rep["classifier"]
    assert rep.violations == 0 and la.valid_bound and np.all(la.lipschitz == 1)
    assert abs(la.check.delta_ce) <= la.check.budget
    live = la.rpsi_inf > 1e-3
    assert live.sum() > 0 and np.allclose(la.secant[live], 1.0, rtol=1e-3)  # z_A - z_S = Rψ exactly


def test_head_exact_on_vit(tiny_vit):
    pruned = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        pruned.classifier.weight.mul_(torch.rand(pruned.classifier.weight.shape) > 0.5)
    samples = vit_inputs(batch=24)
    _head_checks(budget_audit(tiny_vit, pruned, "classifier", samples, lipschitz="head", batch_size=10))
    jac = budget_audit(tiny_vit, pruned, "classifier", samples, lipschitz="jacobian_local")["classifier"]
    assert np.allclose(jac.lipschitz, 1.0)  # ∂z/∂u = I for the logits layer
    with pytest.raises(ConfigError, match="produce the logits"):
        budget_audit(tiny_vit, pruned, "vit.layers.0.mlp.fc1", samples, lipschitz="head")
    with pytest.raises(ConfigError, match="mlp_global"):
        budget_audit(tiny_vit, pruned, "vit.layers.0.mlp.fc1", samples, lipschitz="mlp_global")


def test_head_exact_on_minilm_with_head(minilm_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    dense = BertForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    tok = AutoTokenizer.from_pretrained(minilm_path)
    words = ["the cat sat", "a quick brown fox", "prices rose sharply", "rain is expected", "he plays chess"]
    sents = [f"{a} while {b}" for a in words for b in words][:16]
    samples = dict(tok(sents, padding=True, return_tensors="pt"))
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        w = pruned.classifier.weight
        w.mul_(w.abs() > w.abs().median())
    rep = budget_audit(dense, pruned, "classifier", samples, labels=torch.arange(16) % 3, lipschitz="head",
                       lambdas=(1e-3, 1e-2))  # fmt: skip
    _head_checks(rep)
    assert rep.certified_line.startswith("on the audit set (16 samples), at most")


def test_gaussian_bound_for_injected_gaussian_r(digits_mlp):
    net, X, _ = digits_mlp
    g, delta, n, m = 0.5, 0.05, 256, 256
    pruned = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        with torch.no_grad():
            pruned[2].weight.copy_(net[2].weight - torch.randn(n, m, generator=gen) * (g / n) ** 0.5)
        ga = budget_audit(net, pruned, "2", X, lipschitz="mlp_global", gaussian=(g, delta))["2"].gaussian
        assert ga["within_bound"] and ga["bound"] == pytest.approx(ga["bound_cor_5_11"])
        assert ga["sigma_plus_R"] == pytest.approx(g**0.5 * 2)


def test_pure_math_against_known_values():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    y = np.array([0, 2])
    ref = F.cross_entropy(torch.tensor(z), torch.tensor(y), reduction="none").numpy()
    assert np.allclose(cross_entropy(z, y), ref)
    pred, true = margins(z, y)
    assert np.allclose(pred, [2.0, 2.0]) and np.allclose(true, [2.0, -2.0])
    za = z + np.array([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0]])  # sample 0's logits move by 1.5
    bad = check_step(np.array([0.1, 0.0]), z, za, y, rtol=1e-9, valid=True)
    assert bad.violations["lipschitz_secant"] == 1 and bad.estimate_exceeded == 1
    assert check_step(np.array([0.1, 0.0]), z, za, y, rtol=1e-9, valid=False).violations["lipschitz_secant"] == 0
    flip = check_step(np.array([0.1, 0.0]), z, z + np.array([[0, 2.5, 0], [0, 0, 0]]), y, rtol=1e-9, valid=True)
    assert flip.flips == 1 and flip.violations["cor_5_2_flip"] == 1 and flip.violations["lemma_5_1"] == 1
    A = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    S = A * torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    nm = weight_norms(A, S)
    assert nm["mask_split"] and nm["fro2_R"] == 4.25 and nm["l1_R"] == 2.5
    v = elastic_net_verdict(nm, budget=1.0, delta_ce=0.5, lam1=0.2, lam2=0.2, valid=True)
    assert v["penalty_drop"] == pytest.approx(1.35) and v["certified_decrease"] and v["realised_decrease"]
    gb = gaussian_budget_bound(np.ones(4), np.ones(4), g=1.0, n=10, m=40, delta=0.1)
    assert gb["bound"] == pytest.approx(2 * np.sqrt(0.2 * np.log(800)))
    assert gb["sigma_plus_R"] == pytest.approx(3.0)


def test_bad_inputs_fail_clearly(digits_mlp, tiny_vit):
    net, X, y = digits_mlp
    pruned = copy.deepcopy(net)
    cases = [
        ((net, pruned, "0", None), {}, "samples is required"),
        ((net, pruned, "0", X[:0]), {}, "empty"),
        ((net, pruned, "0", []), {}, "empty"),
        ((net, net, "0", X), {}, "same object"),
        ((net, nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), "0", X), {}, "architectures"),
        ((net, pruned, "nope", X), {}, "not Linear/Conv2d"),
        ((net, pruned, "1", X), {}, "not Linear/Conv2d"),  # a ReLU
        ((net, pruned, "0", X), {"lipschitz": "exact"}, "allowed"),
        ((net, pruned, "0", X), {"labels": y[:3]}, "labels must be"),
        ((net, pruned, "0", X), {"gaussian": (1.0, 2.0)}, "gaussian"),
        ((net, pruned, "0", X), {"lambdas": (-1, 0)}, "lambdas"),
        ((net, pruned, "0", X), {"lambdas": (1.0,)}, "lambdas"),
        ((net, pruned, "0", X), {"gaussian": ("abc", 0.1)}, "gaussian"),
        ((net, pruned, "0", X), {"tails": {"2": []}}, "not audited"),
        ((net, pruned, "0", X), {"forward": lambda m, b: m(b)[:, :1]}, "logits"),
    ]
    for args, kw, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            budget_audit(*args, **kw)
        assert isinstance(e.value, ConfigError)
    mlp = MLP((64, 32, 10))  # ModuleList + functional relu: the tail cannot be proven
    with pytest.raises(ConfigError, match="do not reproduce"):
        budget_audit(mlp, copy.deepcopy(mlp), "layers.0", X, lipschitz="mlp_global")
    gelu = nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="found GELU"):
        budget_audit(gelu, copy.deepcopy(gelu), "0", X, lipschitz="mlp_global")


def test_certify_cli(tiny_vit, tmp_path, capsys):
    pruned = copy.deepcopy(tiny_vit)
    with torch.no_grad():
        pruned.classifier.weight.mul_(torch.rand(pruned.classifier.weight.shape) > 0.5)
    tiny_vit.save_pretrained(tmp_path / "dense")
    pruned.save_pretrained(tmp_path / "pruned")
    args = ["certify", str(tmp_path / "pruned"), "--dense", str(tmp_path / "dense"), "--samples", "12"]
    assert main([*args, "--json", "--data", "digits", "--labels", "--out", str(tmp_path / "c.json")]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["violations"] == 0 and rec["layers"][0]["layer"] == "classifier" and rec["n_samples"] == 12
    assert json.loads((tmp_path / "c.json").read_text())["certified_line"] == rec["certified_line"]
    assert main(args) == 0
    assert "at most" in capsys.readouterr().out
    assert main(["certify", str(tmp_path / "pruned"), "--dense", str(tmp_path / "dense"), "--layers", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_conv_layer_terms_match_module_outputs():
    from tests.tiny_models import tiny_resnet

    dense = tiny_resnet()
    pruned = copy.deepcopy(dense)
    name = "resnet.encoder.stages.0.layers.0.layer.1.convolution"
    conv = dict(pruned.named_modules())[name]
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) > 0.5)
    x = vit_inputs(batch=6)
    outs = []
    for model in (dense, pruned):
        h = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: outs.append(o.detach()))
        with torch.no_grad():
            model(**x)
        h.remove()
    truth = (outs[0] - outs[1]).double().flatten(1).abs().amax(1).numpy()  # Rψ₁ = conv(ψ₁; R)
    la = budget_audit(dense, pruned, name, x, lipschitz="secant")[name]
    assert la.shape == (16, 144) and np.allclose(la.rpsi_inf, truth, rtol=1e-4, atol=1e-6)
    assert la.check.budget == pytest.approx(2 * np.mean(la.eta)) and not la.valid_bound
    head = budget_audit(dense, pruned, "classifier.1", x, lipschitz="head")
    assert head.violations == 0 and head["classifier.1"].check.budget == 0.0  # the head was not pruned
