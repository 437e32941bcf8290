"""The covariates' part of a fit's mean, read from its plan and its posterior.

A model with covariates has the mean ``intercept + row_effect[i] + col_effect[j] + x[r,i,j]' coef``,
``x`` a row of the design ``X`` (n_obs, p) that the plan built from the model's formula
(:class:`twoway.table.covariates.CovariateDesign`, rows in the order of
:meth:`TwoWayData.observed_index`) and ``coef`` the posterior variable with dims
``(chain, draw, term)``. Every result that builds a mean after the fit (moments, predictions,
the variance decomposition, the report) takes the covariates' part from here:

* :func:`fit_design` - the fit's covariate design (None without covariates);
* :func:`coef_draws` - the draws of ``coef``, (chains, draws, p), in the design's term order;
* :func:`covariate_grid` - ``x`` at every cell of the table's grid where it is known (observed
  cells; the other cells too when every term is constant within rows or columns);
* :func:`coefficient_table` - the coefficients' statistics with where each term lives and its
  prior sd;
* :func:`mean_formula` - the model's mean as a line of text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twoway.results.stats import statistics_table

__all__ = ["LEVEL_NAMES", "coef_draws", "coefficient_table", "covariate_grid", "first_by", "fit_design", "flat_coef",
           "mean_formula", "missing_terms_text"]

#: How a term's level is written for users.
LEVEL_NAMES = {"row": "row", "col": "column", "cell": "cell"}


def fit_design(fit):
    """The covariate design the fit was sampled with (its plan's), or None for a model without covariates.

    Parameters
    ----------
    fit : Fit

    Returns
    -------
    CovariateDesign or None
    """
    if not getattr(fit.model, "covariates", None):   # no plan to resolve for a model without covariates
        return None
    return getattr(fit.plan, "covariates", None)


def coef_draws(fit, design=None) -> np.ndarray | None:
    """The draws of ``coef``, (chains, draws, p), columns in the order of ``design.terms``.

    Parameters
    ----------
    fit : Fit
    design : CovariateDesign, optional
        Orders the columns by its terms (default: the posterior's order).

    Returns
    -------
    numpy.ndarray (chains, draws, p) or None
        None when the posterior has no ``coef``.
    """
    post = fit.posterior
    if "coef" not in post:
        return None
    da = post["coef"]
    other = [d for d in da.dims if d not in ("chain", "draw")]
    da = da.transpose("chain", "draw", *other)
    if design is not None and other and other[0] in da.coords:
        have = [str(t) for t in da.coords[other[0]].values]
        if have != list(design.terms) and set(design.terms) <= set(have):
            da = da.isel({other[0]: [have.index(t) for t in design.terms]})
    return np.asarray(da.values, dtype=float).reshape(da.shape[0], da.shape[1], -1)


def flat_coef(fit, design=None) -> np.ndarray | None:
    """:func:`coef_draws` with chains and draws in one leading axis: (S, p), or None."""
    c = coef_draws(fit, design)
    return None if c is None else c.reshape(-1, c.shape[-1])


def covariate_grid(design, data, *, n_rows: int | None = None, n_cols: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The covariates ``x`` at every cell of the (possibly extended) grid where they are known.

    Observed cells have their own row of ``design.X``. A cell without an observation gets its
    row's values for the terms constant within rows and its column's values for the terms
    constant within columns; it has none when any term varies by cell, or when its row (column)
    has no observed cell and a term lives on rows (columns).

    Parameters
    ----------
    design : CovariateDesign
    data : TwoWayData
        The fitted table, (R, N, K).
    n_rows, n_cols : int, optional
        The grid's size (default N, K); rows ``N..n_rows-1`` and columns ``K..n_cols-1`` are
        new levels with no observed cell.

    Returns
    -------
    (X, known) : arrays (R, n_rows, n_cols, p) float and (R, n_rows, n_cols) bool
        ``X`` is 0 where ``known`` is False.
    """
    R, N, K = data.values.shape
    n_rows = N if n_rows is None else int(n_rows)
    n_cols = K if n_cols is None else int(n_cols)
    Xo = np.asarray(design.X, dtype=float)
    p = Xo.shape[1]
    rr, ii, jj = data.observed_index()
    X = np.zeros((R, n_rows, n_cols, p))
    known = np.zeros((R, n_rows, n_cols), bool)
    level = np.asarray(design.level)
    if not np.any(level == "cell"):
        row_terms, col_terms = level == "row", level == "col"
        row_val, row_has = first_by(ii, Xo[:, row_terms], n_rows)
        col_val, col_has = first_by(jj, Xo[:, col_terms], n_cols)
        ok = np.ones((n_rows, n_cols), bool)
        if row_terms.any():
            ok &= row_has[:, None]
            X[..., row_terms] = row_val[None, :, None, :]
        if col_terms.any():
            ok &= col_has[None, :]
            X[..., col_terms] = col_val[None, None, :, :]
        known[:] = ok[None]
        X[~known] = 0.0
    X[rr, ii, jj] = Xo
    known[rr, ii, jj] = True
    return X, known


def first_by(index: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first row of ``values`` for each group ``index`` in 0..n-1: (n, q) values and (n,) found."""
    out = np.zeros((n, values.shape[1]))
    found = np.zeros(n, bool)
    if index.size:
        groups, first = np.unique(index, return_index=True)
        out[groups] = values[first]
        found[groups] = True
    return out, found


def missing_terms_text(design, *, new_rows: bool = False, new_cols: bool = False) -> str:
    """Which terms have no value at a cell without an observation, in words."""
    level = list(design.level)
    cell = [t for t, lv in zip(design.terms, level) if lv == "cell"]
    parts = []
    if cell:
        parts.append(f"the term(s) {_names(cell)} vary from cell to cell, so a cell without an observation "
                     "has no value of them")
    if new_rows:
        rows = [t for t, lv in zip(design.terms, level) if lv == "row"]
        if rows:
            parts.append(f"the row-level term(s) {_names(rows)} have no value for a row without data")
    if new_cols:
        cols = [t for t, lv in zip(design.terms, level) if lv == "col"]
        if cols:
            parts.append(f"the column-level term(s) {_names(cols)} have no value for a column without data")
    return "; ".join(parts) if parts else "their covariate values are unknown"


def _names(names: Sequence[str], k: int = 4) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def coefficient_table(fit, *, ci_prob: float = 0.94, design=None):
    """The covariates' coefficients: statistics, where each term lives and its prior sd.

    Parameters
    ----------
    fit : Fit
    ci_prob : float
        Probability of the highest-density interval.
    design : CovariateDesign, optional
        The fit's design, when already at hand (default: :func:`fit_design`).

    Returns
    -------
    pandas.DataFrame or None
        One line per term (index ``term``: the design's column names, e.g. ``x``,
        ``C(g)[T.b]``); columns ``level`` (``row``, ``column`` or ``cell``: what the term is
        constant within), ``mean, sd, hdi_L%, hdi_U%, ess_bulk, ess_tail, r_hat`` and
        ``prior_sd`` (the coefficient's prior sd: the ``coef`` prior's sigma over the term's sd);
        None for a model without covariates.
    """
    design = fit_design(fit) if design is None else design
    post = fit.posterior
    if design is None or "coef" not in post:
        return None
    table = statistics_table(post, ["coef"], ci_prob)
    terms = list(design.terms)
    da = post["coef"]
    dim = [d for d in da.dims if d not in ("chain", "draw")]
    labels = [str(t) for t in da.coords[dim[0]].values] if dim and dim[0] in da.coords else terms
    table.index = labels
    table = table.reindex([t for t in terms if t in labels] + [t for t in labels if t not in terms])
    table.index.name = "term"
    where = dict(zip(terms, design.level))
    table.insert(0, "level", [LEVEL_NAMES.get(where.get(t, ""), "") for t in table.index])
    coef_sd = getattr(fit.plan, "coef_sd", None)
    if coef_sd is not None:
        sd = dict(zip(terms, np.asarray(coef_sd, dtype=float)))
        table["prior_sd"] = [sd.get(t, np.nan) for t in table.index]
    return table


def mean_formula(spec, design=None) -> str:
    """The model's cell value as one line of text, e.g. ``y[r,i,j] = intercept + row_effect[i] + ...``.

    Parameters
    ----------
    spec : ModelSpec
    design : CovariateDesign, optional
        Adds ``x[r,i,j]' coef`` and names the formula the covariates come from.
    """
    parts = []
    if getattr(spec, "intercept", True):
        parts.append("intercept")
    if getattr(spec, "row_effect", "none") != "none":
        parts.append("row_effect[i]")
    if getattr(spec, "col_effect", "none") != "none":
        parts.append("col_effect[j]")
    if getattr(spec, "cell_effect", "none") != "none":
        parts.append("cell_effect[i,j]")
    if design is not None:
        parts.append("x[r,i,j]' coef")
    parts.append("e[r,i,j]")
    text = "y[r,i,j] = " + " + ".join(parts)
    if design is not None:
        text += f", x from the formula '{design.formula}' ({len(design.terms)} term(s): {', '.join(design.terms)})"
    return text
