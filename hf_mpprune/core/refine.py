"""Options and the per-layer driver of mask refinement after a method chose its mask (`refine=...`).

`RefineOptions` is the config mixin of the calibrated one-shot methods and CAST; `LayerRefiner` runs the chosen
refinement on one layer at a time inside the sequential pass (the Hessians, block caching and re-fit solver of the
re-fit), keeps the method's budget exactly, and writes the ledger record. The math is in `admm` (joint mask /
weight ADMM, two schedules) and `swap` (prune-and-grow swaps). docs/algorithms.md §18.7.
"""

import time
from dataclasses import dataclass

import torch

from .admm import SCHEDULES, Budget, admm_prune, layer_objective
from .config import KeepPattern
from .errors import ConfigError
from .obs import obs_reconstruct
from .swap import swap_refine


__all__ = ["REFINERS", "LayerRefiner", "RefineOptions", "peak_rss_mib"]

REFINERS = ("admm", "alps", "dsnot")
DSNOT_CYCLES = 50  # DSnoT's default maximum number of cycles


@dataclass
class RefineOptions:
    """Refinement of the method's mask, layer by layer, on the calibration Hessian (mixed into method configs).

    Args:
        refine (`str`, *optional*): `"admm"` = joint mask / weight ADMM with a cubic mask ramp (Boža 2024: 20
            iterations, ramp over 15, ρ = 1, damping 0.1 · mean diag H); `"alps"` = ADMM from the method's mask with
            an adaptive ρ and support-stabilisation stop (Meng et al. 2024: ρ₀ = 0.1, ≤ 300 iterations); both end
            with the least-squares re-fit of the survivors (`reconstruct_solver`, `reconstruct_iters`, `percdamp`)
            whatever `reconstruct` says. `"dsnot"` = prune-and-grow swaps that lower the layer's reconstruction
            error of the masked weights (no weight update; ≤ 50 cycles), followed by the re-fit only with
            `reconstruct=True`. Every refinement keeps the method's budget exactly: each row prunes the count it
            had (a k:n pattern stays k:n; entries pruned in an earlier cycle stay pruned), and a layer keeps the
            method's mask when the refined one does not lower the layer objective under the same weight rule.
        refine_iters (`int`, *optional*): iterations (ADMM) or cycles (DSnoT); None = the paper default above.
    """

    refine: str | None = None
    refine_iters: int | None = None

    def _check_refine(self) -> None:
        if self.refine is not None and self.refine not in REFINERS:
            raise ConfigError(f"refine={self.refine!r} must be None or one of {REFINERS}")
        it = self.refine_iters
        if it is not None and (isinstance(it, bool) or not isinstance(it, int) or it < 1):
            raise ConfigError(f"refine_iters={it!r} must be an int >= 1, or None for the paper default")
        if it is not None and self.refine is None:
            raise ConfigError(f"refine_iters={it} does nothing without refine= (one of {REFINERS})")

    @property
    def sequential_pass(self) -> bool:
        """True when a sequential pass over the layers follows the mask choice: the re-fit (`reconstruct` of
        `RefitOptions`, mixed in beside) and / or this refinement."""
        return bool(getattr(self, "reconstruct", False)) or self.refine is not None

    def refine_default_iters(self) -> int:
        """The iterations (or cycles) this refinement runs at most."""
        if self.refine_iters is not None:
            return self.refine_iters
        return DSNOT_CYCLES if self.refine == "dsnot" else SCHEDULES[self.refine][2]


def peak_rss_mib() -> float | None:
    """The process's peak resident memory so far (VmHWM, Linux), in MiB; None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class LayerRefiner:
    """Refine one layer at a time (`__call__`) and collect the ledger record (`record`).

    After ADMM the layer takes the re-fit of the survivors, or ADMM's own iterate Z on the same mask when Z has the
    lower objective (Z solves the problem damped relative to each input's own scale, the re-fit damps by the mean
    diagonal; `admm_weights_if_lower`).

    Args:
        options: a config with `RefineOptions` (and `reconstruct`). refit_kwargs: `RefitOptions.refit_kwargs()`.
        solver_stats: the re-fit solver's counters (shared with the re-fit record).
    """

    admm_weights_if_lower = True

    def __init__(self, options, refit_kwargs: dict, solver_stats: dict):
        self.kind, self.iters = options.refine, options.refine_default_iters()
        self.target = getattr(options, "refit_target", "sequential")
        self.refits = self.kind != "dsnot" or bool(options.reconstruct)
        self.refit_kwargs, self.solver_stats = refit_kwargs, solver_stats
        self.layers: dict[str, dict] = {}
        self.seconds = {"refine_s": 0.0, "refit_s": 0.0, "initial_mask_refit_and_objectives_s": 0.0}
        self.buffer_bytes = 0
        self.rss_before = peak_rss_mib()

    def _weights(self, W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, target=None) -> torch.Tensor:
        if not self.refits:
            return (W.double() * keep).to(W.dtype)
        return obs_reconstruct(W, H, keep, stats=self.solver_stats, target=target, **self.refit_kwargs)

    def __call__(
        self, name: str, W: torch.Tensor, H: torch.Tensor, keep0: torch.Tensor, *,
        pattern: KeepPattern | None = None, forced: torch.Tensor | None = None, target=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(new weights in W's dtype, new keep mask) of one layer. W: the dense target (out, in); H: its Hessian;
        keep0: the method's mask; forced: entries that must stay pruned (earlier cycles); target: a
        `refit.DenseTarget` (`refit_target="dense"`: ADMM, the re-fit and every objective aim at the dense model's
        output; DSnoT's swaps keep their own criterion)."""
        W, keep0 = W.detach().cpu(), keep0.cpu().bool()
        forced = forced.cpu().bool() if forced is not None else None
        if bool(keep0.all()):  # nothing pruned (e.g. a layer a k:n method left dense): nothing to refine
            return W.clone(), keep0.clone()
        budget = Budget.of(keep0, pattern, forced)
        st: dict = {}
        t0 = time.perf_counter()
        z = None
        if self.kind == "dsnot":
            keep = swap_refine(W, H, keep0, budget, self.iters, st)
        else:
            z, keep = admm_prune(W, H, keep0, budget, schedule=self.kind, iters=self.iters, stats=st, target=target)
        t1 = time.perf_counter()
        new = self._weights(W, H, keep, target)
        f_new = layer_objective(W, new, H, target)
        if z is not None and self.admm_weights_if_lower and (f_z := layer_objective(W, z, H, target)) < f_new:
            new, f_new, st["weights"] = z.to(W.dtype), f_z, "admm"  # ADMM's own Z fits better than the re-fit
        t2 = time.perf_counter()
        base = self._weights(W, H, keep0, target)
        f_base = layer_objective(W, base, H, target)
        t3 = time.perf_counter()
        kept_initial = f_new > f_base
        rec = {
            "objective": f_new, "initial_mask_objective": f_base, "kept_initial_mask": kept_initial,
            "changed_entries": int((keep != keep0).sum()), "weights": st.get("weights", "refit"),
        }  # fmt: skip
        rec.update({k: st[k] for k in ("iterations", "rho", "cycles", "swaps") if k in st})
        self.layers[name] = rec
        for key, dt in zip(self.seconds, (t1 - t0, t2 - t1, t3 - t2)):
            self.seconds[key] += dt
        held = st.get("buffer_bytes", 0) + sum(t.numel() * t.element_size() for t in (new, base, z) if t is not None)
        self.buffer_bytes = max(self.buffer_bytes, held)
        if kept_initial:
            return base, keep0.clone()
        return new, keep

    def record(self) -> dict:
        """The ledger record: what ran, per-layer objectives against the method's own mask, time and memory."""
        f = sum(r["objective"] for r in self.layers.values())
        f0 = sum(r["initial_mask_objective"] for r in self.layers.values())
        weights = "least-squares re-fit of the survivors" if self.refits else "masked dense weights (no update)"
        if self.kind != "dsnot":
            weights += ", or ADMM's iterate where its objective is lower (layers[...]['weights'] == 'admm')"
        return {
            "kind": self.kind, "max_iterations": self.iters, "weights": weights,
            "objective": "tr((W - W_new) H (W - W_new)^T), H = 2 X^T X / rows from the sequential pass"
            if self.target == "sequential" else "||W_new X - W X_dense||^2 * 2 / rows (refit_target='dense')",
            "total_objective": f, "total_initial_mask_objective": f0,
            "layers_kept_initial_mask": sum(r["kept_initial_mask"] for r in self.layers.values()),
            "layers": self.layers,
            "time_split": {k: round(v, 3) for k, v in self.seconds.items()},
            "memory": {
                "largest_layer_buffers_mib": round(self.buffer_bytes / 2**20, 1),
                "process_peak_rss_mib_before": self.rss_before, "process_peak_rss_mib_after": peak_rss_mib(),
            },
        }  # fmt: skip
