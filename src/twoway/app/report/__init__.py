"""One self-contained HTML report of one or more fits of a table.

:func:`write_report` writes a single HTML file: inline CSS, every figure a
base64 PNG data URI, no scripts and no network references, so it can be
mailed, archived or opened offline. It shows, with a section (and an ``id``)
each:

=================  =========================================================
id                 content
=================  =========================================================
``overview``       what was fitted: table size, models, sampling verdict
``data``           the table as a heatmap, missing cells hatched
``comparison``     with several fits: PSIS-LOO comparison and the preferred model
``model``          model description, priors in force, sampler settings
``coefficients``   with covariates in the mean: the formula and its coefficients
``fitted``         fitted means (intercept + row effect + column effect + x'coef) and
                   residuals (observed minus fitted, averaged over replicates)
``predictions``    the observed table beside every cell's predicted mean (missing
                   cells predicted from the observed ones, outlined)
``variance``       variance decomposition: components, shares, intraclass correlations
``effects``        forest plots of row and column effects (mean, 94% interval)
``scales``         forest plots of row_sd, col_sd and the other scales
``covariance``     posterior mean of row/column covariance or correlation
                   matrices, or a note when the model has none
``traces``         trace and rank plots of the main parameters
``diagnostics``    R-hat, ESS, divergences and the plain warnings
``checks``         posterior predictive checks
``recovery``       with ``truth``: true values against the posterior
=================  =========================================================

With several fits the per-fit sections repeat for each, their ids suffixed
``-2``, ``-3``, ... after the first fit's.

A large table (more than :data:`LARGE_CELLS` cells) gets figures that stay
readable and cheap whatever its size, each said in its caption: the data as
histograms and a map of where the observed cells are; fitted means and residuals
at the observed cells only, as hexagonal bins and block averages; predictions of
a sample of cells (never the whole grid); the posterior predictive checks as
histograms of their p-values, with the most extreme statistics listed. Forest
plots of more than :data:`MAX_FOREST_LEVELS` levels show the
:data:`FOREST_EXTREMES` largest and smallest posterior means; trace plots show
at most :data:`MAX_TRACE_SERIES` series, long chains thinned.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import warnings
from pathlib import Path
from string import Template
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from twoway._version import __version__
from twoway.errors import ConvergenceWarning, DataError, FitError, TwowayError
from twoway.fit import Fit
from twoway.results.contrasts import COVARIATE, SIDES, contrast_name, contrasts as _fit_contrasts, parse_contrast
from twoway.results.covariates import coefficient_table, covariate_grid, fit_design, flat_coef, mean_formula
from twoway.results.recovery import recovery
from twoway.results.stats import hdi
from twoway.results.summary import ESS_LIMIT, RHAT_LIMIT
from twoway.table.io.outputs import write_text_atomic

# Deferred imports: twoway.app.report.figures, twoway.results.compare, twoway.results.ppc (they import
# pandas or xarray at their top) are imported inside the functions that use them, so importing this module
# stays light.

__all__ = ["write_report", "render_report", "SECTION_IDS", "is_large", "report_work"]

#: Section ids, in page order (per-fit ones repeat with a suffix for later fits).
SECTION_IDS = ("overview", "data", "comparison", "model", "coefficients", "fitted", "predictions", "variance",
               "effects", "contrasts", "scales", "covariance", "traces", "diagnostics", "checks", "recovery")
_TITLES = {
    "overview": "Overview", "data": "The data", "comparison": "Model comparison", "model": "Model",
    "fitted": "Fitted means and residuals", "predictions": "Predicted table",
    "variance": "Variance decomposition", "effects": "Row and column effects", "scales": "Scales",
    "covariance": "Row and column covariance", "traces": "Traces and rank plots",
    "diagnostics": "Sampling diagnostics", "checks": "Posterior predictive checks",
    "recovery": "Recovery of the true values", "contrasts": "Contrasts", "coefficients": "Covariates",
}
INTERVAL = 0.94
MAX_TRACE_SERIES = 10
PPC_DRAWS = 400
#: A table with more cells than this (rows x columns x replicates) gets the figures that scale.
LARGE_CELLS = 10_000
#: A forest plot with more levels than this shows the largest and smallest ...
MAX_FOREST_LEVELS = 80
#: ... this many of each, by posterior mean.
FOREST_EXTREMES = 15
#: Cells without an observation (and as many observed ones) predicted in a large table's report.
PREDICTION_SAMPLE = 1_000
#: Statistics listed by a large table's predictive checks (the most extreme p-values).
EXTREME_STATISTICS = 20
_COV_NAMES = ("row_cov", "col_cov", "row_corr", "col_corr")


# ---------------------------------------------------------------------------
# small HTML helpers
# ---------------------------------------------------------------------------


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _note(text: str, kind: str = "") -> str:
    return f'<div class="note {kind}">{_e(text)}</div>'


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if not math.isfinite(x):
            return "&ndash;"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return _e(v)


def _table(df: pd.DataFrame, *, row_class: Callable[[Any, pd.Series], str] | None = None,
           digits: int = 3, index_name: str | None = None, scroll: bool = False) -> str:
    """A DataFrame as an HTML table; ``row_class(index, row)`` may mark rows."""
    head = [index_name if index_name is not None else (df.index.name or "")] + [str(c) for c in df.columns]
    out = ['<table class="data"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for (idx, row), values in zip(df.iterrows(), df.itertuples(index=False, name=None)):
        cls = row_class(idx, row) if row_class else ""
        cls_attr = f' class="{cls}"' if cls else ""
        cells = "".join(f"<td>{_fmt(v, digits)}</td>" for v in values)  # itertuples keeps each column's type
        out.append(f"<tr{cls_attr}><td>{_e(idx)}</td>{cells}</tr>")
    out.append("</tbody></table>")
    text = "".join(out)
    return f'<div class="scroll">{text}</div>' if scroll else text


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{v}</div></div>' for k, v in items) + "</div>"


def _section(sid: str, title: str, body: str, lede: str | None = None) -> str:
    lede_html = f'<p class="lede">{_e(lede)}</p>' if lede else ""
    return f'<section id="{_e(sid)}">\n<h2>{_e(title)}</h2>\n{lede_html}{body}\n</section>'


# ---------------------------------------------------------------------------
# numbers from a fit
# ---------------------------------------------------------------------------


def _draws(da) -> np.ndarray:
    """(S, ...) draws of a posterior variable, chains concatenated."""
    x = np.asarray(da.values, dtype=float)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _interval(da) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _draws(da)
    interval = hdi(x[None], INTERVAL)
    low, high = interval[..., 0], interval[..., 1]
    return np.atleast_1d(x.mean(axis=0)), np.atleast_1d(low), np.atleast_1d(high)


def _level_labels(da) -> list[str]:
    dims = [d for d in da.dims if d not in ("chain", "draw")]
    if not dims:
        return [da.name]
    return [str(v) for v in da[dims[0]].values]


def _truth_vector(truth: Mapping[str, Any] | None, name: str, labels: Sequence[str]) -> np.ndarray | None:
    """True values of ``name`` by label, or None when the truth does not have them."""
    if not truth or name not in truth:
        return None
    value = truth[name]
    try:
        if isinstance(value, Mapping):
            return np.array([float(value[lab]) for lab in labels])
        arr = np.atleast_1d(np.asarray(value, dtype=float))
        return arr if arr.size == len(labels) else None
    except (KeyError, TypeError, ValueError):
        return None


def _fitted_means(fit) -> np.ndarray:
    """(R, N, K) posterior mean of intercept + row_effect[i] + col_effect[j] (+ x[r,i,j]' coef).

    With covariates, NaN at the cells without an observation whose covariate values are unknown
    (a term that varies by cell).
    """
    post = fit.posterior
    data = fit.data
    mu = np.zeros((data.n_rows, data.n_cols))
    if "intercept" in post:
        mu += float(post["intercept"].mean())
    if "row_effect" in post:
        mu += post["row_effect"].mean(("chain", "draw")).values[:, None]
    if "col_effect" in post:
        mu += post["col_effect"].mean(("chain", "draw")).values[None, :]
    mu = np.broadcast_to(mu, data.values.shape).copy()
    design = fit_design(fit)
    coef = None if design is None else flat_coef(fit, design)
    if coef is not None:
        X, known = covariate_grid(design, data)
        mu = np.where(known, mu + X @ coef.mean(axis=0), np.nan)
    return mu


def _replicate_mean(values: np.ndarray) -> np.ndarray:
    """(N, K) mean over replicates of an (R, N, K) array, NaN where every replicate is missing."""
    present = np.isfinite(values)
    count = present.sum(axis=0)
    total = np.where(present, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def is_large(data) -> bool:
    """Whether a table gets the report's figures that scale (more than :data:`LARGE_CELLS` cells)."""
    return int(data.n_cells) > LARGE_CELLS


def report_work(fit) -> dict[str, Any]:
    """What the report of ``fit`` computes, before it starts (for an estimate of its size).

    Returns
    -------
    dict
        ``large`` (bool: the figures that scale, see :func:`is_large`); ``ppc_draws`` (the
        replicated tables of the predictive checks) and ``ppc_correlations`` (whether they
        check the row and column correlations, see
        :func:`twoway.results.ppc.correlations_affordable`); ``prediction_cells`` (cells
        predicted: the whole grid of a small table, a sample of a large one's, 0 when none)
        and ``prediction_draws``.
    """
    from twoway.results.ppc import correlations_affordable

    data = fit.data
    S = int(fit.posterior.sizes["chain"]) * int(fit.posterior.sizes["draw"])
    large = is_large(data)
    if not large:
        cells = int(data.n_cells)
    elif fit_design(fit) is not None:
        cells = 0
    else:
        cells = min(PREDICTION_SAMPLE, int(data.n_cells - data.n_observed)) + min(PREDICTION_SAMPLE,
                                                                                  int(data.n_observed))
    ppc_draws = min(PPC_DRAWS, S)
    return {"large": large, "ppc_draws": ppc_draws,
            "ppc_correlations": correlations_affordable(data.values.shape, ppc_draws + 1),
            "prediction_cells": cells, "prediction_draws": min(PREDICTION_DRAWS, S)}


def _fitted_at_observed(fit) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(fitted (n,), observed (n,), (rr, ii, jj)) at the observed cells only: the posterior mean of
    intercept + row_effect[i] + col_effect[j] (+ x' coef), in the order of ``data.observed_index()``."""
    post = fit.posterior
    data = fit.data
    rr, ii, jj = data.observed_index()
    mu = np.zeros(ii.size)
    if "intercept" in post:
        mu += float(post["intercept"].mean())
    if "row_effect" in post:
        mu += post["row_effect"].mean(("chain", "draw")).values[ii]
    if "col_effect" in post:
        mu += post["col_effect"].mean(("chain", "draw")).values[jj]
    design = fit_design(fit)
    coef = None if design is None else flat_coef(fit, design)
    if coef is not None:   # the design's rows are the observed cells, in this order
        mu += np.asarray(design.X, dtype=float) @ coef.mean(axis=0)
    return mu, data.values[rr, ii, jj], (rr, ii, jj)


def _summary(fit, ci_prob: float = INTERVAL, var_names: Sequence[str] | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit.summary(ci_prob=ci_prob, var_names=list(var_names) if var_names else None)


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------


def _data_section(sid: str, data, *, title_suffix: str = "") -> str:
    if is_large(data):
        return _large_data_section(sid, data, title_suffix=title_suffix)
    from twoway.app.report.figures import heatmap_png

    values = data.values
    r = data.n_replicates
    if r <= 3:
        panels = [(f"replicate {lab}" if r > 1 else "observed values", values[k])
                  for k, lab in enumerate(data.replicate_labels)]
        caption = "Each cell's observed value; hatched grey cells are missing."
    else:
        panels = [(f"mean of {r} replicate tables", _replicate_mean(values))]
        caption = (f"The mean over the {r} replicate tables of each cell; hatched grey cells are "
                   "missing in every replicate.")
    names = data.names
    png = heatmap_png(panels, data.row_labels, data.col_labels, value_label=names.get("value") or "value",
                      xlabel=names.get("col") or "col", ylabel=names.get("row") or "row")
    obs = data.observed_values()
    n_missing = data.n_cells - data.n_observed
    items = [("rows x columns", f"{data.n_rows} &times; {data.n_cols}"),
             ("replicate tables", str(r)),
             ("observed cells", f"{data.n_observed} of {data.n_cells}"),
             ("mean / sd", f"{np.mean(obs):.3g} / {np.std(obs, ddof=1) if obs.size > 1 else 0:.3g}")]
    if data.has_se:
        se = data.se_or_zero()[data.mask]
        items.append(("known se", f"{se.min():.3g} to {se.max():.3g}"))
    body = _cards(items) + _img(png, "heatmap of the observed table", caption)
    if n_missing:
        body += _note(f"{n_missing} cell(s) are missing; they are left out of the likelihood, not imputed.")
    return _section(sid, _TITLES["data"] + title_suffix, body)


def _data_cards(data) -> list[tuple[str, str]]:
    obs = data.observed_values()
    items = [("rows x columns", f"{data.n_rows:,} &times; {data.n_cols:,}"),
             ("replicate tables", str(data.n_replicates)),
             ("observed cells", f"{data.n_observed:,} of {data.n_cells:,}"),
             ("mean / sd", f"{np.mean(obs):.3g} / {np.std(obs, ddof=1) if obs.size > 1 else 0:.3g}")]
    if data.has_se:
        se = data.se_or_zero()[data.mask]
        items.append(("known se", f"{se.min():.3g} to {se.max():.3g}"))
    return items


def _large_data_section(sid: str, data, *, title_suffix: str = "") -> str:
    """The data of a large table: histograms of the values and of the cells per row and column, and a
    map of the share of cells observed by blocks of rows and columns (no cell drawn one by one)."""
    from twoway.app.report.figures import binned_map_png, block_means, histograms_png

    rr, ii, jj = data.observed_index()
    obs = data.values[rr, ii, jj]
    names = data.names
    row_word, col_word = names.get("row") or "row", names.get("col") or "col"
    per_row = np.bincount(ii, minlength=data.n_rows)
    per_col = np.bincount(jj, minlength=data.n_cols)
    png = histograms_png([
        {"title": "observed values", "series": [("cells", obs)], "xlabel": names.get("value") or "value"},
        {"title": f"observed cells per {row_word}", "series": [(f"{row_word}s", per_row)], "xlabel": "cells",
         "logy": True},
        {"title": f"observed cells per {col_word}", "series": [(f"{col_word}s", per_col)], "xlabel": "cells",
         "logy": True}])
    cells = np.unique(ii * data.n_cols + jj)
    share, row_edges, col_edges = block_means(cells // data.n_cols, cells % data.n_cols, None,
                                              (data.n_rows, data.n_cols))
    pct = 100.0 * data.n_observed / data.n_cells
    occupancy = binned_map_png([("share of cells observed", share)], row_edges, col_edges,
                               value_label="share observed", xlabel=col_word, ylabel=row_word)
    body = (_cards(_data_cards(data))
            + _img(png, "histograms of the observed values and of the observed cells per row and per column",
                   f"Left: the {data.n_observed:,} observed values. Middle and right: how many cells each "
                   f"{row_word} and each {col_word} has observed (log scale of counts).")
            + _img(occupancy, "map of the share of cells observed, by blocks of rows and columns",
                   f"The table is too large to draw cell by cell ({data.n_rows:,} x {data.n_cols:,}): each block "
                   f"of about {data.n_rows / (row_edges.size - 1):.0f} {row_word}s x "
                   f"{data.n_cols / (col_edges.size - 1):.0f} {col_word}s shows the share of its cells observed, "
                   "in the table's order."))
    body += _note(f"{data.n_cells - data.n_observed:,} of {data.n_cells:,} cells ({100 - pct:.1f}%) are missing; "
                  "they are left out of the likelihood, not imputed.")
    return _section(sid, _TITLES["data"] + title_suffix, body)


def _model_section(sid: str, fit, name: str) -> str:
    spec = fit.model
    info = fit.info
    priors = fit.priors
    rows = "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(p)}</code></dd>" for k, p in priors.items())
    sampler = _e(fit.description.describe(info))
    timing = (f"compiled in {float(info.get('compile_seconds', float('nan'))):.1f} s, "
              f"sampled in {float(info.get('sampling_seconds', float('nan'))):.1f} s")
    design = fit_design(fit)
    formula = ("y[r,i,j] = intercept + row_effect[i] + col_effect[j] + e[r,i,j]" if design is None
               else mean_formula(spec, design))
    body = (f"<p>{_e(spec.describe())}</p>"
            f"<pre>{_e(formula)}</pre>"
            f'<dl class="kv"><dt>likelihood</dt><dd>{_e(info.get("likelihood_path"))} (exact)</dd>'
            f"<dt>sampler</dt><dd>{sampler}</dd><dt>time</dt><dd>{timing}</dd></dl>"
            f'<details><summary>priors in force ({len(priors)})</summary><dl class="kv">{rows}</dl></details>')
    return _section(sid, f"{_TITLES['model']}: {name}", body)


def _coefficients_section(sid: str, fit, ci_prob: float) -> str:
    """The covariates' formula, where each term lives and the coefficients' table."""
    design = fit_design(fit)
    table = None if design is None else coefficient_table(fit, ci_prob=ci_prob, design=design)
    if table is None:
        return _section(sid, _TITLES["coefficients"], _note("This model has no covariates in the mean."))
    pct = f"{100 * ci_prob:g}%"
    lo, hi = table.columns[3], table.columns[4]     # level, mean, sd, hdi_L%, hdi_U%, ...
    coef = flat_coef(fit, design)
    terms = list(design.terms)
    positive = [float((coef[:, terms.index(t)] > 0).mean()) if t in terms else float("nan") for t in table.index]
    shown = pd.DataFrame({"level": table["level"], "mean": table["mean"], "sd": table["sd"],
                          f"{pct} low": table[lo], f"{pct} high": table[hi], "P(coef > 0)": positive,
                          "ess_bulk": [round(v) if math.isfinite(v) else v for v in table["ess_bulk"]],
                          "r_hat": table["r_hat"]}, index=table.index)
    if "prior_sd" in table:
        shown["prior sd"] = table["prior_sd"]
    body = (f"<pre>{_e(mean_formula(fit.model, design))}</pre>"
            + _table(shown, digits=4, index_name="term",
                     row_class=lambda i, r: "flag" if (math.isfinite(r["r_hat"]) and r["r_hat"] > RHAT_LIMIT)
                     or r["ess_bulk"] < ESS_LIMIT else "")
            + _note("Each coefficient is the change in the mean per unit of its term, the other terms held fixed; "
                    "a factor's term C(g)[T.b] is level b's difference from the reference level. level: what the "
                    "term is constant within (row, column) or cell when it varies from cell to cell. prior sd: the "
                    "coef prior's sigma over the term's sd (the prior is per one sd of each term)."))
    return _section(sid, _TITLES["coefficients"], body,
                    lede=f"The covariates in the mean, formula '{design.formula}': posterior mean, sd and "
                         f"{pct} highest-density interval of each coefficient.")


def _large_fitted_section(sid: str, fit) -> str:
    """Fitted means and residuals of a large table, at its observed cells only: hexagonal bins of
    observed and residual against fitted, and the residuals averaged over blocks of rows and columns."""
    from twoway.app.report.figures import binned_map_png, block_means, residuals_png

    data = fit.data
    fitted, observed, (rr, ii, jj) = _fitted_at_observed(fit)
    resid = observed - fitted
    names = data.names
    row_word, col_word = names.get("row") or "row", names.get("col") or "col"
    covariates = fit_design(fit) is not None
    what = ("intercept + row_effect[i] + col_effect[j] + x[r,i,j]' coef" if covariates
            else "intercept + row_effect[i] + col_effect[j]")
    png = residuals_png(fitted, observed, value_label=names.get("value") or "value")
    blocks, row_edges, col_edges = block_means(ii, jj, resid, (data.n_rows, data.n_cols))
    png_map = binned_map_png([("mean residual by block", blocks)], row_edges, col_edges, diverging=True,
                             value_label="mean residual", xlabel=col_word, ylabel=row_word)
    rms = float(np.sqrt(np.mean(resid ** 2))) if resid.size else float("nan")
    body = (_img(png, "hexagonal-bin plots of observed and residual against fitted",
                 f"The {resid.size:,} observed cells, binned in hexagons (colour: how many cells, log scale). Left: "
                 f"observed against the posterior mean of {what}; right: the residual (observed - fitted) and its "
                 "mean in bins of the fitted value (red): a trend or a funnel points at a mean or a variance the "
                 "model leaves out.")
            + _img(png_map, "map of the mean residual by blocks of rows and columns",
                   f"The residuals averaged over blocks of {row_word}s and {col_word}s in the table's order "
                   "(grey: no observed cell): blocks or gradients point at structure the model leaves out. The "
                   "table is too large to draw cell by cell.")
            + _note(f"Root mean square residual: {rms:.3g}."))
    return _section(sid, _TITLES["fitted"], body)


def _fitted_section(sid: str, fit) -> str:
    if is_large(fit.data):
        return _large_fitted_section(sid, fit)
    from twoway.app.report.figures import heatmap_png

    data = fit.data
    cells = _fitted_means(fit)                     # (R, N, K)
    fitted = _replicate_mean(cells)
    observed_mean = _replicate_mean(data.values)
    resid = _replicate_mean(data.values - cells)
    finite = np.concatenate([observed_mean[np.isfinite(observed_mean)], fitted[np.isfinite(fitted)]])
    limits = (float(finite.min()), float(finite.max())) if finite.size else None
    if limits and limits[0] == limits[1]:
        limits = (limits[0] - 1, limits[1] + 1)
    names = data.names
    kw = dict(xlabel=names.get("col") or "col", ylabel=names.get("row") or "row")
    covariates = fit_design(fit) is not None
    png_fit = heatmap_png([("fitted mean", fitted)], data.row_labels, data.col_labels, limits=limits,
                          value_label="posterior mean", annotate_missing=False, **kw)
    png_res = heatmap_png([("residual (observed - fitted)", resid)], data.row_labels, data.col_labels,
                          diverging=True, value_label="residual", **kw)
    rms = float(np.sqrt(np.nanmean(resid ** 2))) if np.isfinite(resid).any() else float("nan")
    what = ("intercept + row_effect[i] + col_effect[j] + x[r,i,j]' coef (averaged over replicate tables; blank "
            "where a cell without data has no covariate values)" if covariates
            else "intercept + row_effect[i] + col_effect[j]")
    body = (_img(png_fit, "heatmap of fitted means",
                 f"Posterior mean of {what}, on the data's colour scale.")
            + _img(png_res, "heatmap of residuals",
                   "Observed minus fitted, averaged over replicate tables: blue below the fit, red above; "
                   "hatched cells are missing. Blocks or gradients point at structure the model leaves out.")
            + _note(f"Root mean square residual: {rms:.3g}."))
    return _section(sid, _TITLES["fitted"], body)


PREDICTION_DRAWS = 500


def _prediction_sample(data, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rr, ii, jj, observed) of up to ``size`` cells without an observation and as many observed ones,
    chosen at random (seeded) without building the grid."""
    rng = np.random.default_rng(seed)
    R, N, K = data.values.shape
    obs = np.ravel_multi_index(data.observed_index(), (R, N, K))
    n_missing = R * N * K - obs.size
    want = min(size, n_missing)
    if 2 * n_missing > R * N * K:    # mostly missing: draw cells at random, keep those without an observation
        missing = np.zeros(0, np.int64)
        while missing.size < want:
            cand = rng.integers(0, R * N * K, size=2 * (want - missing.size) + 16)
            missing = np.union1d(missing, np.setdiff1d(cand, obs))
    else:
        missing = np.setdiff1d(np.arange(R * N * K), obs)
    missing = rng.permutation(missing)[:want]
    seen = rng.choice(obs, size=min(size, obs.size), replace=False)
    flat = np.concatenate([np.sort(missing), np.sort(seen)])
    rr, ii, jj = np.unravel_index(flat, (R, N, K))
    return rr, ii, jj, np.concatenate([np.zeros(missing.size, bool), np.ones(seen.size, bool)])


def _large_predictions_section(sid: str, fit, ci_prob: float) -> str:
    """Predictions of a sample of cells of a large table (never the whole grid)."""
    from twoway.app.report.figures import histograms_png

    data = fit.data
    R, N, K = data.values.shape
    n_missing = data.n_cells - data.n_observed
    how = ("Write predictions with 'twoway predict FIT --out cells.csv' ('twoway predict --help' says which cells "
           "it writes by default, and how to choose them).")
    if fit_design(fit) is not None:
        return _section(sid, _TITLES["predictions"], _note(
            f"The table has {data.n_cells:,} cells, {n_missing:,} of them without an observation: too many to "
            "predict for a report, and a model with covariates needs their values at each cell to predict. " + how))
    rr, ii, jj, seen = _prediction_sample(data, PREDICTION_SAMPLE)
    cells = pd.DataFrame({"row": np.asarray(data.row_labels, dtype=object)[ii],
                          "col": np.asarray(data.col_labels, dtype=object)[jj]})
    if R > 1:
        cells["replicate"] = np.asarray(data.replicate_labels, dtype=object)[rr]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = fit.predict(ci_prob=ci_prob, max_draws=PREDICTION_DRAWS, seed=0, at=cells)
    except (TwowayError, NotImplementedError) as exc:
        return _section(sid, _TITLES["predictions"], _note(
            f"The cells could not be predicted for this model ({exc or type(exc).__name__}). " + how, "warn"))
    width = (table["upper"] - table["lower"]).to_numpy(dtype=float)
    mean = table["mean"].to_numpy(dtype=float)
    pct = f"{100 * ci_prob:g}%"
    png = histograms_png([
        {"title": f"width of the {pct} intervals", "xlabel": "interval width",
         "series": [("cells without an observation", width[~seen]), ("observed cells", width[seen])]},
        {"title": "predicted means", "xlabel": data.names.get("value") or "value",
         "series": [("cells without an observation", mean[~seen]), ("observed cells", mean[seen])]}])
    body = _img(png, "histograms of the predicted means and interval widths of a sample of cells",
                f"{int((~seen).sum()):,} cells without an observation and {int(seen.sum()):,} observed cells, chosen "
                f"at random: the width of the {pct} interval of each cell's mean given the observed cells "
                "(left), and the predicted means (right).")
    body += _note(f"The table has {data.n_cells:,} cells, {n_missing:,} of them without an observation: too many "
                  "to predict or draw for a report, so a sample is shown. Mean interval width: "
                  f"{float(np.nanmean(width[~seen])) if (~seen).any() else float('nan'):.3g} without an "
                  f"observation, {float(np.nanmean(width[seen])) if seen.any() else float('nan'):.3g} observed. "
                  + how)
    if table.attrs.get("note"):
        body += _note(table.attrs["note"], "warn")
    return _section(sid, _TITLES["predictions"], body)


def _predictions_section(sid: str, fit, ci_prob: float) -> str:
    if is_large(fit.data):
        return _large_predictions_section(sid, fit, ci_prob)
    from twoway.app.report.figures import heatmap_png

    data = fit.data
    with warnings.catch_warnings():   # cells left out (no covariate values) are said in the note below
        warnings.simplefilter("ignore")
        table = fit.predict(ci_prob=ci_prob, max_draws=PREDICTION_DRAWS, seed=0)
    R, N, K = data.values.shape
    grid_mean, grid_width = np.full((R, N, K), np.nan), np.full((R, N, K), np.nan)
    row_at = {str(v): k for k, v in enumerate(data.row_labels)}
    col_at = {str(v): k for k, v in enumerate(data.col_labels)}
    rep_at = {str(v): k for k, v in enumerate(data.replicate_labels)}
    ii = np.array([row_at[str(v)] for v in table["row"]], dtype=np.int64)
    jj = np.array([col_at[str(v)] for v in table["col"]], dtype=np.int64)
    rr = (np.array([rep_at[str(v)] for v in table["replicate"]], dtype=np.int64) if "replicate" in table
          else np.zeros(len(table), np.int64))
    grid_mean[rr, ii, jj] = table["mean"].to_numpy()
    grid_width[rr, ii, jj] = (table["upper"] - table["lower"]).to_numpy()
    predicted = _replicate_mean(grid_mean)
    width = grid_width[np.isfinite(grid_width)]
    observed = _replicate_mean(data.values)
    missing = ~data.mask.any(axis=0)
    finite = np.concatenate([observed[np.isfinite(observed)], predicted[np.isfinite(predicted)]])
    limits = (float(finite.min()), float(finite.max())) if finite.size else None
    if limits and limits[0] == limits[1]:
        limits = (limits[0] - 1, limits[1] + 1)
    names = data.names
    kw = dict(xlabel=names.get("col") or "col", ylabel=names.get("row") or "row")
    png = heatmap_png([("observed", observed), ("predicted mean", predicted)], data.row_labels,
                      data.col_labels, limits=limits, value_label="value", outline=missing, **kw)
    n_missing = int((table["kind"] == "predicted").sum())
    body = _img(png, "heatmaps of the observed and the predicted table",
                "Left: the observed table (hatched: missing). Right: each cell's posterior mean given the "
                "observed cells, on the same colour scale; dashed outlines mark cells with no observation, "
                "predicted from the others (exactly, under correlated residuals too).")
    body += _note(f"{n_missing} cell(s) predicted; mean width of the {100 * ci_prob:g}% intervals of the cell "
                  f"means: {float(np.mean(width)) if width.size else float('nan'):.3g}. Write every cell with "
                  "'twoway predict FIT --out cells.csv'.")
    if table.attrs.get("note"):
        body += _note(table.attrs["note"], "warn")
    return _section(sid, _TITLES["predictions"], body)


def _variance_section(sid: str, fit, summary) -> str:
    table = summary.decomposition
    if table is None:
        return _section(sid, _TITLES["variance"], _note("No variance decomposition for this fit."))
    body = (_table(table, digits=3)
            + "".join(_note(n) for n in summary.decomposition_notes)
            + _note("Heteroscedastic models give each cell its own variance: the components and the total "
                    "are averages over the observed cells."))
    return _section(sid, _TITLES["variance"], body,
                    lede="How much of a cell's variance each component carries, draw by draw.")


def _forest_panel(post, name: str, title: str, truth, *, ref=None) -> dict | None:
    """A forest panel of ``post[name]``: every level, or with more than :data:`MAX_FOREST_LEVELS` levels
    the :data:`FOREST_EXTREMES` largest and smallest posterior means (largest at the top)."""
    if name not in post:
        return None
    da = post[name]
    labels = _level_labels(da)
    truth_all = _truth_vector(truth, name, labels)
    dims = [d for d in da.dims if d not in ("chain", "draw")]
    if len(dims) == 1 and len(labels) > MAX_FOREST_LEVELS:
        order = np.argsort(da.mean(("chain", "draw")).values, kind="stable")
        pick = np.concatenate([order[-FOREST_EXTREMES:][::-1], order[:FOREST_EXTREMES][::-1]])
        title = f"{title}: the {FOREST_EXTREMES} largest and {FOREST_EXTREMES} smallest of {len(labels):,}"
        da = da.isel({dims[0]: pick})
        labels = [labels[k] for k in pick]
        truth_all = None if truth_all is None else truth_all[pick]
    mean, low, high = _interval(da)
    return {"title": title, "labels": labels, "mean": mean, "low": low, "high": high,
            "truth": truth_all, "ref": ref}


def default_contrasts(fit) -> list[tuple[str, str]]:
    """The contrasts a report shows when none are asked for.

    For a table shaped like a network meta-analysis (known standard errors and fixed row
    effects, as in the ``common-effect`` preset: rows are studies, columns treatments), each
    column against the first column; otherwise none.

    Parameters
    ----------
    fit : Fit

    Returns
    -------
    list of (str, str)
        ``(side, reference label)`` pairs.
    """
    data, spec = fit.data, fit.model
    if data.has_se and spec.row_effect == "fixed" and spec.col_effect != "none" and len(data.col_labels) > 1:
        return [("col", str(data.col_labels[0]))]
    return []


def _check_contrasts(contrasts, data, fit=None) -> list[tuple[str, str]]:
    """The asked-for contrasts as ``(side, label)`` pairs, each once; a label not in the table is a FitError.

    A factor covariate's contrast (``covariate:g``) is checked against ``fit``'s design.
    """
    pairs = list(dict.fromkeys(parse_contrast(c) for c in contrasts))
    for side, ref in pairs:
        if side.startswith(COVARIATE):
            if fit is not None:
                _check_factor(fit, side[len(COVARIATE):], ref)
            continue
        labels = [str(v) for v in (data.row_labels if side == "row" else data.col_labels)]
        if ref not in labels:
            shown = ", ".join(labels[:6]) + (f" and {len(labels) - 6} more" if len(labels) > 6 else "")
            raise FitError(f"The contrast {side}={ref} names no {SIDES[side]} of the table ({shown}).")
    return pairs


def _check_factor(fit, variable: str, ref: str) -> None:
    """FitError unless ``variable`` is a factor covariate of ``fit`` with the level ``ref`` (any level when empty)."""
    design = fit_design(fit)
    factors = dict(getattr(design, "factors", None) or {})
    if variable not in factors:
        what = (f"its factor covariates are {', '.join(map(repr, factors))}" if factors else
                "it has no factor covariate" if design is not None else "it has no covariates")
        raise FitError(f"A contrast's side must be 'row' or 'col', or a factor covariate of the model ({what}); "
                       f"got {variable!r}.")
    levels = [str(v) for v in factors[variable].levels]
    if ref and ref not in levels:
        raise FitError(f"The contrast covariate:{variable}={ref} names no level of '{variable}' "
                       f"({', '.join(levels[:6])}{' ...' if len(levels) > 6 else ''}).")


def _contrasts_section(sid: str, fit, pairs: Sequence[tuple[str, str]], ci_prob: float, asked: bool) -> str:
    """Differences of row (column) means against reference levels, with intervals and P(difference > 0)."""
    pct = f"{100 * ci_prob:g}%"
    body = ""
    for side, ref in pairs:
        what = contrast_name(side)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if side.startswith(COVARIATE):
                    c = _fit_contrasts(fit, covariate=side[len(COVARIATE):], reference=ref or None, ci_prob=ci_prob)
                else:
                    c = fit.contrasts(**{side: ref}, ci_prob=ci_prob)
        except FitError as exc:
            body += _note(f"Contrasts against the {what} {ref!r}: {exc}", "warn")
            continue
        summary = c.summary
        lo, hi = summary.columns[2], summary.columns[3]  # hdi_L%, hdi_U%
        draws = np.asarray(c.draws.transpose(..., "contrast")).reshape(-1, summary.shape[0])
        positive = (draws > 0).mean(axis=0)
        table = pd.DataFrame({"difference": summary["mean"].to_numpy(), "sd": summary["sd"].to_numpy(),
                              f"{pct} low": summary[lo].to_numpy(), f"{pct} high": summary[hi].to_numpy(),
                              "P(difference > 0)": positive}, index=summary.index)
        head = (f"each level of the covariate {_e(side[len(COVARIATE):])} minus its level {_e(c.reference)} "
                "(a difference in the mean)" if side.startswith(COVARIATE)
                else f"each {what} mean minus the mean of {what} {_e(ref)}")
        body += f"<h3>{head}</h3>" + _table(table, digits=4, index_name="contrast")
    how = ("as asked (--contrast)" if asked else
           "by default for a table of known standard errors with fixed row effects: each column "
           "(treatment) against the first")
    lede = (f"Differences of posterior means against a reference level, {how}; intervals are {pct} "
            "highest-density intervals of the difference, drawn jointly.")
    return _section(sid, _TITLES["contrasts"], body, lede)


def _effects_section(sid: str, fit, truth) -> str:
    from twoway.app.report.figures import forest_png

    post = fit.posterior
    panels = [p for p in (_forest_panel(post, "row_effect", "row effects", truth, ref=0.0),
                          _forest_panel(post, "col_effect", "column effects", truth, ref=0.0)) if p]
    if not panels:
        body = _note("This model has no row or column effects; the mean is the intercept alone.")
    else:
        body = _img(forest_png(panels, xlabel="effect"), "forest plot of row and column effects",
                    "Posterior mean (dot) and 94% highest-density interval (bar) of each effect"
                    + ("; red crosses are the true values." if truth else "."))
        means = [p for p in (_forest_panel(post, "row_mean", "row means", truth),
                             _forest_panel(post, "col_mean", "column means", truth)) if p]
        if means:
            body += _img(forest_png(means, xlabel="mean"), "forest plot of row and column means",
                         "Row means (intercept + row effect + mean column effect) and column means: "
                         "unlike the effects, the data pin these down directly.")
    return _section(sid, _TITLES["effects"], body)


def _scales_section(sid: str, fit, truth) -> str:
    from twoway.app.report.figures import forest_png

    post = fit.posterior
    panels = [p for p in (_forest_panel(post, "row_sd", "row scales (row_sd)", truth),
                          _forest_panel(post, "col_sd", "column scales (col_sd)", truth)) if p]
    others = [n for n in ("sigma", "row_effect_sd", "col_effect_sd") if n in post]
    if others:
        rows = [_forest_panel(post, n, n, truth) for n in others]
        panels.append({"title": "other scales", "labels": others,
                       "mean": np.concatenate([r["mean"] for r in rows]),
                       "low": np.concatenate([r["low"] for r in rows]),
                       "high": np.concatenate([r["high"] for r in rows]),
                       "truth": (None if not truth or any(r["truth"] is None for r in rows)
                                 else np.concatenate([r["truth"] for r in rows]))})
    if not panels:
        return _section(sid, _TITLES["scales"], _note("This model has no unknown scale."))
    body = _img(forest_png(panels, xlabel="standard deviation"), "forest plot of scales",
                "Posterior mean and 94% interval of each residual scale and of the effects' spreads"
                + ("; red crosses are the true values." if truth else "."))
    spec = fit.model
    if spec.row_scale == "hetero" and spec.col_scale == "hetero":
        body += _note("With a scale per row and per column only sums such as row_sd[i]^2 + col_sd[j]^2 are "
                      "identified; compare scales within rows or within columns.")
    return _section(sid, _TITLES["scales"], body)


def _covariance_section(sid: str, fit) -> str:
    from twoway.app.report.figures import heatmap_png

    post = fit.posterior
    present = [n for n in _COV_NAMES if n in post]
    if not present:
        return _section(sid, _TITLES["covariance"], _note(
            "This model has no row or column covariance matrix (no row_cov, col_cov, row_corr or col_corr "
            "in the posterior): its residuals are independent given the scales, so there is nothing to show."))
    data = fit.data
    body = ""
    for name in present:
        da = post[name]
        dims = [d for d in da.dims if d not in ("chain", "draw")]
        if len(dims) != 2 or da.sizes[dims[0]] != da.sizes[dims[1]]:
            body += _note(f"{name} is not a square matrix per draw; skipped.")
            continue
        mean = da.mean(("chain", "draw")).values
        fallback = data.row_labels if name.startswith("row") else data.col_labels
        labels = [str(v) for v in da[dims[0]].values] if dims[0] in da.coords else list(fallback)
        corr = name.endswith("_corr")
        png = heatmap_png([(f"{name} (posterior mean)", mean)], labels, labels, diverging=True,
                          limits=(-1.0, 1.0) if corr else None, value_label="correlation" if corr else "covariance",
                          xlabel=dims[1], ylabel=dims[0])
        body += _img(png, f"heatmap of the posterior mean of {name}",
                     f"Posterior mean of {name}, {mean.shape[0]} x {mean.shape[0]}.")
    return _section(sid, _TITLES["covariance"], body)


def _trace_series(fit) -> list[tuple[str, np.ndarray]]:
    """At most :data:`MAX_TRACE_SERIES` (label, draws (chains, draws)): the scalars, then two levels of each
    vector (its first two; two at random, seeded, for a large table)."""
    post = fit.posterior
    series: list[tuple[str, np.ndarray]] = []
    names = [n for n in fit.parameter_names if n in post]
    rng = np.random.default_rng(0) if is_large(fit.data) else None
    for name in names:  # scalars first: the hyper-parameters that mix slowest
        if post[name].ndim == 2:
            series.append((name, post[name].transpose("chain", "draw").values))
    for name in ("coef", "row_sd", "col_sd", "row_mean", "col_mean"):
        if len(series) >= MAX_TRACE_SERIES:
            break
        if name in post and post[name].ndim == 3:
            da = post[name].transpose("chain", "draw", ...)
            dim = da.dims[2]
            size = da.sizes[dim]
            at = np.sort(rng.choice(size, min(2, size), replace=False)) if rng is not None else np.arange(min(2, size))
            for k in at:
                series.append((f"{name}[{da[dim].values[k]}]", da.isel({dim: int(k)}).values))
    return series[:MAX_TRACE_SERIES]


def _traces_section(sid: str, fit) -> str:
    from twoway.app.report.figures import trace_rank_png

    series = _trace_series(fit)
    if not series:
        return _section(sid, _TITLES["traces"], _note("No parameter to trace."))
    from twoway.app.report.figures import MAX_TRACE_POINTS

    png = trace_rank_png(series)
    n_draws = int(fit.posterior.sizes["draw"])
    thinned = (f" Traces show {MAX_TRACE_POINTS:,} of the {n_draws:,} draws of each chain, evenly spaced; the rank "
               "plots use them all." if n_draws > MAX_TRACE_POINTS else "")
    body = _img(
        png, "trace and rank plots",
        "Left: the draws of each chain in order; they should look like overlapping noise. Right: the ranks of "
        "each chain's draws among all draws; bars near the dashed line mean the chains agree." + thinned)
    body += (f'<p class="traced">Traced ({len(series)}): '
             + ", ".join(f"<code>{_e(label)}</code>" for label, _ in series) + "</p>")
    return _section(sid, _TITLES["traces"], body)


def _diagnostics_section(sid: str, fit, summary) -> str:
    d = summary.diagnostics
    values = [str(int(d["divergences"])), _fmt(d["max_r_hat"], 4), _fmt(round(d["min_ess_bulk"])),
              _fmt(d["sampling_seconds"], 2), _fmt(d["total_seconds"], 2)]
    table = pd.DataFrame({"value": values,
                          "good when": ["0", f"<= {RHAT_LIMIT}", f">= {ESS_LIMIT}", "", ""]},
                         index=pd.Index(["divergent transitions", "max R-hat", "min bulk ESS",
                                         "sampling seconds", "total seconds"], name="diagnostic"))
    if summary.warnings:
        verdict = ('<div class="note warn"><strong>Sampling problems.</strong>'
                   '<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in summary.warnings)
                   + "</ul></div>")
    else:
        verdict = _note(f"No sampling problems: R-hat <= {RHAT_LIMIT}, bulk ESS >= {ESS_LIMIT}, no divergences.",
                        "ok")
    params = summary.table
    shortened = getattr(summary, "shortened", None) or {}
    if shortened:
        from twoway.results.summary import PRINT_HEAD, SCREENED

        verdict += _note("A large fit: " + ", ".join(f"{name} ({n:,} entries)" for name, n in shortened.items())
                         + f" {'is' if len(shortened) == 1 else 'are'} listed by {'its' if len(shortened) == 1 else 'their'} "
                         f"first {PRINT_HEAD} entries, and judged on those and {SCREENED} more of each; "
                         "'twoway summary FIT --var NAME' gives every entry.")
    body = (verdict + _table(table, digits=4)
            + f"<details><summary>every parameter ({len(params)})</summary>"
            + _table(params, scroll=True, row_class=lambda i, r: "flag" if (
                (math.isfinite(r["r_hat"]) and r["r_hat"] > RHAT_LIMIT) or r["ess_bulk"] < ESS_LIMIT) else "")
            + "</details>")
    return _section(sid, _TITLES["diagnostics"], body)


def _checks_section(sid: str, fit) -> str:
    from twoway.app.report.figures import checks_png

    try:
        from twoway.results.ppc import predictive_checks
    except ImportError:
        return _section(sid, _TITLES["checks"], _note(
            "Posterior predictive checks are not available in this version of twoway.", "warn"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = predictive_checks(fit, draws=PPC_DRAWS, seed=0)
    except (TwowayError, NotImplementedError) as exc:
        return _section(sid, _TITLES["checks"], _note(
            f"Posterior predictive checks could not be computed for this model ({exc or type(exc).__name__}).",
            "warn"))
    p = table["p_value"]
    extreme = (p < 0.025) | (p > 0.975)
    data = fit.data
    if is_large(data) or max(data.n_rows, data.n_cols) > MAX_FOREST_LEVELS:
        return _many_checks_section(sid, table, extreme)
    panels = []
    for key, title in (("row_mean", "row means"), ("row_var", "row variances"),
                       ("col_mean", "column means"), ("col_var", "column variances")):
        rows = [i for i in table.index if str(i).startswith(key + "[")]
        if rows:
            sub = table.loc[rows]
            panels.append({"title": title, "labels": [str(i)[len(key) + 1:-1] for i in rows],
                           "observed": sub["observed"], "rep_mean": sub["rep_mean"], "rep_sd": sub["rep_sd"],
                           "flag": extreme.loc[rows], "nonnegative": key.endswith("_var")})
    n_flag = int(extreme.sum())
    lede = (f"Each statistic of the observed table against the same statistic of {PPC_DRAWS} tables "
            "replicated from the fit; p = P(replicated >= observed).")
    body = ""
    if panels:
        body += _img(checks_png(panels), "posterior predictive checks of row and column statistics",
                     "Grey bars: replicated mean +- 2 sd (for variances, cut at 0); dots: observed "
                     "(red when p < 0.025 or p > 0.975).")
    body += _checks_verdict(table, n_flag, " (highlighted)")
    body += ("<details><summary>every statistic</summary>"
             + _table(table, scroll=True, row_class=lambda i, r: "flag" if bool(extreme.loc[i]) else "")
             + "</details>")
    return _section(sid, _TITLES["checks"], body, lede)


def _checks_verdict(table: pd.DataFrame, n_flag: int, where: str) -> str:
    """How many statistics fall outside the central 95% of their replicated distribution (``where``: how
    they are marked), and the checks' own note."""
    p = table["p_value"]
    out = _note(f"{n_flag} of {int(p.notna().sum())} statistics fall outside the central 95% of their "
                f"replicated distribution{where}." if n_flag else
                "Every statistic lies within the central 95% of its replicated distribution.",
                "ok" if n_flag == 0 else "warn")
    return out + (_note(table.attrs["note"]) if table.attrs.get("note") else "")


_FAMILIES = (("row_mean", "row means"), ("row_var", "row variances"), ("col_mean", "column means"),
             ("col_var", "column variances"))


def _many_checks_section(sid: str, table: pd.DataFrame, extreme: pd.Series) -> str:
    """The predictive checks of a table with many rows or columns: histograms of the p-values of each
    family of statistics, the table-wide statistics and the most extreme ones listed."""
    from twoway.app.report.figures import histograms_png

    p = table["p_value"]
    names = [str(i) for i in table.index]
    panels = []
    for key, title in _FAMILIES:
        rows = [k for k, i in enumerate(names) if i.startswith(key + "[")]
        if rows:
            panels.append({"title": f"p-values of the {title}", "series": [(title, p.iloc[rows].to_numpy())],
                           "xlabel": "p = P(replicated >= observed)", "range": (0.0, 1.0), "bins": 20,
                           "density": False})
    n_flag = int(extreme.sum())
    body = ""
    if panels:
        body += _img(histograms_png(panels), "histograms of the posterior predictive p-values by family of statistics",
                     "The p-value of each row's and column's statistic: they gather around 0.5 when the fit "
                     "reproduces the table; piles near 0 or 1 mark rows or columns it does not reproduce.")
    body += _checks_verdict(table, n_flag, "")
    whole = table.loc[[i for i in table.index if "[" not in str(i)]]
    body += "<h3>Statistics of the whole table</h3>" + _table(
        whole, row_class=lambda i, r: "flag" if bool(extreme.loc[i]) else "")
    per_level = table.loc[[i for i in table.index if "[" in str(i)]]
    distance = np.minimum(per_level["p_value"], 1 - per_level["p_value"]).fillna(np.inf)
    worst = per_level.loc[distance.sort_values(kind="stable").index[:EXTREME_STATISTICS]]
    body += (f"<details><summary>the {len(worst)} most extreme of the {len(per_level):,} row and column "
             "statistics</summary>"
             + _table(worst, scroll=True, row_class=lambda i, r: "flag" if bool(extreme.loc[i]) else "")
             + "</details>")
    lede = (f"Each statistic of the observed table against the same statistic of {PPC_DRAWS} tables "
            "replicated from the fit; p = P(replicated >= observed).")
    return _section(sid, _TITLES["checks"], body, lede)


def _comparison_section(sid: str, named: Mapping[str, Any]) -> str:
    try:
        from twoway.results.compare import compare, fits_table, pointwise_differences, preferred
    except ImportError:
        return _section(sid, _TITLES["comparison"], _note(
            "Model comparison is not available in this version of twoway.", "warn"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = compare(dict(named))
            sentence = preferred(table)
    except (TwowayError, NotImplementedError) as exc:
        return _section(sid, _TITLES["comparison"], _note(
            f"The fits could not be compared: {exc or type(exc).__name__}", "warn"))
    best = table.index[0]
    same = bool(table.attrs.get("same"))
    diffs = pointwise_differences(table)
    body = (f'<div class="note {"warn" if same else "ok"}"><strong>{_e(sentence)}</strong></div>'
            + "<h3>The fits side by side</h3>"
            + _table(fits_table(named, table), digits=2, row_class=lambda i, r: "best" if i == best else "")
            + "<h3>Leave-one-out comparison</h3>"
            + _table(table, digits=2, row_class=lambda i, r: "best" if i == best else "")
            + _note("elpd: expected log predictive density, leave-one-out (PSIS); higher predicts better. "
                    "elpd_diff and dse: the difference from the best fit and its standard error. "
                    "weight: stacking weight. pareto_k_bad: units whose leave-one-out estimate is unreliable. "
                    "p_loo: effective number of parameters. variance: posterior medians of the scale parameters.")
            + f"<h3>Pointwise table: {_e(table.index[0])} minus {_e(table.index[1])}</h3>"
            + _table(diffs.head(10), digits=2, index_name=str(diffs.index.name))
            + (f"<details><summary>every {_e(diffs.index.name)} ({len(diffs)})</summary>"
               + _table(diffs, digits=2, scroll=True, index_name=str(diffs.index.name)) + "</details>"
               if len(diffs) > 10 else ""))
    return _section(sid, _TITLES["comparison"], body)


def _recovery_section(sid: str, fit, truth: Mapping[str, Any]) -> str:
    post = fit.posterior
    names = [n for n in truth if n in post]
    if not names:
        return _section(sid, _TITLES["recovery"], _note("The true values name no parameter of this fit."))
    try:
        table = recovery(fit, truth, prob=INTERVAL, names=names)
    except (TwowayError, KeyError, ValueError, TypeError) as exc:
        return _section(sid, _TITLES["recovery"], _note(
            f"The true values do not match this fit's parameters ({type(exc).__name__}: {exc}).", "warn"))
    n_cov = int(table["covered"].sum())
    n = len(table)
    body = (_note(f"{n_cov} of {n} true values ({100 * n_cov / n:.0f}%) lie inside their 94% interval; "
                  "about 94% are expected, fewer when the prior and the truth disagree.",
                  "ok" if n_cov >= 0.8 * n else "warn")
            + _table(table, scroll=True, row_class=lambda i, r: "" if r["covered"] else "flag"))
    return _section(sid, _TITLES["recovery"], body, "Highlighted: true values outside the 94% interval.")


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------


def _check_inputs(fits, names, truth) -> tuple[list, list[str], dict[str, Any] | None]:
    items = [fits] if isinstance(fits, Fit) else fits
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise FitError(f"The report needs a fit or a non-empty list of fits; got {type(fits).__name__}.")
    items = list(items)
    for f in items:
        if not isinstance(f, Fit):
            raise FitError(f"The report needs twoway Fit objects; got {type(f).__name__}.")
    if names is None:
        base = [f.model.name for f in items]
    else:
        base = [str(n).strip() for n in names]
        if len(base) != len(items) or not all(base):
            raise FitError(f"The report needs one non-empty name per fit ({len(items)}); got {len(base)}.")
    out: list[str] = []
    for n in base:
        cand, k = n, 1
        while cand in out:
            k += 1
            cand = f"{n}_{k}"
        out.append(cand)
    if truth is not None:
        if isinstance(truth, Mapping) and "truth" in truth and isinstance(truth["truth"], Mapping):
            truth = truth["truth"]  # the file written by Simulation.write_truth
        if not isinstance(truth, Mapping):
            raise DataError(f"The truth must be a mapping of parameter names to values; got {type(truth).__name__}.")
        truth = dict(truth)
    return items, out, truth


def _same_table(a, b) -> bool:
    return (a.values.shape == b.values.shape and np.array_equal(a.mask, b.mask)
            and np.array_equal(np.nan_to_num(a.values), np.nan_to_num(b.values)))


def _count_sections(items: Sequence, truth, asked) -> int:
    """The number of sections :func:`render_report` writes for these fits (its progress counts them)."""
    n = 2 + (1 if len(items) > 1 else 0)                     # overview, data, comparison
    for k, f in enumerate(items):
        n += 10                                               # model ... checks, always there
        n += k > 0 and not _same_table(items[0].data, f.data)
        n += fit_design(f) is not None
        n += bool(asked if asked is not None else default_contrasts(f))
        n += truth is not None
    return int(n)


def render_report(fits, *, names: Sequence[str] | None = None, truth: Mapping[str, Any] | None = None,
                  title: str | None = None, ci_prob: float = INTERVAL,
                  var_names: Sequence[str] | None = None,
                  contrasts: "Sequence[str | tuple[str, str]] | None" = None,
                  progress: Callable[[int, int], None] | None = None) -> str:
    """The report as one HTML string; see :func:`write_report`."""
    items, labels, truth = _check_inputs(fits, names, truth)
    asked = _check_contrasts(contrasts, items[0].data, items[0]) if contrasts else None
    several = len(items) > 1
    first_data = items[0].data
    total = len(items) + _count_sections(items, truth, asked)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    summaries = []
    for f in items:
        summaries.append(_summary(f, ci_prob, var_names))
        tick()
    blocks: list[str] = []
    nav: list[tuple[str, str]] = []

    def add(sid: str, text: str, label: str) -> None:
        blocks.append(text)
        nav.append((sid, label))
        tick()

    # overview
    ok_all = all(not s.warnings for s in summaries)
    lines = []
    for name, f, s in zip(labels, items, summaries):
        badge = ('<span class="badge ok">sampling ok</span>' if not s.warnings
                 else f'<span class="badge warn">{len(s.warnings)} sampling warning(s)</span>')
        lines.append(f"<li><strong>{_e(name)}</strong>: {_e(f.model.describe())} {badge}</li>")
    d = first_data
    overview = (_cards([("table", f"{d.n_rows} &times; {d.n_cols}" + (f" &times; {d.n_replicates}"
                                                                      if d.n_replicates > 1 else "")),
                        ("observed cells", f"{d.n_observed}"),
                        ("models", str(len(items))),
                        ("sampling", '<span class="badge ok">ok</span>' if ok_all
                         else '<span class="badge warn">see diagnostics</span>')])
                + "<ul>" + "".join(lines) + "</ul>"
                + ("<p>The model: <code>y[r,i,j] = intercept + row_effect[i] + col_effect[j] "
                   + ("+ x[r,i,j]' coef " if any(fit_design(f) is not None for f in items) else "")
                   + "+ e[r,i,j]</code>, replicate tables r sharing every parameter"
                   + ("; x the covariates of the model's formula" if any(fit_design(f) is not None for f in items)
                      else "")
                   + "; the residual e mixes each cell's known "
                   "standard error with the unknown row, column and cell scales.</p>"))
    add("overview", _section("overview", _TITLES["overview"], overview), "overview")
    add("data", _data_section("data", first_data), "data")
    if several:
        add("comparison", _comparison_section("comparison", dict(zip(labels, items))), "comparison")

    for k, (name, f, s) in enumerate(zip(labels, items, summaries)):
        suffix = "" if k == 0 else f"-{k + 1}"
        if several:
            blocks.append(f'<h2 class="fit-title" id="fit{suffix or "-1"}">{_e(name)}</h2>')
        tag = f" ({name})" if several else ""
        if k > 0 and not _same_table(first_data, f.data):
            add(f"data{suffix}", _data_section(f"data{suffix}", f.data, title_suffix=f": {name}"), f"data{tag}")
        add(f"model{suffix}", _model_section(f"model{suffix}", f, name), f"model{tag}")
        if fit_design(f) is not None:
            add(f"coefficients{suffix}", _coefficients_section(f"coefficients{suffix}", f, ci_prob),
                f"covariates{tag}")
        add(f"fitted{suffix}", _fitted_section(f"fitted{suffix}", f), f"fitted{tag}")
        add(f"predictions{suffix}", _predictions_section(f"predictions{suffix}", f, ci_prob), f"predictions{tag}")
        add(f"variance{suffix}", _variance_section(f"variance{suffix}", f, s), f"variance{tag}")
        add(f"effects{suffix}", _effects_section(f"effects{suffix}", f, truth), f"effects{tag}")
        pairs = asked if asked is not None else default_contrasts(f)
        if pairs:
            add(f"contrasts{suffix}", _contrasts_section(f"contrasts{suffix}", f, pairs, ci_prob, asked is not None),
                f"contrasts{tag}")
        add(f"scales{suffix}", _scales_section(f"scales{suffix}", f, truth), f"scales{tag}")
        add(f"covariance{suffix}", _covariance_section(f"covariance{suffix}", f), f"covariance{tag}")
        add(f"traces{suffix}", _traces_section(f"traces{suffix}", f), f"traces{tag}")
        add(f"diagnostics{suffix}", _diagnostics_section(f"diagnostics{suffix}", f, s), f"diagnostics{tag}")
        add(f"checks{suffix}", _checks_section(f"checks{suffix}", f), f"checks{tag}")
        if truth is not None:
            add(f"recovery{suffix}", _recovery_section(f"recovery{suffix}", f, truth), f"recovery{tag}")

    page_title = title or ("twoway report: " + ", ".join(labels))
    subtitle = (f"{len(items)} fit{'s' if several else ''} of a {d.n_rows} x {d.n_cols} table"
                + (f" with {d.n_replicates} replicate tables" if d.n_replicates > 1 else "")
                + ("; simulated, with the true values shown" if truth is not None else ""))
    template = Template((Path(__file__).with_name("template.html")).read_text(encoding="utf-8"))
    return template.substitute(
        title=_e(page_title), subtitle=_e(subtitle), version=_e(__version__),
        date=_e(_dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
        nav="".join(f'<a href="#{_e(sid)}">{_e(label)}</a>' for sid, label in nav),
        body="\n".join(blocks),
    )


def write_report(fits, path: "str | os.PathLike[str]", *, names: Sequence[str] | None = None,
                 truth: Mapping[str, Any] | None = None, title: str | None = None,
                 ci_prob: float = INTERVAL, var_names: Sequence[str] | None = None,
                 contrasts: "Sequence[str | tuple[str, str]] | None" = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Write one self-contained HTML report of one or more fits of a table.

    Parameters
    ----------
    fits : Fit or list of Fit
        Fits of one table; with several, the report compares them (PSIS-LOO)
        and repeats the per-fit sections for each.
    path : path
        The HTML file to write.
    names : sequence of str, optional
        One name per fit (default: each fit's model name, made unique).
    truth : mapping, optional
        True parameter values, as :meth:`twoway.simulate.Simulation.truth_dict`
        gives them (or the JSON that ``twoway simulate --truth`` writes); adds
        the recovery table and marks true values on the forest plots.
    title : str, optional
        Page title (default: "twoway report: " and the names).
    ci_prob : float
        Probability of the intervals in the tables (default 0.94).
    var_names : sequence of str, optional
        Variables (names or prefixes) in the diagnostics' parameter table (default: all).
    contrasts : sequence of str or (str, str), optional
        Contrasts to show, each ``"row=LABEL"`` / ``"col=LABEL"`` (or ``(side, label)``): every
        level's mean minus the reference level's, with intervals; ``"covariate:g"`` (or
        ``"covariate:g=LEVEL"``): the levels of the factor covariate ``g`` against its reference. Default: see
        :func:`default_contrasts` (each column against the first for a table of known standard
        errors with fixed row effects; none otherwise).
    progress : callable, optional
        Called ``progress(done, total)`` as each fit's summary and each section is done.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FitError
        For something that is not a fit, names that do not match the fits,
        or a file that cannot be written.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FitError(f"The folder {str(path.parent)!r} for the report does not exist.")
    text = render_report(fits, names=names, truth=truth, title=title, ci_prob=ci_prob, var_names=var_names,
                         contrasts=contrasts, progress=progress)
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise FitError(f"The report could not be written to {str(path)!r}: {exc.strerror or exc}.") from None
    return path
