"""Result records of `budget_audit` (docs/algorithms.md §9.4): per layer, joint (Thm 5.8) and the whole report."""

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bounds import ESTIMATOR_NOTES, StepCheck


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy -> python, inf/nan -> strings."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else str(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class LayerAudit:
    """One layer replaced alone in the dense model (θ = 0). Per-sample arrays have length N."""

    name: str
    shape: tuple[int, int]
    estimator: str
    valid_bound: bool
    rpsi_inf: np.ndarray  # ‖Rψ₁(s)‖_∞
    rpsi_2: np.ndarray  # ‖Rψ₁(s)‖₂
    lipschitz: np.ndarray  # L_s
    eta: np.ndarray  # η_s = L_s ‖Rψ₁(s)‖_∞
    secant: np.ndarray  # ‖z_A - z_S‖_∞ / ‖Rψ₁(s)‖_∞ (lower bound on any valid L_s)
    check: StepCheck
    norms: dict[str, Any]
    proxies: dict[str, Any]
    elastic: dict[str, Any] | None = None
    gaussian: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "layer": self.name,
            "shape": list(self.shape),
            "estimator": self.estimator,
            "estimator_note": ESTIMATOR_NOTES[self.estimator],
            "valid_bound": self.valid_bound,
            **self.check.summary(),
            "estimate_exceeded": self.check.estimate_exceeded,
            "violations": dict(self.check.violations),
            "L_s_mean": float(np.mean(self.lipschitz)),
            "secant_max": float(np.max(self.secant)) if len(self.secant) else 0.0,
            "norms": self.norms,
            "proxies": self.proxies,
            "elastic_net": self.elastic,
            "gaussian": self.gaussian,
        }

    def per_sample(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("rpsi_inf", "rpsi_2", "lipschitz", "eta", "secant")}


@dataclass
class JointAudit:
    """All audited layers replaced together, ordered pruning (Thm 5.8): budgets of the steps add."""

    layers: list[str]
    estimator: str
    valid_bound: bool
    eta: np.ndarray  # Σ_k η_s^(k)
    check: StepCheck
    steps: list[dict[str, Any]] = field(default_factory=list)
    elastic: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "estimator": self.estimator,
            "valid_bound": self.valid_bound,
            **self.check.summary(),
            "violations": dict(self.check.violations),
            "steps": self.steps,
            "elastic_net": self.elastic,
        }


@dataclass
class BudgetAuditReport:
    """Everything `budget_audit` measured. `violations` counts exceeded bounds of valid estimators (0 = healthy)."""

    n_samples: int
    labels_given: bool
    layers: list[LayerAudit]
    joint: JointAudit
    margin_pred: np.ndarray  # dense predicted-class margin per sample
    margin_true: np.ndarray | None  # dense true-class margin per sample (labels given)
    ce_dense: float
    ce_pruned_model: float  # the pruned model itself (may differ from the joint swap if other params differ)
    other_params_differ: list[str]
    rtol: float
    violations: int
    violation_details: dict[str, dict[str, int]]
    certified_line: str
    decisions: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerAudit:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} was not audited; audited layers: {[la.name for la in self.layers]}")

    def can_flip_indices(self, layer: str | None = None) -> np.ndarray:
        """Samples whose predicted label may change (Cor 5.2: dense margin ≤ 2η_s), for one layer or jointly."""
        eta = self.joint.eta if layer is None else self[layer].eta
        return np.flatnonzero(self.margin_pred <= 2 * eta)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "budget_certificate",
            "n_samples": self.n_samples,
            "labels_given": self.labels_given,
            "ce_dense": self.ce_dense,
            "ce_pruned_model": self.ce_pruned_model,
            "other_params_differ": self.other_params_differ,
            "rtol": self.rtol,
            "violations": self.violations,
            "violation_details": self.violation_details,
            "certified_line": self.certified_line,
            "layers": [la.summary() for la in self.layers],
            "joint": self.joint.summary(),
            "decisions": self.decisions,
        }
        if per_sample:
            d["margin_pred"] = self.margin_pred
            d["margin_true"] = self.margin_true
            d["per_sample"] = {la.name: la.per_sample() for la in self.layers}
        return _clean(d)

    def to_ledger(self) -> dict[str, Any]:
        """Summary dict for `Ledger.audits` (no per-sample arrays)."""
        return self.to_dict(per_sample=False)

    def to_json(self, per_sample: bool = False) -> str:
        return json.dumps(self.to_dict(per_sample), indent=2, sort_keys=True)
