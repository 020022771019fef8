"""Deterministic data-path certificates and budget audits (docs/algorithms.md §9.4): hooks, weight swaps, batching.

The math lives in `bounds.py`, the L_s estimators in `lipschitz.py`, the records in
`report.py`. Decisions [D] (also stored in every report's `decisions`):

* ψ₁ is captured by a forward hook on the **dense** model for the single-layer terms; θ = 0 (full removal).
* Single-layer ΔCE: the dense model with only that layer's weight swapped for the pruned one (restored bit-exactly
  afterwards). Joint: all audited layers swapped, ordered pruning of Thm 5.8 in module order, each step's ψ₁ and
  L_s taken in the intermediate network; the joint budget is the sum of the step budgets.
* `labels=None`: CE and accuracy are measured against the dense model's predictions (pseudo-labels).
* Other differences between the two models (e.g. fine-tuned biases) are never certified: they are listed in
  `other_params_differ` and the pruned model's own CE is reported beside the swap results.
* Float tolerance: see `bounds` (rtol = max(1e-5, 4 eps(dtype)) of logits magnitudes).
* The paper proxies are computed with dense-model inputs (the repo used the sparse model's).
"""

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.utils import tqdm
from torch import nn

from ..core.errors import ConfigError
from ..core.layers import PrunableLayer
from .bounds import (
    VALID_ESTIMATORS,
    certified_line,
    check_step,
    cross_entropy,
    default_rtol,
    elastic_net_verdict,
    gaussian_budget_bound,
    logit_tolerance,
    margins,
    paper_proxies,
    secant_constants,
    weight_norms,
)
from .inputs import (
    as_batches,
    audit_logits,
    check_models,
    resolve_labels,
    resolve_layers,
    validate_options,
)
from .lipschitz import find_mlp_tail, flatten_tail, jacobian_local, mlp_tail_constant, verify_head, verify_tail
from .report import BudgetAuditReport, JointAudit, LayerAudit


logger = logging.getLogger(__name__)

_DECISIONS = {
    "psi_source": "dense model (single layer); intermediate network for joint steps (Thm 5.8, module order)",
    "theta": "0 (full removal)",
    "labels_none": "CE/accuracy against the dense predictions",
    "swap": "only the audited layers' weights are swapped into the dense model",
    "proxies_inputs": "dense-model inputs",
}


def _apply_weight(kind: str, module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with weight `w` and no bias (Rψ₁ for w = R)."""
    if kind == "linear":
        return F.linear(x, w)
    if kind == "conv1d":
        return x @ w
    return module._conv_forward(x, w, None)


@torch.no_grad()
def _capture(model, module, batch, forward, name):
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    try:
        z = audit_logits(model, batch, forward)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ConfigError(f"layer {name!r} ran {len(seen)} times in one forward; certificates need exactly one call")
    return seen[0][0], seen[0][1], z.detach()


@contextlib.contextmanager
def _swapped(module: nn.Module, weight: torch.Tensor):
    old = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(weight)
    try:
        yield
    finally:
        with torch.no_grad():
            module.weight.copy_(old)


@dataclass
class _Terms:
    rpsi_inf: np.ndarray
    rpsi_2: np.ndarray
    psi_inf: np.ndarray
    psi_tok2: np.ndarray | None
    positions: int
    lipschitz: np.ndarray | None
    z_before: np.ndarray
    z_after: np.ndarray


def _run_step(model, layer, R, S_w, batches, forward, estimator, tail, stack) -> _Terms:
    """Capture ψ₁ and logits in the current network, estimate L_s, then swap the pruned weight in (kept in
    `stack`) and record the logits after."""
    name, module, _, kind = layer
    acc: dict[str, list] = {k: [] for k in ("rpsi_inf", "rpsi_2", "psi_inf", "psi_tok2", "zb", "L")}
    if estimator == "mlp_global":
        tail = flatten_tail(tail if tail is not None else find_mlp_tail(model, name), name)
        const = mlp_tail_constant(tail)
    m_in = R.shape[1] if kind == "linear" else R.shape[0]
    positions = 1
    for batch in batches:
        x, out, z = _capture(model, module, batch, forward, name)
        if estimator == "head":
            verify_head(out, z, name)
        elif estimator == "mlp_global":
            verify_tail(tail, out, z, name)
            acc["L"].append(torch.full((len(z),), const, dtype=torch.float64))
        elif estimator == "jacobian_local":
            acc["L"].append(
                torch.from_numpy(jacobian_local(model, module, batch, lambda m, b: audit_logits(m, b, forward)))
            )
        elif estimator in ("const",):
            acc["L"].append(torch.ones(len(z), dtype=torch.float64))
        xd = x.double()
        rpsi = _apply_weight(kind, module, xd, R).flatten(1)
        acc["rpsi_inf"].append(rpsi.abs().amax(1))
        acc["rpsi_2"].append(rpsi.norm(dim=1))
        acc["psi_inf"].append(xd.flatten(1).abs().amax(1))
        if kind != "conv2d":
            acc["psi_tok2"].append(xd.reshape(len(xd), -1, m_in).norm(dim=2).amax(1))
            positions = x[0].numel() // m_in
        acc["zb"].append(z.double())
    if estimator == "head":
        acc["L"] = [torch.ones(sum(len(t) for t in acc["zb"]), dtype=torch.float64)]
    stack.enter_context(_swapped(module, S_w))
    with torch.no_grad():
        z_after = torch.cat([audit_logits(model, b, forward).detach().double() for b in batches]).cpu().numpy()

    def cat(key):
        return torch.cat(acc[key]).cpu().numpy() if acc[key] else None

    return _Terms(cat("rpsi_inf"), cat("rpsi_2"), cat("psi_inf"), cat("psi_tok2"), positions, cat("L"), cat("zb"),
                  z_after)  # fmt: skip


def _eta(terms: _Terms, estimator: str, rtol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L_s, η_s, secant_s) for one step."""
    diff = np.abs(terms.z_after - terms.z_before).max(1)
    secant = secant_constants(diff, terms.rpsi_inf, logit_tolerance(terms.z_before, terms.z_after, rtol))
    lip = secant if estimator == "secant" else terms.lipschitz
    eta = np.where(terms.rpsi_inf > 0, np.where(np.isfinite(lip), lip, 0.0) * terms.rpsi_inf, 0.0)
    return lip, eta, secant


def _gaussian(terms: _Terms, lip, layer, R, kind, gaussian, budget) -> dict[str, Any]:
    if kind == "conv2d":
        return {"skipped": "the Gaussian bound (Cor 5.10) is implemented for Linear/Conv1D layers only"}
    g, delta = gaussian
    n, m = (R.shape[0], R.shape[1]) if kind == "linear" else (R.shape[1], R.shape[0])
    if g == "empirical":
        g = float(n * (R.double() ** 2).mean())
    out = gaussian_budget_bound(lip, terms.psi_tok2, float(g), n, m, float(delta), terms.positions)
    out.update(budget=budget, within_bound=bool(budget <= out["bound"]),
               note="probabilistic (>= 1 - delta) for iid N(0, g/n) R independent of the inputs; never a violation")  # fmt: skip
    return out


@contextlib.contextmanager
def _eval_mode(*models: nn.Module):
    flags = [[m.training for m in model.modules()] for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, fl in zip(models, flags):
            for m, f in zip(model.modules(), fl):
                m.training = f


def _layer_audit(layer, terms, est, labels, rtol, A, S, R, lambdas, gaussian) -> LayerAudit:
    name, module, _, kind = layer
    valid = est in VALID_ESTIMATORS
    lip, eta, secant = _eta(terms, est, rtol)
    check = check_step(eta, terms.z_before, terms.z_after, labels, rtol=rtol, valid=valid)
    norms = weight_norms(A, S)
    r_matrix = PrunableLayer(name, module, kind, "other").matrix_view(R)
    audit = LayerAudit(
        name=name, shape=tuple(r_matrix.shape), estimator=est, valid_bound=valid, rpsi_inf=terms.rpsi_inf,
        rpsi_2=terms.rpsi_2, lipschitz=lip, eta=eta, secant=secant, check=check, norms=norms,
        proxies=paper_proxies(r_matrix, terms.psi_inf, terms.rpsi_inf),
    )  # fmt: skip
    if lambdas is not None:
        audit.elastic = elastic_net_verdict(norms, check.budget, check.delta_ce, *map(float, lambdas), valid=valid)
    if gaussian is not None:
        audit.gaussian = _gaussian(terms, lip, layer, R, kind, gaussian, check.budget)
    return audit


def _joint_audit(dense, layers, Rs, Ss, batches, forward, est, tails, labels, rtol, lambdas, single) -> JointAudit:
    names = [la[0] for la in layers]
    valid = all(est[n] in VALID_ESTIMATORS for n in names)
    label = est[names[0]] if len({est[n] for n in names}) == 1 else "mixed"
    if len(layers) == 1:
        return JointAudit(names, label, valid, single[0].eta, single[0].check, elastic=single[0].elastic)
    steps, eta_sum, budget, z0, zk = [], 0.0, 0.0, None, None
    with contextlib.ExitStack() as stack:
        for layer, R, S in zip(layers, Rs, Ss):
            n = layer[0]
            terms = _run_step(dense, layer, R, S, batches, forward, est[n], (tails or {}).get(n), stack)
            _, eta, _ = _eta(terms, est[n], rtol)
            step = check_step(eta, terms.z_before, terms.z_after, labels, rtol=rtol, valid=est[n] in VALID_ESTIMATORS)
            steps.append({"layer": n, "B_T": step.budget, "delta_ce": step.delta_ce, "violations": step.violations})
            eta_sum, budget = eta_sum + eta, budget + step.budget
            z0 = terms.z_before if z0 is None else z0
            zk = terms.z_after
    check = check_step(eta_sum, z0, zk, labels, rtol=rtol * len(layers), valid=valid, budget=budget)
    joint = JointAudit(names, label, valid, eta_sum, check, steps)
    if lambdas is not None:
        norms = [la.norms for la in single]
        tot = {k: sum(nm[k] for nm in norms) for k in norms[0] if k != "mask_split"}
        tot["mask_split"] = all(nm["mask_split"] for nm in norms)
        joint.elastic = elastic_net_verdict(tot, budget, check.delta_ce, *map(float, lambdas), valid=valid)
    return joint


def budget_audit(
    dense_model: nn.Module,
    pruned_model: nn.Module,
    layers: str | Sequence[str] | Any,
    samples: Any,
    *,
    labels: Any = None,
    lipschitz: str | Mapping[str, str] = "const",
    lambdas: tuple[float, float] | None = None,
    gaussian: tuple[float | str, float] | None = None,
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    tails: Mapping[str, Sequence[nn.Module]] | None = None,
    batch_size: int = 64,
    rtol: float | None = None,
    progress: bool = False,
) -> BudgetAuditReport:
    """Data-path budget audit of replacing `layers` of `dense_model` by those of `pruned_model` (docs/algorithms.md §9).

    Args:
        dense_model, pruned_model: same architecture; R = W_dense - W_pruned per audited layer. The dense model
            is used in place (eval mode, weights swapped and restored bit-exactly); it is unchanged afterwards.
        layers: layer name(s), `PrunableLayer`s or a `LayerSet`.
        samples: the audit set T: a Tensor / dict of tensors (cut into `batch_size` chunks) or a list of batches.
        labels: true class ids in sample order; None = the dense predictions (pseudo-labels).
        lipschitz: L_s estimator, one for all layers or `{layer: estimator}`: "const" (=1, estimate),
            "mlp_global" (ReLU-MLP tail product, valid bound), "head" (the logits layer, exact), "jacobian_local"
            (first-order estimate), "secant" (lower bound).
        lambdas: (λ₁, λ₂) for the elastic-net certificate (Thm 5.4).
        gaussian: (g or "empirical", δ) for the Gaussian/MP-edge bound of Cor 5.10/5.11.
        forward: `fn(model, batch) -> (N, K) logits`; default calls the model and takes `.logits`.
        tails: `{layer: [modules after it]}` for `mlp_global` when the tail cannot be read off containers.
        rtol: float tolerance of the checks (default max(1e-5, 4 eps(dtype))).

    Returns:
        [`BudgetAuditReport`] with per-layer and joint results, `violations` (must be 0) and `certified_line`.
    """
    differ = check_models(dense_model, pruned_model)
    resolved = resolve_layers(dense_model, pruned_model, layers)
    names = [la[0] for la in resolved]
    est = validate_options(lipschitz, lambdas, gaussian, names, tails)
    batches = as_batches(samples, batch_size)
    dtype = next((p.dtype for p in dense_model.parameters() if p.is_floating_point()), torch.float32)
    rtol = default_rtol(dtype) if rtol is None else float(rtol)
    with _eval_mode(dense_model, pruned_model), torch.no_grad():
        z_dense = torch.cat([audit_logits(dense_model, b, forward).detach().double() for b in batches]).cpu().numpy()
        z_pruned = torch.cat([audit_logits(pruned_model, b, forward).detach().double() for b in batches]).cpu().numpy()
    y = resolve_labels(labels, z_dense)
    Ss = [pm.weight.detach().to(dm.weight.device, dm.weight.dtype) for _, dm, pm, _ in resolved]
    As = [dm.weight.detach().clone() for _, dm, _, _ in resolved]
    Rs = [(A.double() - S.double()) for A, S in zip(As, Ss)]
    single = []
    with _eval_mode(dense_model):
        for layer, A, S, R in zip(tqdm(resolved, desc="budget audit", disable=not progress), As, Ss, Rs):
            with contextlib.ExitStack() as stack:
                n = layer[0]
                terms = _run_step(dense_model, layer, R, S, batches, forward, est[n], (tails or {}).get(n), stack)
            single.append(_layer_audit(layer, terms, est[n], y, rtol, A, S, R, lambdas, gaussian))
        joint = _joint_audit(dense_model, resolved, Rs, Ss, batches, forward, est, tails, y, rtol, lambdas, single)
    details = {f"layer:{la.name}": dict(la.check.violations) for la in single}
    if len(single) > 1:
        details["joint"] = dict(joint.check.violations)
        for st in joint.steps:
            details[f"joint_step:{st['layer']}"] = dict(st["violations"])
    pred_m, true_m = margins(z_dense, y)
    return BudgetAuditReport(
        n_samples=len(z_dense), labels_given=labels is not None, layers=single, joint=joint, margin_pred=pred_m,
        margin_true=true_m if labels is not None else None, ce_dense=float(cross_entropy(z_dense, y).mean()),
        ce_pruned_model=float(cross_entropy(z_pruned, y).mean()), other_params_differ=[
            k for k in differ if k.rsplit(".", 1)[0] not in names or not k.endswith("weight")],
        rtol=rtol, violations=sum(sum(v.values()) for v in details.values()), violation_details=details,
        certified_line=certified_line(len(z_dense), joint.check.can_flip, names, joint.estimator, joint.valid_bound),
        decisions=dict(_DECISIONS),
    )  # fmt: skip
