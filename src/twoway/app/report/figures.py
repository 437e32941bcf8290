"""Figures of the HTML report, each returned as PNG bytes (matplotlib, Agg backend).

Every function takes plain arrays and labels (or a fit) and returns the bytes
of one PNG; :func:`twoway.app.report.write_report` embeds them as data URIs.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from twoway.table.labels import shorten_index, shorten_labels

# Deferred imports: matplotlib, scipy (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["png_bytes", "heatmap_png", "forest_png", "trace_rank_png", "checks_png", "check_intervals", "DPI"]

DPI = 90
MISSING_COLOUR = "#e6e6e6"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Render ``fig`` as PNG bytes and close it."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _ticks(ax, row_labels: Sequence[str], col_labels: Sequence[str], rotate: bool = True) -> None:
    n, k = len(row_labels), len(col_labels)
    step_r = max(1, n // 30)
    step_c = max(1, k // 30)
    row_labels, col_labels = shorten_labels(row_labels), shorten_labels(col_labels)
    ax.set_yticks(range(0, n, step_r), [str(row_labels[i]) for i in range(0, n, step_r)], fontsize=8)
    ax.set_xticks(range(0, k, step_c), [str(col_labels[j]) for j in range(0, k, step_c)],
                  rotation=90 if rotate else 0, fontsize=8)


def heatmap_png(panels: Sequence[tuple[str, np.ndarray]], row_labels: Sequence[str],
                col_labels: Sequence[str], *, diverging: bool = False, limits: tuple[float, float] | None = None,
                value_label: str = "value", xlabel: str = "col", ylabel: str = "row",
                annotate_missing: bool = True, outline: np.ndarray | None = None) -> bytes:
    """Matrices side by side as heatmaps, missing (NaN) cells hatched grey.

    Parameters
    ----------
    panels : sequence of (title, array (N, K))
        One panel each; they share the colour scale.
    row_labels, col_labels : sequence of str
        Labels of the N rows and K columns.
    diverging : bool
        A blue-white-red scale centred on 0 (for residuals and correlations).
    limits : (low, high), optional
        Fixed colour limits (default: the range of the values, symmetric when diverging).
    value_label : str
        Colour bar label.
    outline : array (N, K) of bool, optional
        Cells to outline in every panel (predicted cells beside observed ones).

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    arrays = [np.asarray(a, dtype=float) for _, a in panels]
    n, k = arrays[0].shape
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if limits is not None:
        vmin, vmax = limits
    elif finite.size == 0:
        vmin, vmax = -1.0, 1.0
    elif diverging:
        m = float(np.max(np.abs(finite))) or 1.0
        vmin, vmax = -m, m
    else:
        vmin, vmax = float(finite.min()), float(finite.max())
        if vmin == vmax:
            vmin, vmax = vmin - 1.0, vmax + 1.0
    cmap = plt.get_cmap("RdBu_r" if diverging else "viridis").with_extremes(bad=MISSING_COLOUR)
    width = min(2.0 + 0.42 * k, 9.0) * len(panels) + 1.2
    height = min(1.6 + 0.36 * n, 10.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(width, 18.0), height), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (title, _), values in zip(axes[0], panels, arrays):
        im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        if annotate_missing:
            for i, j in zip(*np.nonzero(~np.isfinite(values))):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                           edgecolor="#9a9a9a", lw=0))
        if outline is not None:
            for i, j in zip(*np.nonzero(np.asarray(outline, dtype=bool))):
                ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="#111111",
                                           lw=1.2, linestyle="--"))
        _ticks(ax, row_labels, col_labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=list(axes[0]), label=value_label, shrink=0.9)
    return png_bytes(fig)


def forest_png(panels: Sequence[dict], *, xlabel: str = "") -> bytes:
    """Forest plots: posterior mean and interval per level, one panel per parameter.

    Parameters
    ----------
    panels : sequence of dict
        Each with ``title``, ``labels`` (L,), ``mean``, ``low``, ``high`` (L,),
        optionally ``truth`` (L,) drawn as red crosses and ``ref`` (a number
        drawn as a dashed vertical line).
    xlabel : str

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    n_max = max(len(p["labels"]) for p in panels)
    height = min(1.3 + 0.28 * n_max, 14.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.6 * len(panels), 16.0), height), squeeze=False,
                             layout="constrained")
    for ax, p in zip(axes[0], panels):
        labels = shorten_index([str(x) for x in p["labels"]])  # long labels cut in the middle
        y = np.arange(len(labels))[::-1]
        mean, low, high = (np.asarray(p[k], dtype=float) for k in ("mean", "low", "high"))
        ax.hlines(y, low, high, color="#3465a4", lw=2.2, label="94% interval")
        ax.plot(mean, y, "o", color="#1f3b66", ms=5, label="posterior mean")
        if p.get("truth") is not None:
            truth = np.asarray(p["truth"], dtype=float)
            ax.plot(truth, y, "x", color="#cc0000", ms=7, mew=2, label="true value")
        if p.get("ref") is not None:
            ax.axvline(p["ref"], color="#888888", ls="--", lw=1)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_title(p["title"], fontsize=11)
        ax.grid(axis="x", color="#eeeeee")
        ax.set_xlabel(p.get("xlabel", xlabel))
    axes[0, 0].legend(loc="best", fontsize=7, frameon=False)
    return png_bytes(fig)


def _rank_counts(x: np.ndarray, bins: int) -> np.ndarray:
    """Per-chain histogram counts of the pooled ranks of draws x (chains, draws)."""
    from scipy.stats import rankdata

    ranks = rankdata(x.reshape(-1)).reshape(x.shape)
    edges = np.linspace(0.5, x.size + 0.5, bins + 1)
    return np.stack([np.histogram(r, bins=edges)[0] for r in ranks])


def trace_rank_png(series: Sequence[tuple[str, np.ndarray]], *, bins: int = 20) -> bytes:
    """Trace (left) and rank plot (right) of each series of draws.

    Parameters
    ----------
    series : sequence of (label, array (chains, draws))
        The draws of one scalar each.
    bins : int
        Rank histogram bins; with well-mixed chains every chain's bars hover
        around the dashed uniform line.

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(series), 2, figsize=(10.5, 1.25 * len(series) + 0.8), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [2.2, 1]})
    for (label, x), (ax_t, ax_r) in zip(series, axes):
        x = np.asarray(x, dtype=float)
        n_chains = x.shape[0]
        for c in range(n_chains):
            ax_t.plot(x[c], lw=0.5, alpha=0.8, color=colours[c % len(colours)])
        counts = _rank_counts(x, bins)
        for c in range(n_chains):
            ax_r.stairs(counts[c], np.arange(bins + 1), color=colours[c % len(colours)], lw=1.4)
        ax_r.axhline(x.shape[1] / bins, color="#333333", ls="--", lw=0.8)
        ax_t.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax_t.tick_params(labelsize=7)
        ax_r.tick_params(labelsize=7)
        ax_r.set_xticks([])
        ax_r.set_ylim(0, None)
    axes[0, 0].set_title("trace (one colour per chain)", fontsize=10)
    axes[0, 1].set_title("rank plot (uniform when chains agree)", fontsize=10)
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("rank of draw among all chains")
    return png_bytes(fig)


def check_intervals(panel: dict) -> tuple[np.ndarray, np.ndarray]:
    """The bars of a predictive-check panel: replicated mean +- 2 sd, cut at 0 for a statistic that cannot be negative.

    Parameters
    ----------
    panel : dict
        With ``rep_mean``, ``rep_sd`` (L,) and optionally ``nonnegative`` (bool, default false).

    Returns
    -------
    (low, high) : numpy.ndarray, numpy.ndarray
        Each (L,).
    """
    m, s = (np.asarray(panel[k], dtype=float) for k in ("rep_mean", "rep_sd"))
    low, high = m - 2 * s, m + 2 * s
    if panel.get("nonnegative", False):
        low, high = np.maximum(low, 0.0), np.maximum(high, 0.0)
    return low, high


def checks_png(panels: Sequence[dict]) -> bytes:
    """Observed statistics against their replicated distribution, one panel per statistic family.

    Parameters
    ----------
    panels : sequence of dict
        Each with ``title``, ``labels`` (L,), ``observed``, ``rep_mean``,
        ``rep_sd`` (L,) and ``flag`` (L,) bools marking extreme p-values;
        optionally ``nonnegative`` (bool): a statistic that cannot be negative
        (a variance), whose bars stop at 0 (see :func:`check_intervals`).

    Returns
    -------
    bytes
        A PNG image: grey bars span the replicated mean +- 2 sd, dots are the
        observed values (red where flagged).
    """
    plt = _pyplot()
    n_max = max(len(p["labels"]) for p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(3.8 * len(panels), 16.0), min(1.3 + 0.26 * n_max, 12.0)),
                             squeeze=False, layout="constrained")
    for ax, p in zip(axes[0], panels):
        labels = shorten_index([str(x) for x in p["labels"]])  # long labels cut in the middle
        y = np.arange(len(labels))[::-1]
        obs = np.asarray(p["observed"], dtype=float)
        low, high = check_intervals(p)
        flag = np.asarray(p["flag"], dtype=bool)
        ax.hlines(y, low, high, color="#b8b8b8", lw=5, label="replicated (mean +- 2 sd)")
        ax.plot(obs[~flag], y[~flag], "o", color="#1f3b66", ms=5, label="observed")
        if flag.any():
            ax.plot(obs[flag], y[flag], "o", color="#cc0000", ms=6, label="observed, extreme")
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_title(p["title"], fontsize=11)
        ax.grid(axis="x", color="#eeeeee")
    axes[0, 0].legend(loc="best", fontsize=7, frameon=False)
    return png_bytes(fig)
