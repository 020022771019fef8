"""Figures of a `SpectralReport`: per-layer ESD with the fitted MP density and σ₊ (the paper's Figure 1), and a
one-page overview (σ₊, bulk fraction, fit error, spikes by layer). matplotlib with the Agg backend."""

import os
import re

import numpy as np

from ..core.errors import ConfigError
from .law import mp_pdf


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'hf-mpprune[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer(row, path: str) -> str:
    """Histogram of λ = s²/norm with the fitted MP density over it; λ₊ and the spikes marked."""
    plt = _plt()
    f = row.fit
    norm = f.n if f.normalisation == "n_max" else f.shape[1]
    lam = f.singular_values**2 / norm
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bulk = lam[lam <= f.lambda_plus * 1.5]
    ax.hist(bulk, bins=min(120, max(20, len(bulk) // 4)), density=True, color="#8fb3d9", label="empirical ESD")
    xs = np.linspace(max(bulk.min(), 1e-12), bulk.max(), 400)
    ax.plot(xs, mp_pdf(xs, f.gamma, f.sigma2) * (f.p / max(1, len(bulk))), color="#c0392b", label="fitted MP")
    ax.axvline(f.lambda_plus, color="k", ls="--", lw=1, label=f"λ₊ (σ₊={f.sigma_plus:.3g})")
    ax.set_title(f"{row.name}  {f.shape[0]}×{f.shape[1]}  spikes={f.n_spikes}  fit err={f.fit_error:.3f}", fontsize=8)
    ax.set_xlabel("eigenvalue λ of WWᵀ / n")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overview(report, path: str) -> str:
    plt = _plt()
    names = [r.name for r in report.rows]
    x = np.arange(len(names))
    panels = [
        ("σ₊ (fitted bulk edge)", [r.fit.sigma_plus for r in report.rows]),
        ("bulk fraction", [r.fit.bulk_fraction for r in report.rows]),
        ("MP fit error", [r.fit.fit_error for r in report.rows]),
        ("spikes above σ₊", [r.fit.n_spikes for r in report.rows]),
    ]
    colors = {"attn": "#2980b9", "mlp": "#27ae60", "head": "#c0392b", "embed": "#8e44ad", "other": "#7f8c8d"}
    c = [colors.get(r.role, "#7f8c8d") for r in report.rows]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, len(names) * 0.18), 10), sharex=True)
    for ax, (title, vals) in zip(axes, panels):
        ax.bar(x, vals, color=c)
        ax.set_ylabel(title, fontsize=8)
    axes[-1].set_xticks(x, names, rotation=90, fontsize=5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=v) for v in colors.values()]
    axes[0].legend(handles, list(colors), fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_report(report, out_dir, *, layers: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [plot_overview(report, os.path.join(out_dir, "overview.png"))]
    if layers:
        sub = os.path.join(out_dir, "layers")
        os.makedirs(sub, exist_ok=True)
        for row in report.rows:
            fname = re.sub(r"[^A-Za-z0-9_.-]", "_", row.name) + ".png"
            paths.append(plot_layer(row, os.path.join(sub, fname)))
    return paths
