"""Options and the iterative solver of the least-squares re-fit of kept weights (`reconstruct=True`).

`RefitOptions` is the config mixin shared by every method that can re-fit (the one-shot methods and CAST);
`cg_refit` is the batched conjugate-gradient solver `obs.obs_reconstruct(solver="cg")` calls. The exact per-row
solves stay in `obs`.
"""

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .threads import parallel_map, row_chunks


__all__ = [
    "SOLVERS",
    "TARGETS",
    "BlockTune",
    "DenseTarget",
    "RefitOptions",
    "cg_refit",
    "hessian_dtype",
    "refit_record",
    "tune_split",
]

SOLVERS = ("cg", "exact")
TARGETS = ("sequential", "dense")


@dataclass
class DenseTarget:
    """What the re-fit of one layer needs to aim at the DENSE model's output of that layer (`refit_target="dense"`):
    with X the layer's inputs on the model as already modified and X_d its inputs on the dense model (the same
    calibration rows), `cross` = 2 X_dᵀX / rows and `dense_h` = 2 X_dᵀX_d / rows, both (in, in) float64. The re-fit
    then minimises ‖Ŵ X − W X_d‖² (normal equations Ŵ H = W·cross on the kept set) instead of ‖(Ŵ − W) X‖²."""

    cross: torch.Tensor
    dense_h: torch.Tensor


@dataclass(frozen=True)
class BlockTune:
    """Block output reconstruction (`block_epochs`, `hf_mpprune.core.blocktune`): `epochs` Adam passes over the
    calibration batches per block at learning rate `lr` (held, or decayed to 0 by a cosine over the block's steps
    when `schedule` is "cosine"); with `augment` > 0 also on that many corrupted copies of each batch
    (`blocktune.Augmented`, drawn with `seed`)."""

    epochs: int
    lr: float
    augment: int = 0
    seed: int = 0
    schedule: str = "constant"


@dataclass
class RefitOptions:
    """Re-fit of the kept weights after a method chose its mask (mixed into method configs).

    Args:
        reconstruct (`bool`, defaults to False): keep the method's mask, then re-fit the kept weights layer by layer
            (forward order, on the already re-fitted model) by least squares against the layer's dense output
            (`hf_mpprune.core.obs.obs_reconstruct`). Pruned entries stay exactly 0; kept weights change value.
            [D] target: the layer's dense output W·x on the inputs x produced by the already re-fitted earlier
            layers (SparseGPT's sequential convention), i.e. min ‖W X − Ŵ X‖ with X from the pruned model.
        reconstruct_solver (`str`, defaults to `"cg"`): `"cg"` = `reconstruct_iters` steps of batched
            Jacobi-preconditioned conjugate gradients per layer (one GEMM of the layer per step); `"exact"` = one
            Cholesky solve per output row (the exact minimiser; cost grows with the cube of the kept count).
            [D] default chosen on MiniLM's selection split (benchmarks/RESULTS.md, issue 17).
        reconstruct_iters (`int`, defaults to 10): CG steps per layer (`reconstruct_solver="cg"`).
        percdamp (`float`, defaults to 0.01): Hessian damping λ = percdamp · mean(diag H) of the re-fit.
        refit_target (`str`, defaults to `"sequential"`): what the re-fit (and `refine="admm"` / `"alps"`) fits.
            `"sequential"`: the layer's own dense weights on the inputs it now receives, min ‖(Ŵ − W) X‖ (above).
            `"dense"`: the dense MODEL's output of the layer, min ‖Ŵ X − W X_d‖ with X_d the layer's inputs in the
            unpruned model, so each layer also corrects the error of the layers before it (`DenseTarget`; one
            extra dense forward of every transformer block; layers outside the repeated blocks keep the
            sequential target). Needs the block-cached calibration path; not on `cast` or `sparsegpt`.
        block_epochs (`int`, defaults to 0): after the layers of each transformer block are pruned (and re-fitted),
            `block_epochs` passes of Adam over the calibration batches fit the block's kept weights and biases to the
            DENSE model's output of that block (masks frozen, no labels; `hf_mpprune.core.blocktune`). 0 = off.
            Needs a sequential pass (`reconstruct=True`, `refine`, or SparseGPT), the block-cached calibration path
            and float32 weights. On `cast` the target is each block with CAST's source weights swapped in (its k:n
            projections are already written). [D] epochs and rate chosen on MiniLM's selection split
            (benchmarks/RESULTS.md, issue 22).
        block_lr (`float`, defaults to 1e-3): Adam's learning rate of `block_epochs`.
        block_augment (`int`, defaults to 0): extra training data for `block_epochs`, made from the calibration
            batches themselves: that many copies of each batch in which 15 % of the real positions of the first
            block's input (not a row's first or last real position) carry the first-block input of a random real
            position of the calibration set, in the dense and the pruned model alike (token replacement at the
            embedding, for text and image patches alike). Only the block step sees them (masks, Hessians and
            re-fits use the batches as given); each copy costs one more forward + backward per block and epoch.
            0 = off. [D] chosen on MiniLM's selection split (benchmarks/RESULTS.md, issue 22).
        block_schedule (`str`, defaults to `"constant"`): the learning rate over a block's Adam steps (every batch
            and every copy is one step): `"constant"` holds `block_lr`; `"cosine"` decays it from `block_lr` to 0 by
            a half cosine over the block's `block_epochs` × (batches + copies) steps (PyTorch's
            `CosineAnnealingLR`). No extra cost.
    """

    reconstruct: bool = False
    reconstruct_solver: str = "cg"
    reconstruct_iters: int = 10
    percdamp: float = 0.01
    refit_target: str = "sequential"
    block_epochs: int = 0
    block_lr: float = 1e-3
    block_augment: int = 0
    block_schedule: str = "constant"

    def block_tune(self) -> BlockTune | None:
        """The block reconstruction these options ask for (None when `block_epochs` is 0)."""
        if not self.block_epochs:
            return None
        seed = getattr(self, "seed", 0)
        return BlockTune(self.block_epochs, float(self.block_lr), self.block_augment, seed, self.block_schedule)

    def _check_block_tune(self) -> None:
        e, lr = self.block_epochs, self.block_lr
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ConfigError(f"block_epochs={e!r} must be an int >= 0 (0 = no block reconstruction)")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"block_lr={lr!r} must be a finite number > 0")
        a = self.block_augment
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise ConfigError(f"block_augment={a!r} must be an int >= 0 (0 = no augmented copies)")
        if not e and a:
            raise ConfigError(f"block_augment={a} has no effect with block_epochs=0: set block_epochs, or drop it")
        if self.block_schedule not in ("constant", "cosine"):
            raise ConfigError(f"block_schedule={self.block_schedule!r} must be 'constant' or 'cosine'")
        if not e and self.block_schedule != "constant":
            raise ConfigError(
                f"block_schedule={self.block_schedule!r} has no effect with block_epochs=0: set block_epochs"
            )
        if not e and lr != 1e-3:
            raise ConfigError(f"block_lr={lr} has no effect with block_epochs=0: set block_epochs, or drop block_lr")
        if e and not (getattr(self, "sequential_pass", self.reconstruct) or getattr(self, "runs_sequential", False)):
            raise ConfigError(
                f"block_epochs={e} runs inside the sequential re-fit pass, and method "
                f"{getattr(self, 'method', '?')!r} has none with these options: set reconstruct=True (or refine=)"
            )

    def _check_refit(self) -> None:
        self._check_block_tune()
        if self.refit_target not in TARGETS:
            raise ConfigError(f"refit_target={self.refit_target!r} must be one of {TARGETS}")
        if (
            self.refit_target == "dense"
            and not self.reconstruct
            and getattr(self, "refine", None) not in ("admm", "alps")
        ):
            raise ConfigError(
                "refit_target='dense' changes what the re-fit aims at, and nothing re-fits here: set reconstruct=True "
                "(or refine='admm' / 'alps'), or drop refit_target"
            )
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"reconstruct={self.reconstruct!r} must be True or False")
        if self.reconstruct_solver not in SOLVERS:
            raise ConfigError(f"reconstruct_solver={self.reconstruct_solver!r} must be one of {SOLVERS}")
        it = self.reconstruct_iters
        if isinstance(it, bool) or not isinstance(it, int) or it < 1:
            raise ConfigError(f"reconstruct_iters={it!r} must be an int >= 1 (default 10)")
        if not 0.0 <= float(self.percdamp) < 1.0:
            raise ConfigError(f"percdamp={self.percdamp} must be in [0, 1); the SparseGPT default is 0.01")
        if not self.reconstruct:  # every option acts or is refused
            defaults = {"reconstruct_solver": "cg", "reconstruct_iters": 10, "percdamp": 0.01}
            if getattr(self, "damping_without_refit", False):
                defaults.pop("percdamp")  # the method damps its own Hessian with it (SparseGPT)
            unused = [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
            if unused:
                raise ConfigError(
                    f"{', '.join(unused)} has no effect on method {getattr(self, 'method', '?')!r} without "
                    "reconstruct=True: set reconstruct=True to re-fit the kept weights, or drop the option"
                )

    def refit_kwargs(self) -> dict:
        """Keyword arguments of `obs_reconstruct` for these options."""
        return {"percdamp": float(self.percdamp), "solver": self.reconstruct_solver, "iters": self.reconstruct_iters}


def cg_refit(
    W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, iters: int, stats: dict | None = None,
    cross: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Approximate least-squares re-fit of the kept weights: `iters` steps of Jacobi-preconditioned conjugate
    gradients on every row at once. Returns the (out, in) re-fitted weights in float64 (zeros outside `keep`).

    With ŵ = W ⊙ M + D (D supported on the kept set K of each row) the objective (w − ŵ)ᵀ H (w − ŵ) is minimised by
    H_KK d = (H w_P)_K (w_P = the pruned part of the row). All rows run together: one step is one GEMM
    (M ⊙ P) H of the whole layer plus row-wise scalars, float32 for float32 `W` (float64 otherwise); H must already
    be damped. CG minimises the error in the H_KK norm, which IS the layer's reconstruction loss, so every step
    lowers the loss (in exact arithmetic) and step 0 is the masked original W ⊙ M. The final relative residual
    ‖r‖/‖b‖ (worst row) goes to `stats["cg_max_rel_residual"]`. With `cross` (the damped `DenseTarget.cross`) the
    right-hand side is (W·cross − (W ⊙ M) H)_K: the fit aims at the dense model's output instead.

    Rows are independent, so they run as row chunks spread over the cores, each single-threaded
    (`threads.row_chunks`, `threads.parallel_map`): a step's many mid-sized ops then wait at no thread barrier,
    which keeps the re-fit from stalling when other work holds a core (docs/algorithms.md §18.9).
    """
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    m = keep.cpu().to(work)
    h = H.cpu().to(work)
    w = W.detach().cpu().to(work)
    c = None if cross is None else cross.cpu().to(work)
    parts = parallel_map(lambda sl: _cg_rows(w[sl], m[sl], h, int(iters), c), row_chunks(*w.shape))
    x = torch.cat([p[0] for p in parts]) if parts else torch.zeros_like(w)
    if stats is not None:
        rel = max((p[1] for p in parts), default=0.0)
        stats["cg_max_rel_residual"] = max(stats.get("cg_max_rel_residual", 0.0), rel)
    out = (w * m + x).double()
    out[~keep.cpu().bool()] = 0.0
    return out


def _cg_rows(
    w: torch.Tensor, m: torch.Tensor, h: torch.Tensor, iters: int, c: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """`cg_refit` on a block of rows: (the correction D of these rows, their worst final relative residual)."""
    b = m * ((w * (1.0 - m)) @ h) if c is None else m * (w @ c - (w * m) @ h)
    x = torch.zeros_like(w)
    r = b.clone()
    dinv = 1.0 / h.diagonal()
    z = r * dinv
    p = z.clone()
    rz = (r * z).sum(1)
    tiny = torch.finfo(w.dtype).tiny
    floor = rz * torch.finfo(w.dtype).eps ** 2  # a row whose residual fell below this has converged: frozen
    for _ in range(iters):
        ap = torch.mm(p, h).mul_(m)
        pap = (p * ap).sum(1)
        live = (rz > floor) & (pap > 0)
        if not bool(live.any()):
            break
        alpha = torch.where(live, rz / pap.clamp_min(tiny), 0.0).unsqueeze(1)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        z = r * dinv
        rz_new = (r * z).sum(1)
        beta = torch.where(live, rz_new / rz.clamp_min(tiny), 0.0).unsqueeze(1)
        p = torch.addcmul(z, beta, p)
        rz = torch.where(live, rz_new, rz)
    rel = float((r.norm(dim=1) / b.norm(dim=1).clamp_min(tiny)).max()) if r.numel() else 0.0
    return x, rel


def hessian_dtype(layers) -> torch.dtype:
    """XᵀX products in float32 for float32 / half models (the reference SparseGPT's precision; accumulated in
    float64 across batches), float64 for float64 models."""
    dtypes = {la.weight.dtype for la in layers}
    return torch.float64 if torch.float64 in dtypes else torch.float32


def refit_record(kwargs: dict, stats: dict, target: str = "sequential") -> dict:
    """The ledger record of a re-fit (what was solved, how, and the solver's own counters)."""
    how = (
        f"{kwargs['iters']} Jacobi-preconditioned CG steps per layer, all rows batched"
        if kwargs["solver"] == "cg"
        else "exact: per row the smaller of kept / pruned (OBS) form; float32 Cholesky + float64 refinement"
    )
    return {
        "kind": "obs_least_squares", "percdamp": kwargs["percdamp"], "order": "forward, sequential",
        "target": "dense W x on inputs from the re-fitted earlier layers" if target == "sequential"
        else "the dense model's output W x_dense of each block layer (refit_target='dense')", "solver": how,
        "solver_name": kwargs["solver"], "solver_stats": stats,
    }  # fmt: skip


def tune_split(tm) -> dict:
    """`{"block_tune_s": seconds}` of the block output step, read from a sequential pass's timings `tm` (the
    `extra["block_tune"]` record that `blocktune.tune_recorded` writes), for a method's top-level time split; {} when
    there was no pass or no step."""
    return {"block_tune_s": tm.extra["block_tune"]["seconds"]} if tm is not None and "block_tune" in tm.extra else {}
