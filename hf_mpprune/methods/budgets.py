"""Global selection of the lowest-scoring entries with a deterministic index tie-break (shared by all
unstructured methods), and the SEB layer weights (ALGORITHMS.md §3, §4.1, §4.3)."""

from dataclasses import dataclass

import torch


def keep_top(scores: list[torch.Tensor], num_prune: int) -> list[torch.Tensor]:
    """Masks (True = kept) that prune exactly `num_prune` entries with the lowest scores, across all tensors.

    Ties are broken by position in the concatenation (earlier layers, then row-major index, go first), so the
    result is exact to the entry and deterministic. Memory: one float32 copy of all scores, no sort.
    """
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])  # (P,)
    total = flat.numel()
    if not 0 <= num_prune <= total:
        raise ValueError(f"cannot prune {num_prune} of {total} entries")
    if num_prune == 0:
        keep = torch.ones(total, dtype=torch.bool)
    else:
        thr = torch.kthvalue(flat, num_prune).values
        below = flat < thr
        tie = (flat == thr).nonzero().squeeze(1)
        need = num_prune - int(below.sum())
        keep = ~below
        keep[tie[:need]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


# ---- SEB layer weights (ALGORITHMS.md §4.1, §4.3) -------------------------------------------------------------
@dataclass(frozen=True)
class SEBRegime:
    """One row of the four-regime table: which signal, modulation strengths, decay endpoint and power."""

    signal: str  # "hill_alpha" or "sigma_plus"
    beta: float  # base strength (used for every role unless beta_attn / beta_mlp are set)
    decay_end: float  # s_d
    decay_power: float = 1.0  # p
    beta_attn: float | None = None
    beta_mlp: float | None = None


# The "final SEB" four-regime schedule, keyed by the upper end of each target-sparsity range.
SEB_REGIMES: tuple[tuple[float, SEBRegime], ...] = (
    (0.20, SEBRegime("hill_alpha", 0.50, 0.30)),
    (0.40, SEBRegime("sigma_plus", 1.00, 0.50)),
    (0.55, SEBRegime("sigma_plus", 1.25, 0.70)),
    (1.00, SEBRegime("sigma_plus", 1.50, 0.85, beta_attn=1.00, beta_mlp=2.00)),
)


def seb_regime(sparsity: float) -> SEBRegime:
    """The regime of the four-regime table that applies at target `sparsity`."""
    for upper, regime in SEB_REGIMES:
        if sparsity <= upper:
            return regime
    return SEB_REGIMES[-1][1]


def seb_weights(
    signal: dict[str, float | None], roles: dict[str, str], sparsity: float, regime: SEBRegime
) -> dict[str, float]:
    """w_ℓ(s) = max(0.1, 1 + β_type · d(s) · z_ℓ) with z the population z-score of the signal over all layers.

    A missing signal (None / non-finite) gets z = 0; if the signal's std < 1e-12 every weight is 1.
    w > 1 prunes a layer more (random-like, wide bulk); w < 1 protects it.
    """
    names = list(roles)
    vals = torch.tensor(
        [float("nan") if signal.get(n) is None else float(signal[n]) for n in names], dtype=torch.float64
    )
    ok = torch.isfinite(vals)
    z = torch.zeros_like(vals)
    if ok.sum() >= 2:
        mu, sd = vals[ok].mean(), vals[ok].std(unbiased=False)
        if sd >= 1e-12:
            z[ok] = (vals[ok] - mu) / sd
    decay = max(0.0, 1.0 - sparsity / regime.decay_end) ** regime.decay_power
    out = {}
    for name, zi in zip(names, z.tolist()):
        beta = {"attn": regime.beta_attn, "mlp": regime.beta_mlp}.get(roles[name]) or regime.beta
        out[name] = max(0.1, 1.0 + beta * decay * zi)
    return out
