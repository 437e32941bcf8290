"""Posterior predictive checks: replicated tables and the statistics users look at.

:func:`posterior_predictive` draws replicated tables ``y_rep`` from the fitted
model, one per posterior draw, with the missing cells of the observed table
left missing. :func:`predictive_checks` compares statistics of the observed
table with the same statistics of the replicated tables:

* per row and per column: the mean and the variance of the observed cells
  (pooled over replicate tables);
* the correlation between rows (the mean off-diagonal entry of the N x N
  correlation matrix of rows, columns and replicates being the observations)
  and between columns;
* the overall mean and standard deviation;
* ``cell_mean_var``: the variance of the cell means' interaction (each cell's
  mean over replicates, less its row's and column's mean, plus the grand
  mean). With replicate tables, a model without a random cell effect
  (``cell_sd``) replicates it too small when the data's cells keep a
  deviation across replicates: its p-value is then near 0 or 1.

Each comes with its observed value, the mean of the replicated values, and the
posterior predictive p-value ``P(T(y_rep) >= T(y))`` (ties count half).

The statistics are pure functions of arrays ``(..., R, N, K)`` with NaN at
missing cells, so they apply to one table or to a stack of replicates alike;
:func:`cell_statistics` computes the same from the observed cells alone
(``(..., n_obs)`` values and their indices), which is what
:func:`predictive_checks` uses: its memory and time grow with the observed cells
and the replicated tables, never with the grid (a chunk of replicated tables at a
time). The correlations between rows and between columns need the dense grid and
``N^2 K + K^2 N`` operations per table: they are computed when that is cheap
(:func:`correlations_affordable`) and left NaN otherwise, with a note.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from twoway.errors import FitError
from twoway.results.moments import draw_indices, iter_moments

__all__ = [
    "masked_mean_var",
    "row_stats",
    "col_stats",
    "pairwise_corr",
    "mean_offdiag_corr",
    "cell_interaction_var",
    "table_statistics",
    "statistic_names",
    "flatten_statistics",
    "ppp_values",
    "cell_statistics",
    "checks_size",
    "correlations_affordable",
    "posterior_predictive",
    "predictive_checks",
    "CORRELATION_BUDGET",
]

#: The most operations the row and column correlations of the replicated tables may cost in all
#: (``draws x R (N^2 K + K^2 N)``); beyond it they are left out of the checks (NaN).
CORRELATION_BUDGET = 2e9
#: Values (replicated tables x observed cells) held at once by :func:`predictive_checks`.
CHUNK_VALUES = 4_000_000


# ---------------------------------------------------------------------------
# statistics of tables (pure functions)
# ---------------------------------------------------------------------------


def masked_mean_var(y, axis) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof=1) of the non-NaN entries of ``y`` over ``axis``.

    Parameters
    ----------
    y : array
        NaN marks a missing entry.
    axis : int or tuple of int

    Returns
    -------
    (mean, var) : arrays, the shape of ``y`` without ``axis``
        NaN where no entry is present (mean) or fewer than two are (var).
    """
    y = np.asarray(y, dtype=float)
    present = ~np.isnan(y)
    count = present.sum(axis=axis)
    filled = np.where(present, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=axis) / count
        centred = np.where(present, y - np.expand_dims(mean, axis), 0.0)
        var = (centred * centred).sum(axis=axis) / (count - 1)
    mean = np.where(count > 0, mean, np.nan)
    var = np.where(count > 1, var, np.nan)
    return mean, var


def row_stats(y) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each row's observed cells, pooled over replicates.

    Parameters
    ----------
    y : array (..., R, N, K)

    Returns
    -------
    (mean, var) : arrays (..., N)
    """
    return masked_mean_var(y, axis=(-3, -1))


def col_stats(y) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each column's observed cells, pooled over replicates.

    Parameters
    ----------
    y : array (..., R, N, K)

    Returns
    -------
    (mean, var) : arrays (..., K)
    """
    return masked_mean_var(y, axis=(-3, -2))


def _variables_by_observations(y, axis: str) -> np.ndarray:
    """Reshape (..., R, N, K) to (..., N, R*K) for rows or (..., K, R*N) for columns."""
    y = np.asarray(y, dtype=float)
    lead = y.shape[:-3]
    n_rep, n_row, n_col = y.shape[-3:]
    if axis == "row":
        moved = np.moveaxis(y, -2, -3)  # (..., N, R, K)
        return moved.reshape(lead + (n_row, n_rep * n_col))
    moved = np.moveaxis(y, -1, -3)  # (..., K, R, N)
    return moved.reshape(lead + (n_col, n_rep * n_row))


def pairwise_corr(x) -> np.ndarray:
    """Pearson correlations between variables over their pairwise-complete observations.

    Parameters
    ----------
    x : array (..., V, M)
        V variables observed M times; NaN marks a missing observation.

    Returns
    -------
    array (..., V, V)
        NaN for pairs with fewer than two common observations or no spread.
    """
    x = np.asarray(x, dtype=float)
    w = (~np.isnan(x)).astype(float)
    centre, _ = masked_mean_var(x, axis=-1)  # centring first only improves rounding
    x0 = np.where(w > 0, x - np.nan_to_num(centre)[..., None], 0.0)
    wt = np.swapaxes(w, -1, -2)
    n = w @ wt
    sx = x0 @ wt  # sx[a, b]: sum of x_a over the observations a and b share
    sy = np.swapaxes(sx, -1, -2)
    sxx = (x0 * x0) @ wt
    syy = np.swapaxes(sxx, -1, -2)
    sxy = x0 @ np.swapaxes(x0, -1, -2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        va = sxx - sx * sx / n
        vb = syy - sy * sy / n
        corr = cov / np.sqrt(va * vb)
    ok = (n >= 2) & (va > 0) & (vb > 0)
    return np.where(ok, np.clip(corr, -1.0, 1.0), np.nan)


def mean_offdiag_corr(y, axis: str) -> np.ndarray:
    """Mean correlation between rows (or between columns) of a table.

    Rows are the variables and (replicate, column) pairs the observations
    (for ``axis="col"``: columns, over (replicate, row) pairs); correlations
    use pairwise-complete observations, and the mean runs over the pairs
    where a correlation exists.

    Parameters
    ----------
    y : array (..., R, N, K)
    axis : {"row", "col"}

    Returns
    -------
    array (...,)
        NaN where no pair has a correlation.
    """
    if axis not in ("row", "col"):
        raise FitError(f"The axis must be 'row' or 'col'; got {axis!r}.")
    corr = pairwise_corr(_variables_by_observations(y, axis))
    v = corr.shape[-1]
    upper = np.triu_indices(v, k=1)
    pairs = corr[..., upper[0], upper[1]]
    present = ~np.isnan(pairs)
    count = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, pairs, 0.0).sum(axis=-1) / count
    return np.where(count > 0, mean, np.nan)


def cell_interaction_var(y) -> np.ndarray:
    """Variance of the interaction of the cell means of a table.

    Each cell's mean over replicates, less the mean of its row and of its
    column (means of the cell means) plus their grand mean; the variance
    (ddof=1) over the cells that have a mean.

    Parameters
    ----------
    y : array (..., R, N, K)
        NaN at missing cells.

    Returns
    -------
    array (...,)
    """
    cell, _ = masked_mean_var(y, axis=-3)                       # (..., N, K)
    row, _ = masked_mean_var(cell, axis=-1)                     # (..., N)
    col, _ = masked_mean_var(cell, axis=-2)                     # (..., K)
    grand, _ = masked_mean_var(cell, axis=(-2, -1))             # (...,)
    inter = cell - row[..., :, None] - col[..., None, :] + grand[..., None, None]
    return masked_mean_var(inter, axis=(-2, -1))[1]


def table_statistics(y) -> dict[str, np.ndarray]:
    """Every checked statistic of a table or a stack of tables.

    Parameters
    ----------
    y : array (..., R, N, K)
        NaN at missing cells.

    Returns
    -------
    dict of str to array
        ``mean``, ``sd`` (...,); ``row_mean``, ``row_var`` (..., N);
        ``col_mean``, ``col_var`` (..., K); ``cell_mean_var``, ``row_corr``,
        ``col_corr`` (...,).
    """
    y = np.asarray(y, dtype=float)
    if y.ndim < 3:
        raise FitError(f"The tables must have at least 3 dims (replicate, row, col); got shape {y.shape}.")
    mean, var = masked_mean_var(y, axis=(-3, -2, -1))
    row_mean, row_var = row_stats(y)
    col_mean, col_var = col_stats(y)
    return {
        "mean": mean,
        "sd": np.sqrt(var),
        "row_mean": row_mean,
        "row_var": row_var,
        "col_mean": col_mean,
        "col_var": col_var,
        "cell_mean_var": cell_interaction_var(y),
        "row_corr": mean_offdiag_corr(y, "row"),
        "col_corr": mean_offdiag_corr(y, "col"),
    }


_ORDER = ("mean", "sd", "row_mean", "row_var", "col_mean", "col_var", "cell_mean_var", "row_corr", "col_corr")


def statistic_names(row_labels: Sequence[str], col_labels: Sequence[str]) -> list[str]:
    """Names of the statistics in :func:`flatten_statistics` order, e.g. ``row_mean[T1]``."""
    names: list[str] = []
    for key in _ORDER:
        if key.startswith("row_") and key != "row_corr":
            names += [f"{key}[{lab}]" for lab in row_labels]
        elif key.startswith("col_") and key != "col_corr":
            names += [f"{key}[{lab}]" for lab in col_labels]
        else:
            names.append(key)
    return names


def flatten_statistics(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the output of :func:`table_statistics` along a last axis.

    Returns
    -------
    array (..., n_statistics)
        In the order of :func:`statistic_names`.
    """
    parts = []
    for key in _ORDER:
        value = np.asarray(stats[key], dtype=float)
        parts.append(value if key in ("row_mean", "row_var", "col_mean", "col_var") else value[..., None])
    return np.concatenate(parts, axis=-1)


def ppp_values(observed, replicated) -> np.ndarray:
    """Posterior predictive p-values ``P(T(y_rep) >= T(y))``, ties counting half.

    Parameters
    ----------
    observed : array (m,)
        The statistics of the observed table.
    replicated : array (S, m)
        The same statistics of S replicated tables; NaN entries are left out.

    Returns
    -------
    array (m,)
        In [0, 1]; NaN where the observed statistic is NaN or no replicate has one.
    """
    observed = np.asarray(observed, dtype=float)
    replicated = np.asarray(replicated, dtype=float)
    present = ~np.isnan(replicated)
    count = present.sum(axis=0)
    above = ((replicated > observed) & present).sum(axis=0)
    ties = ((replicated == observed) & present).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (above + 0.5 * ties) / count
    return np.where((count > 0) & ~np.isnan(observed), p, np.nan)


# ---------------------------------------------------------------------------
# the same statistics from the observed cells alone (long form)
# ---------------------------------------------------------------------------


class _Groups:
    """Which group each of n members belongs to, as a sparse (G, n) indicator, and the group sizes."""

    def __init__(self, groups: np.ndarray, n_groups: int):
        from scipy import sparse

        self.groups = np.asarray(groups, dtype=np.int64)
        n = self.groups.size
        self.count = np.bincount(self.groups, minlength=n_groups).astype(float)[:, None]     # (G, 1)
        self.member = sparse.csr_matrix((np.ones(n), (self.groups, np.arange(n))), shape=(n_groups, n))

    def mean_var(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (ddof=1) of each group of the rows of ``y`` (n, S): arrays (G, S),
        NaN where a group has no member (mean) or fewer than two (var)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.asarray(self.member @ y) / self.count
            centred = y - np.nan_to_num(mean)[self.groups]
            centred *= centred
            var = np.asarray(self.member @ centred) / (self.count - 1)
        mean[self.count[:, 0] == 0] = np.nan
        var[self.count[:, 0] <= 1] = np.nan
        return mean, var


def _all_mean_var(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof=1) of each column of ``y`` (n, S): arrays (S,), NaN as :func:`masked_mean_var`."""
    n = y.shape[0]
    if n == 0:
        return np.full(y.shape[1], np.nan), np.full(y.shape[1], np.nan)
    mean = y.mean(axis=0)
    if n < 2:
        return mean, np.full(y.shape[1], np.nan)
    centred = y - mean
    centred *= centred
    return mean, centred.sum(axis=0) / (n - 1)


class _Layout:
    """The observed cells' groups (rows, columns, cells and the cells' rows and columns), built once."""

    def __init__(self, index, shape):
        self.rr, self.ii, self.jj = (np.asarray(a, dtype=np.int64) for a in index)
        self.shape = tuple(int(v) for v in shape)
        R, N, K = self.shape
        self.rows = _Groups(self.ii, N)
        self.cols = _Groups(self.jj, K)
        cell_id, cell_of = np.unique(self.ii * K + self.jj, return_inverse=True)
        self.cell_of = cell_of.reshape(-1)
        self.unique_cells = cell_id.size == self.ii.size      # one replicate per cell: each cell its own mean
        self.cells = None if self.unique_cells else _Groups(self.cell_of, cell_id.size)
        self.cell_rows = _Groups(cell_id // K, N)
        self.cell_cols = _Groups(cell_id % K, K)

    def statistics(self, y: np.ndarray, correlations: bool) -> dict[str, np.ndarray]:
        """The statistics of tables given as the columns of ``y`` (n, S); each value (S,) or (S, levels)."""
        R, N, K = self.shape
        S = y.shape[1]
        mean, var = _all_mean_var(y)
        row_mean, row_var = self.rows.mean_var(y)
        col_mean, col_var = self.cols.mean_var(y)
        if self.unique_cells:
            cell = np.empty_like(y)
            cell[self.cell_of] = y
        else:
            cell, _ = self.cells.mean_var(y)                                       # (C, S)
        rm, _ = self.cell_rows.mean_var(cell)
        cm, _ = self.cell_cols.mean_var(cell)
        grand, _ = _all_mean_var(cell)
        inter = cell - rm[self.cell_rows.groups] - cm[self.cell_cols.groups] + grand
        _, inter_var = _all_mean_var(inter)
        row_corr = np.full(S, np.nan)
        col_corr = np.full(S, np.nan)
        if correlations:
            step = max(1, CHUNK_VALUES // max(R * N * K, 1))
            for lo in range(0, S, step):
                hi = min(S, lo + step)
                dense = np.full((hi - lo, R, N, K), np.nan)
                dense[:, self.rr, self.ii, self.jj] = y[:, lo:hi].T
                row_corr[lo:hi] = mean_offdiag_corr(dense, "row")
                col_corr[lo:hi] = mean_offdiag_corr(dense, "col")
        return {"mean": mean, "sd": np.sqrt(var), "row_mean": row_mean.T, "row_var": row_var.T,
                "col_mean": col_mean.T, "col_var": col_var.T, "cell_mean_var": inter_var, "row_corr": row_corr,
                "col_corr": col_corr}


def correlations_affordable(shape: tuple[int, int, int], tables: int = 1) -> bool:
    """Whether the row and column correlations of ``tables`` tables of ``shape`` (R, N, K) are cheap enough.

    They cost about ``R (N^2 K + K^2 N)`` operations per table (pairwise-complete
    correlations of the dense grid); affordable within :data:`CORRELATION_BUDGET` in all.
    """
    R, N, K = (int(v) for v in shape)
    return max(int(tables), 1) * R * (N * N * K + K * K * N) <= CORRELATION_BUDGET


def checks_size(shape: tuple[int, int, int], n_obs: int, draws: int, *,
                correlations: bool | None = None) -> tuple[int, float]:
    """What :func:`predictive_checks` of ``draws`` replicated tables holds at once and computes, before it starts.

    Parameters
    ----------
    shape : (R, N, K)
        The table's shape.
    n_obs : int
        Its observed cells.
    draws : int
        Replicated tables.
    correlations : bool, optional
        As :func:`predictive_checks` (default: when :func:`correlations_affordable`).

    Returns
    -------
    (bytes, operations) : int, float
        The peak memory of the replicated values and their statistics (not the fit's own
        arrays nor the laws of the draws), and a rough count of floating-point operations.
    """
    R, N, K = (int(v) for v in shape)
    draws, n_obs = max(int(draws), 1), max(int(n_obs), 1)
    if correlations is None:
        correlations = correlations_affordable(shape, draws + 1)
    chunk = min(draws, max(1, CHUNK_VALUES // n_obs))
    held = 8 * (6 * chunk * n_obs + 2 * draws * (2 * N + 2 * K + 5))    # a chunk and its temporaries; the statistics
    flops = 40.0 * draws * n_obs
    if correlations:
        dense = min(draws, max(1, CHUNK_VALUES // (R * N * K)))
        held += 8 * 6 * dense * R * N * K
        flops += 6.0 * draws * R * (N * N * K + K * K * N)
    return int(held), float(flops)


def cell_statistics(y, index, shape, *, correlations: bool = True) -> dict[str, np.ndarray]:
    """Every checked statistic (as :func:`table_statistics`) of tables given at their observed cells.

    Parameters
    ----------
    y : array (n,) or (S, n)
        The values of one table (or of S tables) at the observed cells.
    index : (rr, ii, jj) of int arrays (n,)
        The replicate, row and column of each observed cell (each cell at most once).
    shape : (R, N, K)
        The table's shape.
    correlations : bool
        Compute ``row_corr`` and ``col_corr`` (on the dense grid, a chunk of tables at a
        time); False leaves them NaN.

    Returns
    -------
    dict of str to array
        As :func:`table_statistics` of the dense tables (to rounding): ``mean``, ``sd``,
        ``cell_mean_var``, ``row_corr``, ``col_corr`` (S,) or scalars for one table;
        ``row_mean``, ``row_var`` (S, N) or (N,); ``col_mean``, ``col_var`` (S, K) or (K,).
    """
    y = np.asarray(y, dtype=float)
    single = y.ndim == 1
    columns = np.ascontiguousarray(np.atleast_2d(y).T)                      # (n, S): a table per column
    out = _Layout(index, shape).statistics(columns, correlations)
    return {k: v[0] for k, v in out.items()} if single else out


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


def _check_max_draws(draws) -> None:
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1):
        raise FitError(f"The number of draws must be a whole number >= 1; got {draws!r}.")


def posterior_predictive(fit, *, draws: int | None = 500, seed: int | None = 0,
                         conditional: bool = True) -> xr.Dataset:
    """Replicated tables drawn from the fitted model, one per posterior draw.

    Parameters
    ----------
    fit : Fit
    draws : int, optional
        At most this many posterior draws, chosen at random without
        replacement (default 500; None: all of them).
    seed : int, optional
        Seed for choosing the draws and drawing the tables.
    conditional : bool
        True: given the drawn row and column effects (new residuals only);
        False: with the random effects drawn afresh as well.

    Returns
    -------
    xarray.Dataset
        Variable ``y_rep`` with dims (sample, replicate, row, col), NaN at
        the missing cells of the observed table; coordinates ``chain`` and
        ``draw`` along ``sample`` say which posterior draw made each table.
    """

    _check_max_draws(draws)
    data = fit.data
    pairs = draw_indices(fit, draws, seed=seed)
    rng = np.random.default_rng(seed)
    rr, ii, jj = data.observed_index()
    out = np.full((len(pairs),) + data.values.shape, np.nan)
    for s, m in enumerate(iter_moments(fit, pairs, conditional=conditional)):
        out[s, rr, ii, jj] = m.sample(rng, 1)[0]
    return xr.Dataset(
        {"y_rep": (("sample", "replicate", "row", "col"), out)},
        coords={
            "sample": np.arange(len(pairs)),
            "chain": ("sample", np.array([c for c, _ in pairs], dtype=int)),
            "draw": ("sample", np.array([d for _, d in pairs], dtype=int)),
            "replicate": list(data.replicate_labels),
            "row": list(data.row_labels),
            "col": list(data.col_labels),
        },
        attrs={"twoway_conditional": int(bool(conditional))},
    )


def predictive_checks(fit, *, draws: int | None = 500, seed: int | None = 0,
                      conditional: bool = True, correlations: bool | None = None,
                      progress=None) -> pd.DataFrame:
    """Observed statistics of the table against their posterior predictive distribution.

    The replicated tables are drawn as :func:`posterior_predictive` draws them (the
    same numbers for the same seed) but never held as grids: each is kept at its
    observed cells, a chunk of tables at a time, and reduced to its statistics
    (:func:`cell_statistics`).

    Parameters
    ----------
    fit : Fit
    draws : int, optional
        At most this many replicated tables (default 500).
    seed : int, optional
    conditional : bool
        See :func:`posterior_predictive`.
    correlations : bool, optional
        Check the correlations between rows and between columns (they need the dense
        grid of every replicated table); default: when :func:`correlations_affordable`.
    progress : callable, optional
        Called as ``progress(done, total)`` with the replicated tables done, after each chunk.

    Returns
    -------
    pandas.DataFrame
        One line per statistic (index ``mean``, ``sd``, ``row_mean[T1]``, ...,
        ``row_var[...]``, ``col_mean[...]``, ``col_var[...]``, ``cell_mean_var``,
        ``row_corr``, ``col_corr``); columns ``observed``, ``rep_mean``, ``rep_sd`` (mean and
        sd of the replicated statistic) and ``p_value``
        (``P(T(y_rep) >= T(y))``, ties half). Without the correlations their lines are NaN
        and ``attrs["note"]`` says why.
    """
    _check_max_draws(draws)
    data = fit.data
    shape = data.values.shape
    index = data.observed_index()
    pairs = draw_indices(fit, draws, seed=seed)
    if correlations is None:
        correlations = correlations_affordable(shape, len(pairs) + 1)
    layout = _Layout(index, shape)
    observed = flatten_statistics(layout.statistics(data.values[index][:, None], correlations))[0]
    rng = np.random.default_rng(seed)
    n = index[0].size
    step = max(1, CHUNK_VALUES // max(n, 1))
    parts = []
    chunk = np.empty((n, min(step, max(len(pairs), 1))))       # a replicated table per column
    k = done = 0
    for m in iter_moments(fit, pairs, conditional=conditional):
        chunk[:, k] = m.sample(rng, 1)[0]
        k += 1
        if k == chunk.shape[1]:
            parts.append(flatten_statistics(layout.statistics(chunk, correlations)))
            done += k
            k = 0
            if progress is not None:
                progress(done, len(pairs))
    if k:
        parts.append(flatten_statistics(layout.statistics(chunk[:, :k], correlations)))
        if progress is not None:
            progress(done + k, len(pairs))
    replicated = np.concatenate(parts, axis=0)
    rep_mean, rep_var = masked_mean_var(replicated, axis=0)
    table = pd.DataFrame(
        {"observed": observed, "rep_mean": rep_mean, "rep_sd": np.sqrt(rep_var),
         "p_value": ppp_values(observed, replicated)},
        index=pd.Index(statistic_names(data.row_labels, data.col_labels), name="statistic"),
    )
    if not correlations:
        R, N, K = shape
        table.attrs["note"] = (f"row_corr and col_corr were not checked: on a {N:,} x {K:,} table they need the "
                               f"dense grid of every replicated table (about {R * (N * N * K + K * K * N):.1e} "
                               "operations each); pass correlations=True to check them.")
    return table
