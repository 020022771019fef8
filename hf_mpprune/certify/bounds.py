"""Pure math of the data-path budget certificates (docs/algorithms.md §9). No hooks, no models: arrays in, numbers out.

Conventions: `eta[s] = L_s · ‖Rψ₁(s)‖_∞` (θ = 0, full removal); logits arrays are `(N, K)` float64; every check
uses a per-sample float tolerance `tol_z[s] = rtol · max(1, ‖z_before(s)‖_∞, ‖z_after(s)‖_∞)` on logits, which
propagates to `2·mean(tol_z)` on the mean cross-entropy (CE is 2-Lipschitz in ℓ∞ of the logits) and to `2·tol_z`
on margins. `rtol = max(1e-5, 4·eps(dtype))` of the model's dtype (1e-5 for float32) unless given.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch


# Estimators whose L_s is a valid upper bound (their exceedances are violations, i.e. bugs).
VALID_ESTIMATORS = ("head", "mlp_global")
ESTIMATORS = ("const", "head", "jacobian_local", "mlp_global", "secant")
ESTIMATOR_NOTES = {
    "const": "L_s = 1 (paper/repo-compatible); an estimate, not a bound",
    "head": "exact: the audited layer produces the logits, L_s = 1; valid bound",
    "jacobian_local": "max_k sum_j |dz_k/du_j| at the dense layer output; first-order estimate, not a bound",
    "mlp_global": "prod of downstream ||W_j||_inf over a ReLU-type MLP tail; valid global bound",
    "secant": "||z_A - z_S||_inf / ||R psi||_inf; a lower bound on any valid L_s, not an upper bound",
}


def default_rtol(dtype: torch.dtype) -> float:
    """Relative float tolerance of the checks for a model computing in `dtype`."""
    return max(1e-5, 4.0 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample CE(z, y) = logsumexp(z) - z_y in float64."""
    z = np.asarray(logits, dtype=np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return lse - z[np.arange(len(z)), labels]


def margins(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted-class margin ≥ 0, true-class margin z_y - max_{j≠y} z_j) per sample."""
    z = np.asarray(logits, dtype=np.float64)
    top2 = np.sort(z, axis=1)[:, -2:]  # needs K >= 2 (checked by the caller)
    pred = top2[:, 1] - top2[:, 0]
    others = z.copy()
    others[np.arange(len(z)), labels] = -np.inf
    true = z[np.arange(len(z)), labels] - others.max(axis=1)
    return pred, true


def data_path_budget(eta: np.ndarray) -> float:
    """B_T(R) = (2/|T|) Σ_s L_s ‖Rψ₁(s)‖_∞ given eta_s = L_s ‖Rψ₁(s)‖_∞."""
    return float(2.0 * np.mean(eta)) if len(eta) else 0.0


def logit_tolerance(z_before: np.ndarray, z_after: np.ndarray, rtol: float) -> np.ndarray:
    """Per-sample float tolerance on logit differences: rtol · max(1, ‖z_before‖_∞, ‖z_after‖_∞)."""
    return rtol * np.maximum(1.0, np.maximum(np.abs(z_before).max(1), np.abs(z_after).max(1)))


def secant_constants(diff_inf: np.ndarray, rpsi_inf: np.ndarray, tol_z: np.ndarray) -> np.ndarray:
    """‖z_A - z_S‖_∞ / ‖Rψ₁‖_∞ per sample; 0/0 (within tolerance) is 0, x/0 with x > tol is inf."""
    out = np.zeros_like(diff_inf)
    pos = rpsi_inf > 0
    out[pos] = diff_inf[pos] / rpsi_inf[pos]
    out[~pos & (diff_inf > tol_z)] = np.inf
    return out


@dataclass
class StepCheck:
    """Lemma 5.1 / Cor 5.2 checks for one replacement (one layer, or all layers jointly via Thm 5.8)."""

    budget: float
    ce_before: float
    ce_after: float
    delta_ce: float
    tol_ce: float
    can_flip: int  # #{s : Δ^pred(s) ≤ 2η_s}
    flips: int  # realised predicted-label changes
    acc_bound: float  # (1/|T|) #{s : |Δ^true(s)| ≤ 2η_s}
    acc_change: float  # realised accuracy(after) - accuracy(before)
    estimate_exceeded: int  # samples with ‖z_A - z_S‖_∞ > η_s + tol (violations if the estimator is valid)
    violations: dict[str, int] = field(default_factory=dict)

    @property
    def looseness(self) -> float:
        """B_T / |ΔCE| (inf when ΔCE = 0)."""
        return self.budget / abs(self.delta_ce) if self.delta_ce != 0 else math.inf

    def summary(self) -> dict:
        """The report fields shared by per-layer and joint audits."""
        return {
            "B_T": self.budget, "delta_ce": self.delta_ce, "looseness": self.looseness, "can_flip": self.can_flip,
            "flips": self.flips, "acc_bound": self.acc_bound, "acc_change": self.acc_change,
        }  # fmt: skip


def check_step(
    eta: np.ndarray,
    z_before: np.ndarray,
    z_after: np.ndarray,
    labels: np.ndarray,
    *,
    rtol: float,
    valid: bool,
    budget: float | None = None,
) -> StepCheck:
    """Compare realised CE / label / logit changes with the budget `eta`; count violations only if `valid`.

    `labels` are the CE / accuracy labels (true labels, or the dense predictions when none were given).
    `budget` defaults to `data_path_budget(eta)` (pass the sum of per-step budgets for a joint check).
    """
    zb, za = np.asarray(z_before, np.float64), np.asarray(z_after, np.float64)
    tol_z = logit_tolerance(zb, za, rtol)
    ce_b, ce_a = cross_entropy(zb, labels), cross_entropy(za, labels)
    budget = data_path_budget(eta) if budget is None else budget
    delta_ce = float(ce_a.mean() - ce_b.mean())
    tol_ce = float(2.0 * tol_z.mean())
    pred_m, true_m = margins(zb, labels)
    flipped = zb.argmax(1) != za.argmax(1)
    correct_b, correct_a = zb.argmax(1) == labels, za.argmax(1) == labels
    exceeded = np.abs(za - zb).max(1) > eta + tol_z
    n_viol = {
        "lemma_5_1": int(abs(delta_ce) > budget + tol_ce),
        "cor_5_2_flip": int(np.sum(flipped & ~(pred_m <= 2 * eta + 2 * tol_z))),
        "cor_5_2_accuracy": int(np.sum((correct_b != correct_a) & ~(np.abs(true_m) <= 2 * eta + 2 * tol_z))),
        "lipschitz_secant": int(exceeded.sum()),
    }
    return StepCheck(
        budget=budget,
        ce_before=float(ce_b.mean()),
        ce_after=float(ce_a.mean()),
        delta_ce=delta_ce,
        tol_ce=tol_ce,
        can_flip=int(np.sum(pred_m <= 2 * eta)),
        flips=int(flipped.sum()),
        acc_bound=float(np.mean(np.abs(true_m) <= 2 * eta)),
        acc_change=float(correct_a.mean() - correct_b.mean()),
        estimate_exceeded=int(exceeded.sum()),
        violations=n_viol if valid else dict.fromkeys(n_viol, 0),
    )


def weight_norms(A: torch.Tensor, S: torch.Tensor) -> dict[str, float | bool]:
    """Norms of A, S and R = A - S (float64) and whether the split is a mask split (S ⊙ R = 0)."""
    A, S = A.detach().double(), S.detach().double()
    R = A - S
    return {
        "fro2_A": float((A * A).sum()),
        "fro2_S": float((S * S).sum()),
        "fro2_R": float((R * R).sum()),
        "l1_A": float(A.abs().sum()),
        "l1_S": float(S.abs().sum()),
        "l1_R": float(R.abs().sum()),
        "removed": int((R != 0).sum()),
        "mask_split": bool(((S * R) == 0).all()),
    }


def elastic_net_verdict(
    norms: dict, budget: float, delta_ce: float, lam1: float, lam2: float, *, valid: bool
) -> dict[str, object]:
    """Thm 5.4: J(S) ≤ J(A) - [λ₂‖R‖_F² + λ₁‖R‖₁] + B_T(R) for mask splits.

    For a non-mask split the exact penalty drop λ₂(‖A‖_F² - ‖S‖_F²) + λ₁(‖A‖₁ - ‖S‖₁) is used in its place (it
    equals the Thm 5.4 term when S ⊙ R = 0), so the verdict stays a valid consequence of Lemma 5.1.
    """
    if norms["mask_split"]:
        drop = lam2 * norms["fro2_R"] + lam1 * norms["l1_R"]
    else:
        drop = lam2 * (norms["fro2_A"] - norms["fro2_S"]) + lam1 * (norms["l1_A"] - norms["l1_S"])
    certified = budget < drop
    return {
        "lambda1": lam1,
        "lambda2": lam2,
        "penalty_drop": drop,
        "budget": budget,
        "J_change_upper_bound": budget - drop,
        "J_change_realised": delta_ce - drop,
        "certified_decrease": bool(certified and valid),
        "estimated_decrease": bool(certified),
        "realised_decrease": bool(delta_ce - drop < 0),
        "kind": "certificate" if valid else "estimate (L_s is not a bound)",
        "form": "thm_5_4_mask_split" if norms["mask_split"] else "exact_penalty_drop_non_mask_split",
    }


def gaussian_budget_bound(
    lipschitz: np.ndarray, v_norm2: np.ndarray, g: float, n: int, m: int, delta: float, positions: int = 1
) -> dict[str, float]:
    """Cor 5.10/5.11: for R with iid N(0, g/n) entries independent of the inputs, w.p. ≥ 1 - δ
    B_T(R) ≤ (2/|T|) Σ_s L_s ‖v_s‖₂ · sqrt((2g/n) log(2 n P |T| / δ)).

    `n` = layer outputs, `m` = inputs, `P` = positions per sample (tokens; 1 for a plain vector input, where the
    formula is the paper's) and `v_norm2[s]` = the largest per-position ‖ψ₁‖₂ of sample s.
    """
    t = len(v_norm2)
    scale = math.sqrt((2.0 * g / n) * math.log(2.0 * n * positions * t / delta))
    bound = float(2.0 * np.mean(lipschitz * v_norm2) * scale)
    sigma_plus = math.sqrt(g) * (1.0 + math.sqrt(m / n))
    bound_edge = float(
        2.0 * sigma_plus / (1.0 + math.sqrt(m / n)) * math.sqrt((2.0 / n) * math.log(2.0 * n * positions * t / delta))
    ) * float(np.mean(lipschitz * v_norm2))
    return {"g": g, "delta": delta, "n": n, "m": m, "positions": positions, "sigma_plus_R": sigma_plus,
            "bound": bound, "bound_cor_5_11": bound_edge}  # fmt: skip


def paper_proxies(R_matrix: torch.Tensor, psi_inf: np.ndarray, rpsi_inf: np.ndarray) -> dict[str, float]:
    """Repo proxies (§9.3), labelled as such: B̂ = ‖R‖_op · mean ‖ψ‖_∞ (not a bound), B̄ = mean ‖Rψ‖_∞."""
    op = float(torch.linalg.matrix_norm(R_matrix.detach().double(), ord=2)) if R_matrix.numel() else 0.0
    return {
        "B_hat_proxy": op * float(np.mean(psi_inf)),
        "B_bar_proxy": float(np.mean(rpsi_inf)),
        "R_op": op,
        "note": "paper proxies for comparability only; B_hat is not an upper bound on mean ||R psi||_inf",
    }


def certified_line(n: int, can_flip: int, layers: list[str], estimator: str, valid: bool) -> str:
    """The one-line accuracy certificate (or a clearly labelled estimate) for the ledger and model card."""
    pct = 100.0 * can_flip / n if n else 0.0
    where = ", ".join(layers)
    if valid:
        return (
            f"on the audit set ({n} samples), at most {pct:.2f}% of predictions can change "
            f"(certified for layer(s) {where}, L_s estimator {estimator})"
        )
    return (
        f"ESTIMATE, NOT A CERTIFICATE: on the audit set ({n} samples), about {pct:.2f}% of predictions could "
        f"change (layer(s) {where}, L_s estimator {estimator} is not an upper bound)"
    )
