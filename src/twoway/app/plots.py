"""Figures: the table as a heatmap, trace plots of the main parameters.

Missing cells are hatched by one patch behind the image and long chains are thinned
(:func:`twoway.app.report.figures.thin`), so that a large table or a long run costs no
more objects to draw than a small one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twoway.app.report.figures import thin
from twoway.table.io.outputs import atomic_output
from twoway.table.labels import shorten_labels

# Deferred imports: matplotlib (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["table_heatmap", "trace_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def table_heatmap(data, path, *, replicate: int = 0, title: str | None = None):
    """Draw one replicate table (N x K) as a heatmap, missing cells hatched; save to ``path``."""
    plt = _pyplot()
    values = data.values[replicate]
    n, k = values.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * k, 16), min(1.5 + 0.4 * n, 14)))
    masked = np.ma.masked_invalid(values)
    ax.set_facecolor("#dddddd")
    if np.isnan(values).any():   # missing cells show one hatched patch behind the image: one object for any number
        ax.add_patch(plt.Rectangle((-0.5, -0.5), k, n, facecolor="#dddddd", hatch="xx", edgecolor="#888888", lw=0,
                                   zorder=-1))
    im = ax.imshow(masked, aspect="auto", cmap=plt.get_cmap("viridis").with_extremes(bad=(0.0, 0.0, 0.0, 0.0)))
    step_r = max(1, n // 30)
    step_c = max(1, k // 30)

    rows, cols = shorten_labels(data.row_labels), shorten_labels(data.col_labels)
    ax.set_yticks(range(0, n, step_r), [rows[i] for i in range(0, n, step_r)])
    ax.set_xticks(range(0, k, step_c), [cols[j] for j in range(0, k, step_c)], rotation=90)
    ax.set_xlabel(data.names.get("col") or "col")
    ax.set_ylabel(data.names.get("row") or "row")
    rep = f" (replicate {data.replicate_labels[replicate]})" if data.n_replicates > 1 else ""
    ax.set_title((title or "table") + rep)
    fig.colorbar(im, ax=ax, label=data.names.get("value") or "value")
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)
    return path


def trace_plot(fit, path, *, var_names: list[str] | None = None, max_levels: int = 6):
    """Trace (left) and per-chain density (right) of the main parameters; save to ``path``."""
    plt = _pyplot()
    post = fit.posterior
    names = var_names or [n for n in ("intercept", "coef", "row_mean", "col_mean", "row_sd", "col_sd", "sigma",
                                      "row_effect_sd", "col_effect_sd") if n in post]
    series = []
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if not extra:
            series.append((name, da.values))
        else:
            labels = da[extra[0]].values[:max_levels]
            for lab in labels:
                series.append((f"{name}[{lab}]", da.sel({extra[0]: lab}).values))
    fig, axes = plt.subplots(len(series), 2, figsize=(10, 1.4 * len(series) + 0.5), squeeze=False)
    for (label, x), (ax_t, ax_d) in zip(series, axes):
        at = thin(x.shape[1])    # long chains drawn thinned; the densities use every draw
        for c in range(x.shape[0]):
            ax_t.plot(at, x[c, at], lw=0.5, alpha=0.8)
            hist, edges = np.histogram(x[c], bins=40, density=True)
            ax_d.plot(0.5 * (edges[1:] + edges[:-1]), hist, lw=0.8)
        ax_t.set_ylabel(label, rotation=0, ha="right", fontsize=8)
        ax_t.tick_params(labelsize=7)
        ax_d.tick_params(labelsize=7)
        ax_d.set_yticks([])
    axes[0, 0].set_title("trace (each chain)")
    axes[0, 1].set_title("density (each chain)")
    fig.tight_layout()
    _save(fig, path, dpi=90)
    plt.close(fig)
    return path


def _save(fig, path, *, dpi: int) -> None:
    """Save ``fig`` to ``path`` atomically, in the format its ending names (PNG by default)."""

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
