"""Predictions for every cell of the table: observed ones (fitted) and missing ones (predicted).

A cell's value is split as ``y = f + eps``: ``f`` is the cell's **mean** (the
intercept, the row and column effects and any correlated part of the residual:
latent shocks, a Kronecker or full covariance's share) and ``eps`` the cell's
independent noise (the independent residual's scales, the nugget ``sigma``,
the known se). For each posterior draw ``f`` is Gaussian given the observed
cells:

* independent residual: ``f`` is the drawn effects' sum, exactly;
* latent residual: the drawn effects plus the drawn shocks of the cell's replicate;
* Kronecker or full residual: the drawn effects plus the correlated residual
  ``g ~ N(0, T)`` conditioned on the observed cells of the replicate,
  ``g | e_o ~ N(T_ao (T_oo + D_o)^-1 e_o, T_aa - T_ao (T_oo + D_o)^-1 T_oa)``
  where ``e_o`` is the observed cells' residual after the drawn effects and
  ``D_o`` their noise variance. Drawing the effects from their exact
  conditional law first and ``g`` given them is an exact draw from the joint
  conditional law; a missing cell is predicted from the observed ones.

``new_observation=True`` predicts a new observation of the cell instead,
``f + eps`` with ``eps`` drawn afresh: with the cell's known se where the
table has one, without known error at missing cells (they have no se).

New levels (a row or column with no data) take their random effect from its
law, ``N(0, effect_sd^2)``, draw by draw (and, with heteroscedastic scales, a
scale from the scales' log-normal population). Fixed effects have no law for a
level without data, and a Kronecker or full residual none for a new level of
its structure; both are refused.

With covariates in the mean the drawn coefficients add ``x' coef`` to every
cell's mean: an observed cell has its own ``x``; a cell without an observation
takes its row's values of the terms constant within rows and its column's of
the terms constant within columns. A term that varies from cell to cell has no
value at a cell without data: such cells are left out (with a warning and a
note in the result's ``attrs["note"]``); ``at=`` predicts any cells, new rows
and columns included, from a table of their covariate values.

Per cell the summary is exact in the mean and sd (the mixture over draws of
each draw's Gaussian: ``mean = E[mu]``, ``sd^2 = E[v] + Var[mu]``); the
interval is the highest-density interval of draws from that mixture.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from twoway.errors import DataError, FitError, TwowayWarning
from twoway.likelihood.marginal import kronecker_factors, noise_variance, table_covariance
from twoway.linalg.ops import NUMPY
from twoway.results.covariates import covariate_grid, fit_design, flat_coef, missing_terms_text
from twoway.results.decomposition import flat_parameters, full_layout
from twoway.results.stats import hdi

# Deferred imports: pandas, scipy (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["predict", "cell_moments", "PREDICTION_COLUMNS"]

PREDICTION_COLUMNS = ("row", "col", "replicate", "observed", "mean", "sd", "lower", "upper", "kind")


def predict(fit, *, new_observation: bool = False, ci_prob: float = 0.94,
            new_rows: Sequence[str] = (), new_cols: Sequence[str] = (),
            max_draws: int | None = None, seed: int | None = 0, at=None):
    """One line per cell of the full grid (or per line of ``at``): the cell's mean (or a new observation
    of it) given the data.

    Parameters
    ----------
    fit : Fit
    new_observation : bool
        Predict a new observation of each cell (adding the independent noise and known
        se) instead of the cell's mean.
    ci_prob : float
        Probability of the highest-density interval (``lower``, ``upper``).
    new_rows, new_cols : sequence of str
        Labels of levels with no data, predicted from their effects' law.
    max_draws : int, optional
        Use this many posterior draws, chosen at random (default: all of them).
    seed : int, optional
        Seed for the choice of draws and the interval's draws.
    at : pandas.DataFrame, optional
        The cells to predict, one per line: the table's row and column columns (named as in
        the fitted table, or ``row`` and ``col``), its replicate column when it has several
        replicate tables, and every column the covariates' formula reads. Rows and columns
        not in the table are new levels (as ``new_rows``/``new_cols``; give those only
        without ``at``).

    Returns
    -------
    pandas.DataFrame
        Columns ``row, col, [replicate,] observed, mean, sd, lower, upper, kind``; one line
        per (replicate,) row and column, the table's order, new levels last; ``observed``
        is NaN at missing cells; ``kind`` is ``fitted`` for observed cells and ``predicted``
        for the others. With a covariate term that varies by cell, the cells without an
        observation have no covariate values and are left out: ``attrs["note"]`` says how
        many, and a :class:`TwowayWarning` too. With ``at``: one line per line of ``at``,
        in its order, the formula's columns after ``row, col, [replicate]``; ``observed`` is
        the table's value at the cell (NaN where it has none); ``kind`` is ``fitted`` for an
        observed cell with the covariate values it was fitted with, ``predicted`` otherwise.

    Raises
    ------
    DataError
        For ``at`` without a row, column, replicate or covariate column the model needs, a
        missing value there, an unknown replicate or an unseen level of a factor.
    FitError
        For options out of range, new levels the model has no law for, or new rows
        (columns) asked for without ``at`` when a covariate term lives on rows (columns).
    """
    import pandas as pd


    if isinstance(ci_prob, bool) or not isinstance(ci_prob, (int, float, np.floating)) or not 0 < ci_prob < 1:
        raise FitError(f"The interval probability must be between 0 and 1; got {ci_prob!r}.")
    if max_draws is not None and (isinstance(max_draws, bool) or not isinstance(max_draws, (int, np.integer))
                                  or max_draws < 1):
        raise FitError(f"The 'max_draws' option must be a whole number >= 1; got {max_draws!r}.")
    data = fit.data
    if at is not None:
        if any(len([x] if isinstance(x, str) else x) and x != "" for x in (new_rows, new_cols)):
            raise FitError("Give the cells to predict either as 'at' (whose rows and columns may be new) or as "
                           "new_rows/new_cols, not both.")
        return _predict_at(fit, at, new_observation=new_observation, ci_prob=ci_prob, max_draws=max_draws,
                           seed=seed)
    new_rows, new_cols = _new_labels(new_rows, data.row_labels, "row"), _new_labels(new_cols, data.col_labels, "col")
    prep = _prepare(fit, new_rows=new_rows, new_cols=new_cols, max_draws=max_draws, seed=seed)
    _check_new_covariates(prep)
    S, R, n_rows, n_cols = prep["S"], prep["R"], prep["n_rows"], prep["n_cols"]
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x9E3])
    reps = max(1, -(-4000 // S))
    # rows a block at a time, so that memory stays bounded on large tables (one block when the
    # residual correlates the whole table)
    whole = fit.model.residual in ("kronecker", "full")
    step = n_rows if whole else max(1, BLOCK_VALUES // (reps * S * R * n_cols))
    mean = np.empty((R, n_rows, n_cols))
    sd = np.empty_like(mean)
    interval = np.empty((R, n_rows, n_cols, 2))
    for lo in range(0, n_rows, step):
        rows = np.arange(lo, min(n_rows, lo + step))
        mu, var = _block_moments(prep, rows, new_observation=new_observation)       # (S, R, nb, K')
        mean[:, rows] = mu.mean(axis=0)
        sd[:, rows] = np.sqrt(np.maximum(var.mean(axis=0) + mu.var(axis=0), 0.0))
        sample = mu[None] + np.sqrt(np.maximum(var, 0.0))[None] * rng.standard_normal((reps,) + mu.shape)
        interval[:, rows] = hdi(sample.reshape((1, reps * S) + mu.shape[1:]), ci_prob)
    R, N, K = data.values.shape
    rows = list(data.row_labels) + list(new_rows)
    cols = list(data.col_labels) + list(new_cols)
    observed = np.full(mean.shape, np.nan)
    observed[:, :N, :K] = np.where(data.mask, data.values, np.nan)
    r_idx, i_idx, j_idx = np.meshgrid(np.arange(R), np.arange(len(rows)), np.arange(len(cols)), indexing="ij")
    frame = {"row": np.asarray(rows, dtype=object)[i_idx.ravel()],
             "col": np.asarray(cols, dtype=object)[j_idx.ravel()]}
    if R > 1:
        frame["replicate"] = np.asarray(list(data.replicate_labels), dtype=object)[r_idx.ravel()]
    frame.update({"observed": observed.ravel(), "mean": mean.ravel(), "sd": sd.ravel(),
                  "lower": interval[..., 0].ravel(), "upper": interval[..., 1].ravel(),
                  "kind": np.where(np.isnan(observed.ravel()), "predicted", "fitted")})
    out = pd.DataFrame(frame)
    keep = None if prep["known"] is None else prep["known"].ravel()
    if new_rows or new_cols:   # the table's own cells first, then the new levels'
        old = (i_idx.ravel() < N) & (j_idx.ravel() < K)
        order = np.concatenate([np.flatnonzero(old), np.flatnonzero(~old)])
        out = out.iloc[order].reset_index(drop=True)
        keep = None if keep is None else keep[order]
    if keep is not None and not keep.all():
        n_out = int((~keep).sum())
        note = (f"{n_out} cell(s) without an observation were left out: {missing_terms_text(prep['design'])}; "
                "predict them with at= (twoway predict --at FILE), a table of the cells with their covariate "
                "values.")
        out = out[keep].reset_index(drop=True)
        out.attrs["note"] = note
        warnings.warn(note, TwowayWarning, stacklevel=3)
    return out


def _at_column(at, name, role: str, *, required: bool = True) -> str | None:
    """The column of ``at`` holding ``role`` (the fitted table's name for it, or the role itself)."""
    for cand in (name, role):
        if cand is not None and cand in at.columns:
            return cand
    if not required:
        return None
    named = f"'{name}'" + (f" (or '{role}')" if name != role else "") if name is not None else f"'{role}'"
    raise DataError(f"The cells to predict (at) need the {_ROLE_WORDS[role]} column {named}; got the columns "
                    f"{_few_names([str(c) for c in at.columns])}.")


_ROLE_WORDS = {"row": "row", "col": "column", "replicate": "replicate"}


def _few_names(names, k: int = 8) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:k])
    return (shown + (f" and {len(names) - k} more" if len(names) > k else "")) or "none"


def _at_labels(at, column: str, role: str) -> list[str]:
    """The labels of ``at[column]`` as text; :class:`DataError` at a missing one."""
    values = at[column]
    gone = np.flatnonzero(values.isna().to_numpy())
    labels = [str(v).strip() for v in values.to_numpy()]
    gone = sorted(set(gone) | {k for k, v in enumerate(labels) if not v})
    if gone:
        raise DataError(f"The cells to predict (at) have no {_ROLE_WORDS[role]} label on line(s) "
                        f"{_few_names([str(k + 1) for k in gone])} (counting from 1); fill them in.")
    return labels


def _at_covariates(at, design, where: list[str]) -> np.ndarray:
    """The covariates' design (L, p) at the lines of ``at``, encoded as the fitted table's."""
    missing = [v for v in design.variables if v not in at.columns]
    if missing:
        raise DataError(f"The cells to predict (at) need the column(s) {_few_names(missing)} that the covariates' "
                        f"formula '{design.formula}' reads; got the columns {_few_names([str(c) for c in at.columns])}.")
    for v in design.variables:
        gone = np.flatnonzero(at[v].isna().to_numpy())
        if gone.size:
            cells = [where[k] for k in gone]
            raise DataError(f"The cells to predict (at) have no value of '{v}' at {len(cells)} cell(s) "
                            f"({_few_names(cells, 3)}); fill them in or drop those lines.")
    # read as the fitted table's columns were (numbers, text levels, transforms' state)
    columns = {v: at[v] for v in design.variables}
    return np.asarray(design.design_for(columns), dtype=float)


def _predict_at(fit, at, *, new_observation: bool, ci_prob: float, max_draws, seed):
    """:func:`predict` at the cells of the table ``at``; see there."""
    import pandas as pd

    if not isinstance(at, pd.DataFrame):
        raise DataError(f"The cells to predict (at) must be a table (a pandas DataFrame); got {type(at).__name__}.")
    if len(at) == 0:
        raise DataError("The cells to predict (at) have no line; give one line per cell to predict.")
    data = fit.data
    names = data.names
    R, N, K = data.values.shape
    row_col = _at_column(at, names.get("row"), "row")
    col_col = _at_column(at, names.get("col"), "col")
    rep_col = _at_column(at, names.get("replicate"), "replicate", required=R > 1)
    rows, cols = _at_labels(at, row_col, "row"), _at_labels(at, col_col, "col")
    reps = _at_labels(at, rep_col, "replicate") if rep_col is not None else [None] * len(at)
    row_index = {str(v): k for k, v in enumerate(data.row_labels)}
    col_index = {str(v): k for k, v in enumerate(data.col_labels)}
    rep_index = {str(v): k for k, v in enumerate(data.replicate_labels)}
    unknown = sorted({r for r in reps if r is not None and r not in rep_index})
    if unknown:
        raise DataError(f"The cells to predict (at) name replicate(s) {_few_names(unknown)} that the table does not "
                        f"have ({_few_names(list(rep_index))}); a new replicate table cannot be predicted.")
    new_rows = tuple(dict.fromkeys(r for r in rows if r not in row_index))
    new_cols = tuple(dict.fromkeys(c for c in cols if c not in col_index))
    row_index.update({r: N + k for k, r in enumerate(new_rows)})
    col_index.update({c: K + k for k, c in enumerate(new_cols)})
    i_at = np.array([row_index[r] for r in rows], dtype=np.int64)
    j_at = np.array([col_index[c] for c in cols], dtype=np.int64)
    r_at = np.array([0 if r is None else rep_index[r] for r in reps], dtype=np.int64)
    where = [f"row '{r}', col '{c}'" + (f", replicate '{q}'" if q is not None else "")
             for r, c, q in zip(rows, cols, reps)]

    prep = _prepare(fit, new_rows=new_rows, new_cols=new_cols, max_draws=max_draws, seed=seed)
    design = prep["design"]
    x_at = None if design is None else _at_covariates(at, design, where)        # (L, p)
    S, n_cols = prep["S"], prep["n_cols"]
    L = len(at)
    mean, sd, interval = np.empty(L), np.empty(L), np.empty((L, 2))
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x9E3])
    n_rep = max(1, -(-4000 // S))
    whole = fit.model.residual in ("kronecker", "full")
    need = np.unique(i_at)
    step = need.size if whole else max(1, BLOCK_VALUES // (S * R * n_cols))
    for lo in range(0, need.size, step):
        block = np.arange(prep["n_rows"]) if whole else need[lo:lo + step]
        mu, var = _block_moments(prep, block, new_observation=new_observation)     # (S, R, nb, K')
        lines = np.flatnonzero(np.isin(i_at, block))
        pos = np.searchsorted(block, i_at[lines])
        mu_l = mu[:, r_at[lines], pos, j_at[lines]]                                 # (S, Lb)
        var_l = var[:, r_at[lines], pos, j_at[lines]]
        if x_at is not None:   # the grid's covariates swapped for the line's own
            x_grid = prep["x_grid"][r_at[lines], i_at[lines], j_at[lines]]          # (Lb, p)
            mu_l = mu_l + ((x_at[lines] - x_grid) @ prep["coef"].T).T
        mean[lines] = mu_l.mean(axis=0)
        sd[lines] = np.sqrt(np.maximum(var_l.mean(axis=0) + mu_l.var(axis=0), 0.0))
        chunk = max(1, BLOCK_VALUES // (n_rep * S))
        for a in range(0, lines.size, chunk):
            part = slice(a, a + chunk)
            m, v = mu_l[:, part], np.maximum(var_l[:, part], 0.0)
            sample = m[None] + np.sqrt(v)[None] * rng.standard_normal((n_rep,) + m.shape)
            interval[lines[part]] = hdi(sample.reshape((1, n_rep * S) + m.shape[1:]), ci_prob)
        if whole:
            break
    observed = np.full(L, np.nan)
    old = (i_at < N) & (j_at < K)
    seen = np.zeros(L, bool)
    seen[old] = data.mask[r_at[old], i_at[old], j_at[old]]
    observed[seen] = data.values[r_at[seen], i_at[seen], j_at[seen]]
    same = seen.copy()
    if x_at is not None and seen.any():
        fitted_x = prep["x_grid"][r_at[seen], i_at[seen], j_at[seen]]
        same[seen] = np.all(np.isclose(x_at[seen], fitted_x, rtol=1e-12, atol=1e-12), axis=1)
    frame = {"row": rows, "col": cols}
    if R > 1:
        frame["replicate"] = [str(data.replicate_labels[k]) for k in r_at]
    if design is not None:
        for v in design.variables:
            frame[v] = at[v].to_numpy()
    frame.update({"observed": observed, "mean": mean, "sd": sd, "lower": interval[:, 0], "upper": interval[:, 1],
                  "kind": np.where(same, "fitted", "predicted")})
    return pd.DataFrame(frame)


def _new_labels(labels, existing, side: str) -> tuple[str, ...]:
    if isinstance(labels, str):
        labels = [labels]
    labels = tuple(str(x) for x in labels)
    what = "row" if side == "row" else "column"
    clash = [x for x in labels if x in existing]
    if clash:
        raise FitError(f"The new {what}s must not be {what}s of the table; got {', '.join(map(repr, clash))}.")
    if len(set(labels)) != len(labels):
        raise FitError(f"The new {what}s must be distinct; got {', '.join(labels)}.")
    return labels


#: Values (draws x interval repeats x cells) held at once while predicting a block of rows.
BLOCK_VALUES = 20_000_000


def cell_moments(fit, *, new_observation: bool = False, new_rows: Sequence[str] = (), new_cols: Sequence[str] = (),
                 max_draws: int | None = None, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per draw, the Gaussian law of each cell's mean (or new observation) given the observed cells.

    Returns
    -------
    (mu, var) : arrays (S, R, N + len(new_rows), K + len(new_cols))
        Conditional mean and variance per draw and cell; NaN at cells whose covariate values
        are unknown (see :func:`predict`).
    """
    new_rows = _new_labels(new_rows, fit.data.row_labels, "row")
    new_cols = _new_labels(new_cols, fit.data.col_labels, "col")
    prep = _prepare(fit, new_rows=new_rows, new_cols=new_cols, max_draws=max_draws, seed=seed)
    mu, var = _block_moments(prep, np.arange(prep["n_rows"]), new_observation=new_observation)
    if prep["known"] is not None:
        mu = np.where(prep["known"][None], mu, np.nan)
        var = np.where(prep["known"][None], var, np.nan)
    return mu, var


def _prepare(fit, *, new_rows, new_cols, max_draws, seed) -> dict:
    """What every block of rows needs: the draws, the layout, new levels' scales (drawn once)."""

    spec, data = fit.model, fit.data
    params, n_chain, n_draw = flat_parameters(fit)
    S_all = n_chain * n_draw
    lay, plan = full_layout(fit)
    if plan is not None:
        for name, value in plan.constants.items():
            params.setdefault(name, np.full(S_all, value))
    design = fit_design(fit)
    coef = None if design is None else flat_coef(fit, design)           # (S_all, p)
    if max_draws is not None and max_draws < S_all:
        pick = np.sort(np.random.default_rng(seed).choice(S_all, size=max_draws, replace=False))
        params = {k: v[pick] for k, v in params.items()}
        coef = None if coef is None else coef[pick]
    S = min(S_all, max_draws) if max_draws is not None else S_all
    R, N, K = data.values.shape
    nr, nc = len(new_rows), len(new_cols)
    _check_new_levels(spec, nr, nc)
    rng = np.random.default_rng([0 if seed is None else int(seed), 0x5EED])
    grid_params = dict(params)
    for side, extra in (("row", nr), ("col", nc)):
        if extra and getattr(spec, f"{side}_scale") == "hetero":
            loc = params[f"{side}_log_sd_loc"].reshape(S, 1)
            scale = params[f"{side}_log_sd_scale"].reshape(S, 1)
            drawn = np.exp(loc + scale * rng.standard_normal((S, extra)))
            grid_params[f"{side}_sd"] = np.concatenate([params[f"{side}_sd"], drawn], axis=1)
    x_grid = known = None
    if coef is not None:   # the covariates at every cell of the grid where they are known
        x_grid, known = covariate_grid(design, data, n_rows=N + nr, n_cols=K + nc)
    return dict(spec=spec, data=data, lay=lay, params=params, grid_params=grid_params, S=S, R=R, N=N, K=K,
                nr=nr, nc=nc, n_rows=N + nr, n_cols=K + nc, design=design if coef is not None else None,
                coef=coef, x_grid=x_grid, known=known)


def _check_new_covariates(prep: dict) -> None:
    """:class:`FitError` when new rows (columns) were asked for and a covariate term has no value there."""
    known, N, K = prep["known"], prep["N"], prep["K"]
    if known is None or not (prep["nr"] or prep["nc"]):
        return
    new = np.ones(known.shape[1:], bool)
    new[:N, :K] = False
    if known[:, new].all():
        return
    what = " and ".join(w for w, n in (("rows", prep["nr"]), ("columns", prep["nc"])) if n)
    raise FitError(f"The new {what} cannot be predicted without their covariate values: "
                   f"{missing_terms_text(prep['design'], new_rows=bool(prep['nr']), new_cols=bool(prep['nc']))}; "
                   "predict them with at= (twoway predict --at FILE), a table of the cells with their covariate "
                   "values.")


def _extend(x: np.ndarray, axis: int, n_new: int) -> np.ndarray:
    """``x`` with ``n_new`` zeros appended along ``axis`` (new levels)."""
    if not n_new:
        return x
    shape = list(x.shape)
    shape[axis] = n_new
    return np.concatenate([x, np.zeros(shape)], axis=axis)


def _block_moments(prep: dict, rows: np.ndarray, *, new_observation: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mu, var), (S, R, len(rows), K'), for the rows ``rows`` of the extended grid (new rows after N)."""

    spec, data, lay, params, grid_params = prep["spec"], prep["data"], prep["lay"], prep["params"], prep["grid_params"]
    S, R, N, K, nr, nc = prep["S"], prep["R"], prep["N"], prep["K"], prep["nr"], prep["nc"]
    nb, n_cols = rows.size, K + nc
    is_new_row = rows >= N
    new_col = np.arange(n_cols) >= K

    # the mean part: intercept + effects (new levels: 0 mean, their law's variance)
    mu = np.zeros((S, R, nb, n_cols))
    var = np.zeros_like(mu)
    if "intercept" in params:
        mu += params["intercept"].reshape(S, 1, 1, 1)
    if spec.row_effect != "none":
        mu += _extend(params["row_effect"], 1, nr)[:, rows][:, None, :, None]
        if is_new_row.any():
            var[:, :, is_new_row, :] += params["row_effect_sd"].reshape(S, 1, 1, 1) ** 2
    if spec.col_effect != "none":
        mu += _extend(params["col_effect"], 1, nc)[:, None, None, :]
        if nc:
            var[:, :, :, new_col] += params["col_effect_sd"].reshape(S, 1, 1, 1) ** 2
    old_rows = rows[~is_new_row]
    if "cell_effect" in params:
        cell = np.zeros((S, nb, n_cols))
        cell[:, ~is_new_row, :K] = params["cell_effect"].reshape(S, N, K)[:, old_rows]
        mu += cell[:, None]
    if "cell_sd" in params and (nr or nc):
        new = is_new_row[:, None] | new_col[None, :]
        var[:, :, new] += params["cell_sd"].reshape(S, 1, 1) ** 2
    if prep["x_grid"] is not None:   # the covariates' part x' coef (0 where x is unknown)
        mu += np.einsum("rbkp,sp->srbk", prep["x_grid"][:, rows], prep["coef"])

    # the residual's noise on the block (known se at observed cells only)
    block_params = dict(grid_params)
    if getattr(spec, "row_scale") == "hetero":
        block_params["row_sd"] = grid_params["row_sd"][:, rows]
    se_grid = np.zeros((R, nb, n_cols))
    se_grid[:, ~is_new_row, :K] = np.where(data.mask[:, old_rows], lay.se[:, old_rows], 0.0)
    grid = dataclasses.replace(lay, se=se_grid, mask=np.ones_like(se_grid))
    noise = np.broadcast_to(noise_variance(NUMPY, spec, grid, block_params), mu.shape)

    # the correlated part of the residual
    if spec.residual == "latent":
        for side in ("row", "col"):
            kind = getattr(spec, f"{side}_scale")
            if kind == "none":
                continue
            sd = grid_params[f"{side}_sd"]
            sd2 = np.broadcast_to((sd.reshape(S, 1) if kind == "homo" else sd) ** 2, (S, N + nr if side == "row"
                                                                                      else n_cols))
            if side == "row":
                mu += _extend(params["row_shock"], 2, nr)[:, :, rows][..., None]
                var[:, :, is_new_row, :] += sd2[:, rows][:, is_new_row][:, None, :, None]
            else:
                mu += _extend(params["col_shock"], 2, nc)[:, :, None, :]
                var[:, :, :, new_col] += sd2[:, new_col][:, None, None, :]
    elif spec.residual in ("kronecker", "full"):   # whole tables only (no new levels): rows is every row
        g_mu, g_var = _correlated_part(spec, lay, data, params, mu, noise)
        mu = mu + g_mu
        var = var + g_var
    if new_observation:
        var = var + noise
    return mu, var


def _check_new_levels(spec, nr: int, nc: int) -> None:
    for side, n in (("row", nr), ("col", nc)):
        if not n:
            continue
        what = "row" if side == "row" else "column"
        if getattr(spec, f"{side}_effect") == "fixed":
            raise FitError(f"The {what} effects are fixed: a new {what} has no data and no law to predict its "
                           f"effect from; fit {side}_effect = 'random' to predict new {what}s.")
        if getattr(spec, f"{side}_effect_cov") is not None:
            raise FitError(f"The {what} effects have a known relationship matrix, which has no entry for a new "
                           f"{what}; refit with the new {what} in the matrix.")
        if spec.residual in ("kronecker", "full"):
            raise FitError(f"The {spec.residual} residual's structure has no law for a new {what}; "
                           f"new {what}s can be predicted under the independent or latent residual.")


def _correlated_part(spec, lay, data, params, mean, noise, *, structured: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Conditional mean and variance (S, R, N, K) of the Kronecker / full residual's correlated part.

    A replicate table with every cell observed and one noise variance under a Kronecker residual
    goes through the eigen-decompositions of U and V (O(N^3 + K^3) per draw); any other
    (missing cells, unequal se, a full covariance) through one Cholesky factor of the observed
    cells' covariance, O(n_o^3 + n_o^2 N K) per draw and replicate. ``structured=False`` sends
    every table the second way (the dense twin the tests compare with).
    """
    import scipy.linalg as sla


    S, R, N, K = mean.shape
    values = np.nan_to_num(data.values)
    mask = data.mask
    factors = kronecker_factors(spec, lay, params) if spec.residual == "kronecker" else {}
    g_mu = np.zeros((S, R, N, K))
    g_var = np.zeros((S, R, N, K))
    for s in range(S):
        point = {k: v[s] for k, v in params.items()}
        point.update({k: v[s] for k, v in factors.items()})
        T = None
        eig = None
        for r in range(R):
            resid = values[r] - mean[s, r]
            nz = noise[s, r]
            if structured and factors and mask[r].all() and np.ptp(nz) == 0:
                if eig is None:
                    eig = (np.linalg.eigh(point["_row_cov"]), np.linalg.eigh(point["_col_cov"]))
                g_mu[s, r], g_var[s, r] = _kronecker_conditional(eig, resid, float(nz.flat[0]))
                continue
            if T is None:
                T = np.asarray(table_covariance(NUMPY, spec, lay, point))      # (NK, NK)
            o = np.flatnonzero(mask[r].ravel())
            if o.size == 0:
                g_var[s, r] = np.diag(T).reshape(N, K)
                continue
            e = resid.ravel()[o]
            C = T[np.ix_(o, o)] + np.diag(nz.ravel()[o])
            A = T[:, o]                                                        # (NK, n_o)
            try:
                L = np.linalg.cholesky(C)
                alpha = sla.cho_solve((L, True), e, check_finite=False)
                B = sla.solve_triangular(L, A.T, lower=True, check_finite=False)   # L^-1 A'
            except np.linalg.LinAlgError:    # a singular covariance (no noise, a low-rank factor)
                pinv = np.linalg.pinv(C, hermitian=True)
                alpha = pinv @ e
                B = None
                quad = np.einsum("ao,op,ap->a", A, pinv, A)
            g_mu[s, r] = (A @ alpha).reshape(N, K)
            if B is not None:
                quad = np.einsum("oa,oa->a", B, B)
            g_var[s, r] = np.maximum(np.diag(T) - quad, 0.0).reshape(N, K)
    return g_mu, g_var


def _kronecker_conditional(eig, resid: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """g | g + eps = resid for g ~ N(0, U (x) V), eps ~ N(0, noise I), on a complete (N, K) table.

    With ``U = Qu diag(lu) Qu'`` and ``V = Qv diag(lv) Qv'`` the covariance of the table is
    diagonal in the basis ``Qu (x) Qv`` with eigenvalues ``lu lv' (+ noise)``: the conditional mean
    shrinks each coordinate by ``l / (l + noise)`` and the conditional variance is
    ``l noise / (l + noise)`` there, mapped back cell by cell through ``Qu^2`` and ``Qv^2``.
    """
    (lu, qu), (lv, qv) = eig
    lam = np.maximum(np.outer(lu, lv), 0.0)
    total = lam + noise
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = np.where(total > 0, lam / total, 1.0)
        post_var = np.where(total > 0, lam * noise / total, 0.0)
    mu = qu @ ((qu.T @ resid @ qv) * shrink) @ qv.T
    var = (qu * qu) @ post_var @ (qv * qv).T
    return mu, np.maximum(var, 0.0)
