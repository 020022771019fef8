"""Marchenko–Pastur fit of weight matrices (docs/algorithms.md §2). Pure float64 math; no hooks, no files.

Route: eigenvalues of the smaller Gram matrix in float64 (`eigvalsh`, ~6x faster than `svdvals` here), same-shape
matrices batched in memory-bounded chunks; BEMA quantile matching of the central window; Tracy–Widom-corrected
upper edge. MP quantiles are solved with scipy's vectorised bracketing root finder and cached per shape.
"""

import functools
import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from huggingface_hub.utils import tqdm

from ..core.config import SpectralConfig
from ..core.constants import __version__
from ..core.errors import SpectralError
from ..core.threads import parallel_map, split, worker_count
from .law import mp_cdf, mp_quantile, tw1_quantile
from .plots import plot_report


if TYPE_CHECKING:
    from ..core.layers import LayerSet

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _bema_window(p: int, n: int, alpha: float) -> tuple[int, int, float, np.ndarray]:
    """Central index window [lo, hi) and the unit-variance MP quantiles at levels i/p (cached per shape)."""
    lo, hi, a = int(math.floor(alpha * p)), int(math.floor((1 - alpha) * p)), alpha
    if hi - lo < 8:  # small matrices: use the full range (adaptive_rmt guard)
        lo, hi, a = 0, p, 0.0
    q = mp_quantile(np.arange(lo, hi) / p, p / n)
    q.setflags(write=False)
    return lo, hi, a, q


# ---- one fit -------------------------------------------------------------------------------------------------
@dataclass
class MPFit:
    """MP fit of one matrix (docs/algorithms.md §2.6, §2.10). Eigen quantities use the `normalisation` convention."""

    shape: tuple[int, int]
    p: int
    n: int
    gamma: float
    normalisation: str  # "n_max" (exact) or "n_in" (repo)
    compat: str
    bema_alpha: float
    bema_beta: float
    tw_quantile: float
    sigma2: float
    lambda_plus: float
    sigma_plus: float
    bulk_fraction: float
    n_spikes: int
    spike_energy_fraction: float
    mean_outlier_ratio: float
    top_ratio: float
    fit_error: float
    hill_alpha: float
    stable_rank: float
    eff_rank: float
    frob_norm: float
    singular_values: np.ndarray = field(repr=False)  # descending, float64

    def to_dict(self, *, include_singular_values: bool = False) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["spectrum_dtype"] = "float64"
        sv = d.pop("singular_values")
        if include_singular_values:
            d["singular_values"] = [float(v) for v in sv]
        return d


def _check_matrix(w) -> torch.Tensor:
    if isinstance(w, np.ndarray):
        w = torch.from_numpy(w)
    if not isinstance(w, torch.Tensor):
        raise SpectralError(f"expected a 2-D tensor or array, got {type(w).__name__}")
    if w.dim() != 2:
        raise SpectralError(f"MP fit needs a 2-D matrix, got shape {tuple(w.shape)}; reshape conv weights first")
    if min(w.shape) < 2:
        raise SpectralError(f"MP fit needs at least 2 rows and 2 columns, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise SpectralError(f"matrix of shape {tuple(w.shape)} contains NaN or Inf")
    return w


def gram_eigvals(mats: torch.Tensor, device: str | None = None) -> np.ndarray:
    """Eigenvalues (ascending, ≥0) of the smaller Gram matrix of each matrix in a (B, M, N) batch, in float64."""
    x = mats.to(device=device or mats.device, dtype=torch.float64)  # (B, M, N)
    g = x @ x.mT if x.shape[1] <= x.shape[2] else x.mT @ x  # (B, p, p)
    del x
    if g.device.type == "cpu":  # single-threaded calls spread over the cores (see hf_mpprune.core.threads)
        parts = split(g.shape[0], 2 * worker_count())  # two per worker: a worker slowed by other work takes fewer
        ev = torch.cat(parallel_map(lambda sl: torch.linalg.eigvalsh(g[sl]), parts))
    else:
        ev = torch.linalg.eigvalsh(g)  # (B, p) ascending
    return ev.clamp_min_(0.0).cpu().numpy()


def fit_from_eigvals(ev: np.ndarray, shape: tuple[int, int], cfg: SpectralConfig | None = None) -> MPFit:
    """MP fit from ascending Gram eigenvalues (= squared singular values) of a matrix of `shape`."""
    cfg = cfg or SpectralConfig()
    m, n_in = shape
    p, n = min(shape), max(shape)
    gamma = p / n
    if ev[-1] <= 0:
        raise SpectralError(f"matrix of shape {shape} is all zeros: no spectrum to fit")
    norm = n if cfg.compat == "exact" else n_in
    lam = ev / norm  # ascending
    lo, hi, a, q = _bema_window(p, n, cfg.bema_alpha)
    sigma2 = float(q @ lam[lo:hi] / (q @ q))
    t = tw1_quantile(cfg.bema_beta)
    c = 1 + math.sqrt(gamma)
    tw_term = c ** (4 / 3) if cfg.compat == "exact" else c**4 / 3  # repo: operator-precedence slip
    lambda_plus = sigma2 * (c**2 + t * n ** (-2 / 3) * gamma ** (-1 / 6) * tw_term)
    sigma_plus = math.sqrt(max(norm * lambda_plus, 0.0))

    s = np.sqrt(ev[::-1])  # descending singular values
    energy = s * s
    total = float(energy.sum())
    spikes = s > sigma_plus
    k_sp = int(spikes.sum())
    central = lam[lo:hi]
    emp = a + (1 - 2 * a) * np.arange(hi - lo) / (hi - lo)
    fit_error = float(np.max(np.abs(mp_cdf(central, gamma, sigma2, cfg.compat) - emp)))
    return MPFit(
        shape=(int(m), int(n_in)), p=p, n=n, gamma=gamma,
        normalisation="n_max" if cfg.compat == "exact" else "n_in", compat=cfg.compat,
        bema_alpha=cfg.bema_alpha, bema_beta=cfg.bema_beta, tw_quantile=t,
        sigma2=sigma2, lambda_plus=lambda_plus, sigma_plus=sigma_plus,
        bulk_fraction=float((s < sigma_plus).mean()), n_spikes=k_sp,
        spike_energy_fraction=float(energy[spikes].sum() / total),
        mean_outlier_ratio=float((s[spikes] / sigma_plus).mean()) if k_sp else 0.0,
        top_ratio=float(s[0] / sigma_plus) if sigma_plus > 0 else math.inf,
        fit_error=fit_error, hill_alpha=hill_alpha(energy), stable_rank=total / float(energy[0]),
        eff_rank=_entropy_rank(energy, total), frob_norm=math.sqrt(total), singular_values=s,
    )  # fmt: skip


def hill_alpha(energy_desc: np.ndarray, k_max: int = 20) -> float:
    """Hill power-law exponent of the top eigenvalues (docs/algorithms.md §2.6); 99.0 when undefined."""
    k = min(k_max, len(energy_desc) - 1)
    if k < 2 or energy_desc[k] <= 0:
        return 99.0
    mean_log = float(np.mean(np.log(energy_desc[:k] / energy_desc[k])))
    return 1.0 + 1.0 / mean_log if mean_log > 0 else 99.0


def _entropy_rank(energy: np.ndarray, total: float) -> float:
    pi = energy[energy > 0] / total
    return float(np.exp(-(pi * np.log(pi)).sum()))


def fit_mp(w, config: SpectralConfig | None = None, **kwargs) -> MPFit:
    """MP fit of one matrix `w` (torch tensor or numpy array, any float dtype; computed in float64).

    Keyword arguments override `SpectralConfig` fields, e.g. `fit_mp(W, compat="repo")`.
    """
    cfg = config or SpectralConfig(**kwargs)
    if config is not None and kwargs:
        cfg = SpectralConfig(**{**asdict(config), **kwargs})
    w = _check_matrix(w).detach()
    ev = gram_eigvals(w.unsqueeze(0), cfg.device)[0]
    return fit_from_eigvals(ev, tuple(w.shape), cfg)


# ---- a whole model -------------------------------------------------------------------------------------------
@dataclass
class LayerSpectrum:
    name: str
    role: str
    view: str  # "per_module" or "fused_qkv"
    members: list[str]  # registered layers this row stands for (3 for a fused qkv row)
    fit: MPFit

    def to_dict(self, *, include_singular_values: bool = False) -> dict:
        d = {"name": self.name, "role": self.role, "matrix_view": self.view, "members": self.members}
        d.update(self.fit.to_dict(include_singular_values=include_singular_values))
        return d


_SUMMARY_COLS = ("sigma_plus", "bulk_fraction", "n_spikes", "fit_error", "hill_alpha", "stable_rank")


@dataclass
class SpectralReport:
    """Per-layer MP fits of a model, plus rows that could not be fit (`skipped`, with reasons)."""

    rows: list[LayerSpectrum]
    config: SpectralConfig
    skipped: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> LayerSpectrum:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no spectrum row named {name!r}")

    def by_layer(self) -> dict[str, MPFit]:
        """Registered layer name -> its fit (a fused qkv fit is shared by q, k and v)."""
        return {m: row.fit for row in self.rows for m in row.members}

    def to_dict(self, *, include_singular_values: bool = False) -> dict:

        return {
            "hf_mpprune_version": __version__,
            "spectral_config": asdict(self.config),
            "layers": [r.to_dict(include_singular_values=include_singular_values) for r in self.rows],
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SpectralReport":
        """Inverse of `to_dict` (singular values are restored when they were written)."""
        rows = []
        for r in d["layers"]:
            r = dict(r)
            name, role, view, members = r.pop("name"), r.pop("role"), r.pop("matrix_view"), r.pop("members")
            r.pop("spectrum_dtype", None)
            r["shape"] = tuple(r["shape"])
            r["singular_values"] = np.asarray(r.pop("singular_values", []), dtype=np.float64)
            rows.append(LayerSpectrum(name, role, view, list(members), MPFit(**r)))
        return cls(rows, SpectralConfig(**d["spectral_config"]), dict(d.get("skipped", {})))

    def to_json(self, path=None, *, include_singular_values: bool = False) -> str:

        text = json.dumps(self.to_dict(include_singular_values=include_singular_values), indent=2, sort_keys=True)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def to_markdown(self) -> str:
        head = "| layer | role | shape | " + " | ".join(_SUMMARY_COLS) + " |"
        lines = [head, "|" + "---|" * (3 + len(_SUMMARY_COLS))]
        for r in self.rows:
            f = r.fit
            vals = [
                f"{getattr(f, c):.4g}" if isinstance(getattr(f, c), float) else str(getattr(f, c))
                for c in _SUMMARY_COLS
            ]
            lines.append(f"| {r.name} | {r.role} | {f.shape[0]}x{f.shape[1]} | " + " | ".join(vals) + " |")
        for name, why in self.skipped.items():
            lines.append(f"| {name} | skipped: {why} |" + " |" * (1 + len(_SUMMARY_COLS)))
        return "\n".join(lines)

    def plot(self, out_dir, *, layers: bool = True) -> list[str]:
        """Write `overview.png` and (if `layers`) one ESD histogram per row under `out_dir/layers/`."""
        return plot_report(self, out_dir, layers=layers)


def _rows_to_fit(layers: "LayerSet", view: str) -> list[tuple[str, str, list, object]]:
    """(row name, role, members, callable returning the matrix) for each spectrum row."""
    rows, fused = [], {}
    if view == "fused_qkv":
        for gname, members in layers.fused_qkv_groups():
            for m in members:
                fused[m.name] = (gname, members)
    done = set()
    for layer in layers:
        if layer.name in fused:
            gname, members = fused[layer.name]
            if gname not in done:
                done.add(gname)
                rows.append((gname, members[0].role, [m.name for m in members], members))
            continue
        rows.append((layer.name, layer.role, [layer.name], [layer]))
    return rows


def _matrix(members) -> torch.Tensor:
    mats = [m.matrix_view().detach() for m in members]
    return mats[0] if len(mats) == 1 else torch.cat(mats, dim=0)


def analyze(
    layers: "LayerSet",
    config: SpectralConfig | None = None,
    *,
    chunk_bytes: int = 8 * 2**20,
    progress: bool = True,
) -> SpectralReport:
    """MP-fit every registered layer. Same-shape matrices are batched, each batch capped at `chunk_bytes` of
    float64, so peak extra memory is a few float64 copies of the largest matrix, never of the whole model."""
    cfg = config or SpectralConfig()
    specs = _rows_to_fit(layers, cfg.view)
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    skipped: dict[str, str] = {}
    for i, (name, _, _, members) in enumerate(specs):
        shape = tuple(members[0].matrix_view().shape)
        shape = (shape[0] * len(members), shape[1])
        if min(shape) < 2:
            skipped[name] = f"shape {shape}: needs at least 2 rows and 2 columns"
            continue
        by_shape[shape].append(i)
    fits: dict[int, MPFit] = {}
    bar = tqdm(total=sum(len(v) for v in by_shape.values()), desc="MP fit", unit="layer", disable=not progress)
    for shape, idx in by_shape.items():
        per_chunk = max(1, chunk_bytes // (8 * shape[0] * shape[1]))
        for start in range(0, len(idx), per_chunk):
            chunk = idx[start : start + per_chunk]
            mats = torch.stack([_matrix(specs[i][3]) for i in chunk])  # (B, M, N), model dtype
            bad = [specs[i][0] for i, ok in zip(chunk, torch.isfinite(mats).flatten(1).all(1)) if not ok]
            if bad:
                raise SpectralError(f"non-finite weights (NaN/Inf) in layer(s) {bad}")
            ev = gram_eigvals(mats, cfg.device)
            del mats
            for i, e in zip(chunk, ev):
                try:
                    fits[i] = fit_from_eigvals(e, shape, cfg)
                except SpectralError as err:
                    skipped[specs[i][0]] = str(err)
            bar.update(len(chunk))
    bar.close()
    rows = [
        LayerSpectrum(name, role, cfg.view if len(mem) > 1 else "per_module", mem, fits[i])
        for i, (name, role, mem, _) in enumerate(specs)
        if i in fits
    ]
    logger.info("MP fit of %d matrices (%d skipped)", len(rows), len(skipped))
    return SpectralReport(rows, cfg, skipped)
