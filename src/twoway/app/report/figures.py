"""Figures of the HTML report, each returned as PNG bytes (matplotlib, Agg backend).

Every function takes plain arrays and labels (or a fit) and returns the bytes
of one PNG; :func:`twoway.app.report.write_report` embeds them as data URIs.

Every figure costs a bounded number of drawn objects whatever the table's size:
missing cells are hatched by one patch behind the image, residuals of many cells
are drawn as hexagonal bins (:func:`residuals_png`), a large table as block
averages (:func:`block_means`, :func:`binned_map_png`), distributions as
histograms (:func:`histograms_png`), long chains thinned in the trace plots.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from twoway.table.labels import shorten_index, shorten_labels

# Deferred imports: matplotlib, scipy (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["png_bytes", "heatmap_png", "forest_png", "trace_rank_png", "checks_png", "check_intervals", "DPI",
           "residuals_png", "histograms_png", "binned_map_png", "block_means", "thin", "MAX_TRACE_POINTS"]

DPI = 90
MISSING_COLOUR = "#e6e6e6"
#: The most draws of one chain drawn in a trace plot (longer chains are thinned evenly).
MAX_TRACE_POINTS = 1000


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
    # missing cells: transparent in the image, over one hatched grey patch behind it (one object, whatever
    # the number of missing cells)
    base = plt.get_cmap("RdBu_r" if diverging else "viridis")
    cmap = base.with_extremes(bad=(0.0, 0.0, 0.0, 0.0) if annotate_missing else MISSING_COLOUR)
    width = min(2.0 + 0.42 * k, 9.0) * len(panels) + 1.2
    height = min(1.6 + 0.36 * n, 10.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(width, 18.0), height), squeeze=False,
                             layout="constrained")
    im = None
    for ax, (title, _), values in zip(axes[0], panels, arrays):
        if annotate_missing and not np.isfinite(values).all():
            ax.add_patch(plt.Rectangle((-0.5, -0.5), k, n, facecolor=MISSING_COLOUR, hatch="///",
                                       edgecolor="#9a9a9a", lw=0, zorder=-1))
        im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        if outline is not None and np.any(outline):
            from matplotlib.collections import PatchCollection

            boxes = [plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9)
                     for i, j in zip(*np.nonzero(np.asarray(outline, dtype=bool)))]
            ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor="#111111", lw=1.2,
                                              linestyle="--"))
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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the entries of ``x`` (n,), ties given their average rank (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(x, kind="stable")
    srt = x[order]
    new = np.ones(x.size, dtype=bool)
    new[1:] = srt[1:] != srt[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], x.size)
    ranks = np.empty(x.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return ranks


def _rank_counts(x: np.ndarray, bins: int) -> np.ndarray:
    """Per-chain histogram counts of the pooled ranks of draws x (chains, draws)."""
    ranks = _average_ranks(x.reshape(-1)).reshape(x.shape)
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
        A PNG image. Traces of chains longer than :data:`MAX_TRACE_POINTS` draws are
        thinned evenly (:func:`thin`); the rank plots use every draw.
    """
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(series), 2, figsize=(10.5, 1.25 * len(series) + 0.8), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": [2.2, 1]})
    for (label, x), (ax_t, ax_r) in zip(series, axes):
        x = np.asarray(x, dtype=float)
        n_chains = x.shape[0]
        at = thin(x.shape[1])
        for c in range(n_chains):
            ax_t.plot(at, x[c, at], lw=0.5, alpha=0.8, color=colours[c % len(colours)])
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


def thin(n_draws: int, limit: int = MAX_TRACE_POINTS) -> np.ndarray:
    """The draws a trace plot shows of a chain of ``n_draws``: all, or ``limit`` evenly spaced, (m,) ints."""
    if n_draws <= limit:
        return np.arange(n_draws)
    return np.unique(np.linspace(0, n_draws - 1, limit).round().astype(np.int64))


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


# ---------------------------------------------------------------------------
# figures that scale with the number of cells
# ---------------------------------------------------------------------------


def _binned_means(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, means) of ``y`` in ``bins`` bins of equal counts of ``x``; empty bins left out."""
    order = np.argsort(x, kind="stable")
    parts = np.array_split(order, min(bins, max(x.size, 1)))
    parts = [p for p in parts if p.size]
    return (np.array([float(np.mean(x[p])) for p in parts]), np.array([float(np.mean(y[p])) for p in parts]))


def residuals_png(fitted: np.ndarray, observed: np.ndarray, *, gridsize: int = 60, bins: int = 30,
                  value_label: str = "value") -> bytes:
    """Observed against fitted, and residual against fitted, as hexagonal bins of cells.

    Parameters
    ----------
    fitted, observed : arrays (n,)
        The fitted mean and the observed value of each observed cell.
    gridsize : int
        Hexagons across each panel.
    bins : int
        Bins of equal counts of the fitted value over which the mean residual is drawn (a line).
    value_label : str

    Returns
    -------
    bytes
        A PNG image (two panels, a colour bar of the number of cells, log scale); its cost
        is the same for a hundred cells or a million.
    """
    plt = _pyplot()
    fitted = np.asarray(fitted, dtype=float)
    observed = np.asarray(observed, dtype=float)
    ok = np.isfinite(fitted) & np.isfinite(observed)
    fitted, observed = fitted[ok], observed[ok]
    resid = observed - fitted
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), layout="constrained")
    ax_o, ax_r = axes
    hb = ax_o.hexbin(fitted, observed, gridsize=gridsize, bins="log", mincnt=1, cmap="viridis", linewidths=0)
    if fitted.size:
        lo, hi = float(min(fitted.min(), observed.min())), float(max(fitted.max(), observed.max()))
        ax_o.plot([lo, hi], [lo, hi], color="#cc0000", lw=1, ls="--", label="observed = fitted")
        ax_o.legend(loc="upper left", fontsize=8, frameon=False)
    ax_o.set_xlabel(f"fitted mean ({value_label})")
    ax_o.set_ylabel(f"observed ({value_label})")
    ax_o.set_title("observed against fitted", fontsize=11)
    ax_r.hexbin(fitted, resid, gridsize=gridsize, bins="log", mincnt=1, cmap="viridis", linewidths=0)
    ax_r.axhline(0.0, color="#333333", lw=0.8)
    if fitted.size:
        centres, means = _binned_means(fitted, resid, bins)
        ax_r.plot(centres, means, color="#cc0000", lw=1.6, marker="o", ms=3,
                  label=f"mean residual in {centres.size} bins of the fitted mean")
        ax_r.legend(loc="upper left", fontsize=8, frameon=False)
    ax_r.set_xlabel(f"fitted mean ({value_label})")
    ax_r.set_ylabel("residual (observed - fitted)")
    ax_r.set_title("residual against fitted", fontsize=11)
    fig.colorbar(hb, ax=list(axes), label="cells (log scale)", shrink=0.9)
    return png_bytes(fig)


def histograms_png(panels: Sequence[dict]) -> bytes:
    """Histograms side by side, one panel each, several series overlaid in a panel.

    Parameters
    ----------
    panels : sequence of dict
        Each with ``title``, ``series`` (a sequence of ``(label, values (m,))``), optionally
        ``xlabel``, ``bins`` (default 40), ``range`` ((low, high)), ``density`` (bool: each
        series scaled to area 1, default when there are several series), ``logy`` (bool)
        and ``ref`` (a number drawn as a dashed vertical line).

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    colours = ["#3465a4", "#cc7a00", "#4e9a06", "#75507b"]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.2 * len(panels), 16.0), 3.4), squeeze=False,
                             layout="constrained")
    for ax, p in zip(axes[0], panels):
        series = [(label, np.asarray(v, dtype=float)) for label, v in p["series"]]
        series = [(label, v[np.isfinite(v)]) for label, v in series]
        values = [v for _, v in series if v.size]
        density = p.get("density", len(series) > 1)
        if values:
            low, high = p.get("range") or (min(float(v.min()) for v in values), max(float(v.max()) for v in values))
            if low == high:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, int(p.get("bins", 40)) + 1)
            for k, (label, v) in enumerate(series):
                if v.size:
                    ax.hist(v, bins=edges, density=density, histtype="stepfilled" if len(series) == 1 else "step",
                            color=colours[k % len(colours)], alpha=0.8 if len(series) == 1 else 1.0, lw=1.6,
                            label=f"{label} ({v.size:,})")
        if p.get("ref") is not None:
            ax.axvline(p["ref"], color="#888888", ls="--", lw=1)
        if p.get("logy"):
            ax.set_yscale("log")
        ax.set_title(p["title"], fontsize=11)
        ax.set_xlabel(p.get("xlabel", ""))
        ax.set_ylabel("density" if density else "count")
        if values:
            ax.legend(loc="best", fontsize=7, frameon=False)
    return png_bytes(fig)


def block_means(ii: np.ndarray, jj: np.ndarray, values: np.ndarray | None, shape: tuple[int, int], *,
                bins: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of cell values over blocks of rows and columns (or the share of cells observed).

    Parameters
    ----------
    ii, jj : int arrays (n,)
        Row and column of each observed cell.
    values : array (n,), optional
        The cells' values; None: the share of each block's cells that are observed (give
        each (row, column) pair once).
    shape : (N, K)
        The table's rows and columns.
    bins : int
        The most blocks along each side (fewer when the side has fewer levels).

    Returns
    -------
    (means, row_edges, col_edges) : array (B_r, B_c), arrays (B_r + 1,), (B_c + 1,)
        NaN where a block has no observed cell (for ``values``); edges in row and column
        positions (block b covers positions ``edges[b]`` to ``edges[b + 1]``).
    """
    N, K = (int(v) for v in shape)
    row_edges = np.linspace(0, N, min(bins, N) + 1)
    col_edges = np.linspace(0, K, min(bins, K) + 1)
    bi = np.clip(np.searchsorted(row_edges, ii, side="right") - 1, 0, row_edges.size - 2)
    bj = np.clip(np.searchsorted(col_edges, jj, side="right") - 1, 0, col_edges.size - 2)
    shape_b = (row_edges.size - 1, col_edges.size - 1)
    flat = bi * shape_b[1] + bj
    count = np.bincount(flat, minlength=shape_b[0] * shape_b[1]).reshape(shape_b).astype(float)
    if values is None:
        cells = np.outer(np.diff(np.ceil(row_edges)), np.diff(np.ceil(col_edges)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cells > 0, count / cells, np.nan), row_edges, col_edges
    total = np.bincount(flat, weights=np.asarray(values, dtype=float), minlength=count.size).reshape(shape_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), row_edges, col_edges


def binned_map_png(panels: Sequence[tuple[str, np.ndarray]], row_edges: np.ndarray, col_edges: np.ndarray, *,
                   diverging: bool = False, value_label: str = "value", xlabel: str = "col",
                   ylabel: str = "row") -> bytes:
    """Block averages of a large table side by side (see :func:`block_means`), empty blocks grey.

    Parameters
    ----------
    panels : sequence of (title, array (B_r, B_c))
    row_edges, col_edges : arrays (B_r + 1,), (B_c + 1,)
        The blocks' edges in row and column positions (the axes' scales).
    diverging : bool
        A blue-white-red scale centred on 0.
    value_label, xlabel, ylabel : str

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    arrays = [np.asarray(a, dtype=float) for _, a in panels]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays])
    if finite.size == 0:
        vmin, vmax = -1.0, 1.0
    elif diverging:
        m = float(np.quantile(np.abs(finite), 0.99)) or 1.0
        vmin, vmax = -m, m
    else:
        vmin, vmax = float(finite.min()), float(finite.max())
        if vmin == vmax:
            vmin, vmax = vmin - 1.0, vmax + 1.0
    cmap = plt.get_cmap("RdBu_r" if diverging else "viridis").with_extremes(bad=MISSING_COLOUR)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(6.2 * len(panels) + 1.2, 16.0), 5.2), squeeze=False,
                             layout="constrained")
    im = None
    extent = (float(col_edges[0]) + 0.5, float(col_edges[-1]) + 0.5, float(row_edges[-1]) + 0.5,
              float(row_edges[0]) + 0.5)
    for ax, (title, _), values in zip(axes[0], panels, arrays):
        im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest", extent=extent)
        ax.set_xlabel(f"{xlabel} (position in the table)")
        ax.set_ylabel(f"{ylabel} (position in the table)")
        ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=list(axes[0]), label=value_label, shrink=0.9)
    return png_bytes(fig)
