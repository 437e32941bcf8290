"""Predictions of cells of the table: observed ones (fitted) and missing or new ones (predicted).

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
note in the result's ``attrs["note"]``); ``cells=`` predicts any cells, new rows
and columns included, from a table of their covariate values.

Which cells: the cells of a table given as ``cells=`` (``at=`` is its older
name); else the whole grid with ``grid=True``, or the observed cells and the
new levels' cells with ``grid=False``; by default the whole grid when it has at
most :data:`GRID_DEFAULT_CELLS` cells, the observed (and new levels') cells
otherwise. The work goes chunk by chunk over the cells (a few thousand at a
time): memory grows with one chunk and the posterior draws, never with the
grid; ``sink=`` hands each chunk's lines to a writer instead of holding them
(:func:`twoway.table.io.outputs.table_writer`), so that a whole grid of
millions of cells streams to a file.

Per cell the summary is exact in the mean and sd (the mixture over draws of
each draw's Gaussian: ``mean = E[mu]``, ``sd^2 = E[v] + Var[mu]``); the
interval is the highest-density interval of at least :data:`INTERVAL_DRAWS`
draws from that mixture, drawn from a generator per block of
:data:`RNG_CELLS` lines (the same lines give the same interval whatever the
chunk size).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from twoway.errors import DataError, FitError, TwowayWarning
from twoway.likelihood import memory
from twoway.likelihood.diagonal import residual_sd
from twoway.likelihood.marginal import kronecker_factors, table_covariance
from twoway.linalg.ops import NUMPY
from twoway.results.covariates import first_by, fit_design, flat_coef, missing_terms_text
from twoway.results.decomposition import full_layout

# Deferred imports: pandas, scipy (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["GRID_DEFAULT_CELLS", "PREDICTION_COLUMNS", "PredictionSize", "PredictionTotals", "cell_moments",
           "predict", "prediction_size"]

PREDICTION_COLUMNS = ("row", "col", "replicate", "observed", "mean", "sd", "lower", "upper", "kind")

#: The default predicts the whole grid when it has at most this many cells, else the observed cells.
GRID_DEFAULT_CELLS = 100_000
#: Values (cells x interval draws) held at once while predicting a chunk of cells.
BLOCK_VALUES = 2_000_000
#: Lines per random generator of the intervals' draws (chunks are whole numbers of these).
RNG_CELLS = 256
#: Draws from each cell's mixture for its interval, at least (all posterior draws, repeated).
INTERVAL_DRAWS = 4000
#: Lines per frame handed to a sink.
SINK_LINES = 65_536
#: Bytes per line of a prediction table held in memory (numbers, label references, kind), roughly.
LINE_BYTES = 120
#: Seconds per interval draw (normal draw, sort), roughly: for the time estimate of :func:`prediction_size`.
SECONDS_PER_DRAW = 2.5e-8

#: Posterior variables a prediction never reads (derived means: large on big tables).
_UNUSED = ("row_mean", "col_mean")


@dataclasses.dataclass(frozen=True)
class PredictionTotals:
    """What :func:`predict` returns when its lines went to a ``sink``.

    Attributes
    ----------
    lines : int
        Lines handed to the sink.
    fitted, predicted : int
        Lines of kind ``fitted`` and ``predicted``.
    left_out : int
        Cells left out (no covariate values there).
    mean_width : float
        Mean width ``upper - lower`` of the intervals (NaN without lines).
    cells : str
        Which cells: ``grid``, ``observed`` or ``cells`` (a given table).
    note : str
        Said about cells left out ("" when none).
    """

    lines: int
    fitted: int
    predicted: int
    left_out: int
    mean_width: float
    cells: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class PredictionSize:
    """What :func:`prediction_size` says before any work.

    Attributes
    ----------
    lines : int
        Cells to predict (before cells without covariate values are left out).
    cells : str
        ``grid``, ``observed`` or ``cells``.
    grid_cells : int
        Cells of the whole (extended) grid, R x (N + new rows) x (K + new columns).
    draws : int
        Posterior draws used.
    memory_bytes : int
        Bytes of the prediction table if it is held in memory (not with a sink).
    seconds : float
        A rough estimate of the time the intervals take.
    """

    lines: int
    cells: str
    grid_cells: int
    draws: int
    memory_bytes: int
    seconds: float

    def describe(self) -> str:
        """One line for a user: how many cells, which, and the time it may take."""
        which = {"grid": "the whole grid", "observed": "the observed cells",
                 "cells": "the cells asked for"}[self.cells]
        if self.cells == "observed" and self.lines:
            which += f" (of a grid of {self.grid_cells:,} cells)"
        return f"predicting {self.lines:,} cells, {which}, from {self.draws:,} draws (about {_seconds(self.seconds)})"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def predict(fit, *, new_observation: bool = False, ci_prob: float = 0.94,
            new_rows: Sequence[str] = (), new_cols: Sequence[str] = (),
            max_draws: int | None = None, seed: int | None = 0, at=None, cells=None,
            grid: bool | None = None, sink: Callable | None = None,
            progress: Callable[[int, int], None] | None = None):
    """Each cell's mean (or a new observation of it) given the data: the cells asked for, the observed cells,
    or the whole grid.

    Parameters
    ----------
    fit : Fit
    new_observation : bool
        Predict a new observation of each cell (adding the independent noise and known
        se) instead of the cell's mean.
    ci_prob : float
        Probability of the highest-density interval (``lower``, ``upper``).
    new_rows, new_cols : sequence of str
        Labels of levels with no data, predicted from their effects' law: every cell of
        those rows and columns is predicted too.
    max_draws : int, optional
        Use this many posterior draws, chosen at random (default: all of them).
    seed : int, optional
        Seed for the choice of draws and the interval's draws.
    cells : pandas.DataFrame, optional
        The cells to predict, one per line: the table's row and column columns (named as in
        the fitted table, or ``row`` and ``col``), its replicate column when it has several
        replicate tables, and every column the covariates' formula reads. Rows and columns
        not in the table are new levels (as ``new_rows``/``new_cols``; give those only
        without ``cells``).
    at : pandas.DataFrame, optional
        The older name of ``cells`` (give one of them).
    grid : bool, optional
        Without ``cells``: True predicts every cell of the grid (the table's and the new
        levels'), False the observed cells and the new levels' cells; None (default) the
        whole grid when it has at most :data:`GRID_DEFAULT_CELLS` cells, else the observed
        cells and the new levels' cells.
    sink : callable, optional
        Called with each chunk of lines (a pandas.DataFrame with the columns below, in
        order; up to :data:`SINK_LINES` lines) instead of holding them; when it has a method
        ``expect(lines)``, that is called first with the number of lines to come (a writer
        checks there that they fit on disk). :func:`predict` then returns
        :class:`PredictionTotals`.
    progress : callable, optional
        Called as ``progress(done, total)`` (cells) after each chunk.

    Returns
    -------
    pandas.DataFrame or PredictionTotals
        Columns ``row, col, [replicate,] observed, mean, sd, lower, upper, kind``, one line
        per cell: the grid's cells in (replicate, row, column) order or the observed cells
        in that order, the table's own cells first and the new levels' after; ``observed``
        is NaN at missing cells; ``kind`` is ``fitted`` for observed cells and
        ``predicted`` for the others. ``attrs["cells"]`` says which cells (``grid``,
        ``observed``, ``cells``). With a covariate term that varies by cell, the grid's
        cells without an observation have no covariate values and are left out:
        ``attrs["note"]`` says how many, and a :class:`TwowayWarning` too. With ``cells``:
        one line per line of it, in its order, the formula's columns after ``row, col,
        [replicate]``; ``observed`` is the table's value at the cell (NaN where it has
        none); ``kind`` is ``fitted`` for an observed cell with the covariate values it was
        fitted with, ``predicted`` otherwise. With ``sink``: the totals, the lines having
        gone to the sink.

    Raises
    ------
    DataError
        For ``cells`` without a row, column, replicate or covariate column the model needs, a
        missing value there, an unknown replicate or an unseen level of a factor.
    FitError
        For options out of range, new levels the model has no law for, new rows (columns)
        asked for without ``cells`` when a covariate term lives on rows (columns), or a
        table that would not fit in memory (give a ``sink``).
    """
    _check_options(ci_prob, max_draws, grid)
    given = _given_cells(cells, at, new_rows, new_cols, grid)
    sel, prep = _selection(fit, given, new_rows=new_rows, new_cols=new_cols, grid=grid, max_draws=max_draws,
                           seed=seed)
    if sink is None:
        need = sel.n * LINE_BYTES
        if need > memory.DRAWS_FLOOR and need > memory.available_memory() // 2:
            raise FitError(f"The {sel.n:,} predicted cells would take about {memory.gib(need)} of memory as a table "
                           f"and {memory.gib(memory.available_memory())} is available; write them to a file as they "
                           "are computed (twoway predict --out FILE, or sink=), or predict fewer cells (the "
                           "observed cells: grid=False).")
    elif hasattr(sink, "expect"):
        sink.expect(sel.n)
    out = _Collector(sink)
    for lo, hi in _chunks(sel.n, prep["S"]):
        out.add(_predict_lines(prep, sel, lo, hi, new_observation=new_observation, ci_prob=ci_prob, seed=seed))
        if progress is not None:
            progress(hi, sel.n)
    note = ""
    if out.left_out:
        note = (f"{out.left_out} cell(s) without an observation were left out: "
                f"{missing_terms_text(prep['design'])}; predict them with cells= (twoway predict --cells FILE, or "
                "--at FILE), a table of the cells with their covariate values.")
        warnings.warn(note, TwowayWarning, stacklevel=3)
    if sink is not None:
        out.flush()
        return PredictionTotals(lines=out.lines, fitted=out.fitted, predicted=out.lines - out.fitted,
                                left_out=out.left_out, mean_width=out.mean_width, cells=sel.kind, note=note)
    table = out.frame(sel.columns)
    table.attrs["cells"] = sel.kind
    if note:
        table.attrs["note"] = note
    return table


def prediction_size(fit, *, new_rows: Sequence[str] = (), new_cols: Sequence[str] = (),
                    max_draws: int | None = None, at=None, cells=None, grid: bool | None = None) -> PredictionSize:
    """How many cells :func:`predict` with these options predicts, and roughly what it costs, before any work.

    Parameters
    ----------
    fit : Fit
    new_rows, new_cols, max_draws, at, cells, grid
        As for :func:`predict`.

    Returns
    -------
    PredictionSize
    """
    _check_options(0.5, max_draws, grid)
    R, N, K = fit.data.values.shape
    S_all = int(fit.posterior.sizes["chain"]) * int(fit.posterior.sizes["draw"])
    S = S_all if max_draws is None else min(S_all, int(max_draws))
    given = _given_cells(cells, at, new_rows, new_cols, grid)
    if given is not None:
        lines, kind, nr, nc = len(given), "cells", 0, 0
    else:
        nr = len(_new_labels(new_rows, fit.data.row_labels, "row"))
        nc = len(_new_labels(new_cols, fit.data.col_labels, "col"))
        kind = _which(grid, R * (N + nr) * (K + nc))
        new = R * ((N + nr) * (K + nc) - N * K)
        lines = R * N * K + new if kind == "grid" else fit.data.n_observed + new
    draws = S * max(1, -(-INTERVAL_DRAWS // S))
    return PredictionSize(lines=int(lines), cells=kind, grid_cells=int(R * (N + nr) * (K + nc)), draws=S,
                          memory_bytes=int(lines * LINE_BYTES), seconds=float(lines * draws * SECONDS_PER_DRAW))


def _check_options(ci_prob, max_draws, grid) -> None:
    if isinstance(ci_prob, bool) or not isinstance(ci_prob, (int, float, np.floating)) or not 0 < ci_prob < 1:
        raise FitError(f"The interval probability must be between 0 and 1; got {ci_prob!r}.")
    if max_draws is not None and (isinstance(max_draws, bool) or not isinstance(max_draws, (int, np.integer))
                                  or max_draws < 1):
        raise FitError(f"The 'max_draws' option must be a whole number >= 1; got {max_draws!r}.")
    if grid is not None and not isinstance(grid, (bool, np.bool_)):
        raise FitError(f"The 'grid' option must be True, False or None; got {grid!r}.")


def _given_cells(cells, at, new_rows, new_cols, grid):
    """The table of cells asked for (``cells`` or its older name ``at``), or None; FitError for clashing options."""
    if cells is not None and at is not None:
        raise FitError("Give the cells to predict as 'cells' (or its older name 'at'), not both.")
    given = cells if cells is not None else at
    if given is None:
        return None
    if any(len([x] if isinstance(x, str) else x) and x != "" for x in (new_rows, new_cols)):
        raise FitError("Give the cells to predict either as 'cells' (whose rows and columns may be new) or as "
                       "new_rows/new_cols, not both.")
    if grid:
        raise FitError("Give either the cells to predict ('cells') or grid=True (every cell), not both.")
    import pandas as pd

    if not isinstance(given, pd.DataFrame):
        raise DataError(f"The cells to predict must be a table (a pandas DataFrame); got {type(given).__name__}.")
    if len(given) == 0:
        raise DataError("The cells to predict have no line; give one line per cell to predict.")
    return given


def _which(grid, grid_cells: int) -> str:
    if grid is None:
        return "grid" if grid_cells <= GRID_DEFAULT_CELLS else "observed"
    return "grid" if grid else "observed"


# -- which cells ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Selection:
    """The lines to predict: ``n`` of them, of kind ``kind``; :meth:`take` gives lines ``lo..hi-1``.

    ``index`` holds (r, i, j) arrays of every line, or None for the grid's own cells (lines
    ``0..R N K - 1``, C order), followed by ``extra`` (r, i, j) of the new levels' cells.
    """

    n: int
    kind: str
    shape: tuple                      # (R, N, K)
    row_labels: np.ndarray            # (N + nr,) object
    col_labels: np.ndarray            # (K + nc,) object
    replicate_labels: np.ndarray      # (R,) object
    index: tuple | None = None
    extra: tuple | None = None
    x: np.ndarray | None = None       # (n, p): the given cells' covariates
    given: dict | None = None         # the given table's covariate columns, by name
    columns: tuple = ()

    def take(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.index is not None:
            return tuple(a[lo:hi] for a in self.index)
        R, N, K = self.shape
        n_old = R * N * K
        parts = []
        if lo < n_old:
            parts.append(np.unravel_index(np.arange(lo, min(hi, n_old), dtype=np.int64), (R, N, K)))
        if hi > n_old:
            parts.append(tuple(a[max(lo, n_old) - n_old:hi - n_old] for a in self.extra))
        if len(parts) == 1:
            return tuple(np.asarray(a, dtype=np.int64) for a in parts[0])
        return tuple(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(3))


def _selection(fit, given, *, new_rows, new_cols, grid, max_draws, seed) -> tuple[_Selection, dict]:
    """The lines to predict and what every chunk of them needs."""
    data = fit.data
    R, N, K = data.values.shape
    if given is not None:
        r_at, i_at, j_at, new_rows, new_cols, where = _given_index(data, given)
    else:
        new_rows = _new_labels(new_rows, data.row_labels, "row")
        new_cols = _new_labels(new_cols, data.col_labels, "col")
    prep = _prepare(fit, new_rows=new_rows, new_cols=new_cols, max_draws=max_draws, seed=seed)
    labels = dict(row_labels=np.asarray(list(data.row_labels) + list(new_rows), dtype=object),
                  col_labels=np.asarray(list(data.col_labels) + list(new_cols), dtype=object),
                  replicate_labels=np.asarray([str(v) for v in data.replicate_labels], dtype=object))
    base = ("row", "col") + (("replicate",) if R > 1 else ())
    stats = ("observed", "mean", "sd", "lower", "upper", "kind")
    if given is not None:
        design = prep["design"]
        x = None if design is None else _given_covariates(given, design, where)        # (L, p)
        extra_cols = {} if design is None else {v: given[v].to_numpy() for v in design.variables}
        return _Selection(n=len(given), kind="cells", shape=(R, N, K), index=(r_at, i_at, j_at), x=x,
                          given=extra_cols, columns=base + tuple(extra_cols) + stats, **labels), prep
    _check_new_covariates(prep)
    nr, nc = len(new_rows), len(new_cols)
    kind = _which(grid, R * (N + nr) * (K + nc))
    extra = _new_cells(R, N, K, nr, nc)
    if kind == "grid":
        sel = _Selection(n=R * N * K + extra[0].size, kind=kind, shape=(R, N, K), extra=extra,
                         columns=base + stats, **labels)
    else:
        obs = data.observed_index()
        index = tuple(np.concatenate([a, b]).astype(np.int64) for a, b in zip(obs, extra))
        sel = _Selection(n=index[0].size, kind=kind, shape=(R, N, K), index=index, columns=base + stats, **labels)
    return sel, prep


def _new_cells(R: int, N: int, K: int, nr: int, nc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, i, j) of the cells of new rows (i >= N) or new columns (j >= K), C order of the extended grid."""
    if not (nr or nc):
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    new = np.ones((N + nr, K + nc), bool)
    new[:N, :K] = False
    i, j = np.nonzero(new)
    r = np.repeat(np.arange(R, dtype=np.int64), i.size)
    return r, np.tile(i, R).astype(np.int64), np.tile(j, R).astype(np.int64)


def _given_index(data, given):
    """(r, i, j) of each line of the given cells, the new levels they name, and each line in words."""
    names = data.names
    R, N, K = data.values.shape
    row_col = _at_column(given, names.get("row"), "row")
    col_col = _at_column(given, names.get("col"), "col")
    rep_col = _at_column(given, names.get("replicate"), "replicate", required=R > 1)
    rows, cols = _at_labels(given, row_col, "row"), _at_labels(given, col_col, "col")
    reps = _at_labels(given, rep_col, "replicate") if rep_col is not None else [None] * len(given)
    row_index = {str(v): k for k, v in enumerate(data.row_labels)}
    col_index = {str(v): k for k, v in enumerate(data.col_labels)}
    rep_index = {str(v): k for k, v in enumerate(data.replicate_labels)}
    unknown = sorted({r for r in reps if r is not None and r not in rep_index})
    if unknown:
        raise DataError(f"The cells to predict name replicate(s) {_few_names(unknown)} that the table does not "
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
    return r_at, i_at, j_at, new_rows, new_cols, where


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


def _given_covariates(at, design, where: list[str]) -> np.ndarray:
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


# -- chunks of lines -----------------------------------------------------------------------------
def _interval_repeats(S: int) -> int:
    """How many times each posterior draw is repeated in a cell's interval draws (at least INTERVAL_DRAWS)."""
    return max(1, -(-INTERVAL_DRAWS // S))


def _chunks(n: int, S: int):
    """(lo, hi) line ranges of at most BLOCK_VALUES interval draws, whole numbers of RNG_CELLS lines."""
    per_line = S * _interval_repeats(S)
    step = RNG_CELLS * max(1, BLOCK_VALUES // (per_line * RNG_CELLS))
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def _predict_lines(prep: dict, sel: _Selection, lo: int, hi: int, *, new_observation: bool, ci_prob: float,
                   seed) -> dict:
    """The output columns of lines ``lo..hi-1`` (the lines without covariate values dropped) and the count of those."""
    r, i, j = sel.take(lo, hi)
    R, N, K = sel.shape
    x = known = None
    if prep["design"] is not None:
        x, known = (sel.x[lo:hi], None) if sel.x is not None else prep["covariates"].at(r, i, j)
    mu, var = _cell_moments(prep, r, i, j, x, new_observation=new_observation)          # (n, S) each
    mean, sd = _mixture_moments(mu, var)
    interval = _intervals(mu, var, ci_prob, lo, seed)
    old = (i < N) & (j < K)
    seen = np.zeros(r.size, bool)
    seen[old] = prep["mask"][r[old], i[old], j[old]]
    observed = np.full(r.size, np.nan)
    observed[seen] = prep["values"][r[seen], i[seen], j[seen]]
    fitted = seen
    if sel.x is not None and seen.any():   # a given cell is 'fitted' only at the covariate values it was fitted with
        fitted = seen.copy()
        fitted[seen] = np.all(np.isclose(sel.x[lo:hi][seen], prep["covariates"].observed_x(r[seen], i[seen], j[seen]),
                                         rtol=1e-12, atol=1e-12), axis=1)
    cols = {"row": sel.row_labels[i], "col": sel.col_labels[j]}
    if R > 1:
        cols["replicate"] = sel.replicate_labels[r]
    for name, values in (sel.given or {}).items():
        cols[name] = values[lo:hi]
    cols.update({"observed": observed, "mean": mean, "sd": sd, "lower": interval[:, 0], "upper": interval[:, 1],
                 "kind": np.where(fitted, "fitted", "predicted").astype(object)})
    left_out = 0
    if known is not None and not known.all():
        cols = {k: v[known] for k, v in cols.items()}
        left_out = int((~known).sum())
    return {"columns": cols, "left_out": left_out}


def _mixture_moments(mu: np.ndarray, var: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (n,) of each line's mixture over draws of N(mu, var), (n, S) each (var None: 0):
    ``E[mu]``, ``sqrt(E[var] + Var[mu])`` (population variance over the draws)."""
    mean = mu.mean(axis=1)
    centred = mu - mean[:, None]
    spread = np.einsum("ns,ns->n", centred, centred) / mu.shape[1]
    if var is not None:
        spread = spread + var.mean(axis=1)
    return mean, np.sqrt(np.maximum(spread, 0.0))


def _intervals(mu: np.ndarray, var: np.ndarray | None, ci_prob: float, lo: int, seed) -> np.ndarray:
    """HDI (n, 2) of each line's mixture of Gaussians (n, S), from generators per block of RNG_CELLS lines.

    Line ``lo + k``'s draws come from the generator of block ``(lo + k) // RNG_CELLS``, so the
    intervals do not depend on how the lines are chunked. Where every variance is 0 (``var`` None)
    the mixture's draws are the draws of ``mu`` themselves (no random numbers are drawn).
    """
    n, S = mu.shape
    reps = _interval_repeats(S)
    sample = np.empty((n, reps, S))
    if var is None:
        sample[:] = mu[:, None, :]
    else:
        base = 0 if seed is None else int(seed)
        for a in range(0, n, RNG_CELLS):
            b = min(n, a + RNG_CELLS)
            rng = np.random.default_rng([base, 0x9E3, (lo + a) // RNG_CELLS])
            rng.standard_normal(out=sample[a:b])
        sample *= np.sqrt(np.maximum(var, 0.0))[:, None, :]
        sample += mu[:, None, :]
    sample = sample.reshape(n, reps * S)
    sample.sort(axis=1)
    return _hdi_sorted(sample, ci_prob)


def _hdi_sorted(srt: np.ndarray, prob: float) -> np.ndarray:
    """The HDI (n, 2) of each row of ``srt`` (n, M), sorted: the rule of :func:`twoway.results.stats.hdi`
    (from draw ``i`` to draw ``i + floor(prob M)``, at most ``M - 1``, the narrowest, the first on ties)."""
    m = srt.shape[1]
    inc = min(int(np.floor(prob * m)), m - 1)
    best = np.argmin(srt[:, inc:] - srt[:, : m - inc], axis=1)
    rows = np.arange(srt.shape[0])
    return np.stack((srt[rows, best], srt[rows, best + inc]), axis=-1)


class _Collector:
    """Gathers the chunks' columns: for a sink, hands out frames of about SINK_LINES lines; else keeps them."""

    def __init__(self, sink):
        self.sink = sink
        self.parts: list[dict] = []
        self.pending = 0
        self.lines = self.fitted = self.left_out = 0
        self.width_sum = 0.0

    def add(self, chunk: dict) -> None:
        cols = chunk["columns"]
        n = len(cols["mean"])
        self.left_out += chunk["left_out"]
        self.lines += n
        self.fitted += int(np.count_nonzero(cols["kind"] == "fitted"))
        self.width_sum += float(np.sum(cols["upper"] - cols["lower"]))
        self.parts.append(cols)
        self.pending += n
        if self.sink is not None and self.pending >= SINK_LINES:
            self.flush()

    @property
    def mean_width(self) -> float:
        return self.width_sum / self.lines if self.lines else float("nan")

    def _frame(self, columns=None):
        import pandas as pd

        if not self.parts:
            return pd.DataFrame({c: [] for c in columns or ()})
        names = list(self.parts[0])
        joined = {c: np.concatenate([p[c] for p in self.parts]) for c in names}
        return pd.DataFrame(joined)

    def flush(self) -> None:
        if self.sink is not None and self.parts:
            frame = self._frame()
            self.parts, self.pending = [], 0
            self.sink(frame)

    def frame(self, columns):
        return self._frame(columns)


# -- what the chunks need ------------------------------------------------------------------------
class _CellCovariates:
    """The covariates ``x`` at any cell of the extended grid where they are known, without the grid.

    An observed cell has its own row of the design; another cell its row's values of the terms
    constant within rows and its column's of the terms constant within columns, when no term
    varies by cell and its row (column) has an observed cell (see
    :func:`twoway.results.covariates.covariate_grid`, the same on the whole grid).
    """

    def __init__(self, design, data, n_rows: int, n_cols: int):
        _, N, K = data.values.shape
        self.N, self.K = N, K
        self.X = np.asarray(design.X, dtype=float)                              # (n_obs, p)
        rr, ii, jj = data.observed_index()
        self.flat = (rr * N + ii) * K + jj                                      # sorted (C order)
        level = np.asarray(design.level)
        self.by_cell = bool(np.any(level == "cell"))
        self.row_terms, self.col_terms = level == "row", level == "col"
        self.row_val, self.row_has = first_by(ii, self.X[:, self.row_terms], n_rows)
        self.col_val, self.col_has = first_by(jj, self.X[:, self.col_terms], n_cols)

    def _observed_position(self, r, i, j) -> np.ndarray:
        """The observed cell's row of X, or -1 where the cell is not observed."""
        old = (i < self.N) & (j < self.K)
        f = (r * self.N + np.minimum(i, self.N - 1)) * self.K + np.minimum(j, self.K - 1)
        pos = np.searchsorted(self.flat, f)
        hit = old & (pos < self.flat.size)
        hit[hit] = self.flat[pos[hit]] == f[hit]
        return np.where(hit, pos, -1)

    def observed_x(self, r, i, j) -> np.ndarray:
        """X (n, p) at observed cells."""
        return self.X[self._observed_position(r, i, j)]

    def at(self, r, i, j) -> tuple[np.ndarray, np.ndarray]:
        """(X (n, p), known (n,)): X is 0 where the covariates are not known."""
        pos = self._observed_position(r, i, j)
        X = np.zeros((r.size, self.X.shape[1]))
        known = np.zeros(r.size, bool)
        if not self.by_cell:
            known[:] = True
            if self.row_terms.any():
                known &= self.row_has[i]
                X[:, self.row_terms] = self.row_val[i]
            if self.col_terms.any():
                known &= self.col_has[j]
                X[:, self.col_terms] = self.col_val[j]
            X[~known] = 0.0
        seen = pos >= 0
        X[seen] = self.X[pos[seen]]
        known[seen] = True
        return X, known


def _flat_parameters(fit) -> tuple[dict[str, np.ndarray], int]:
    """The posterior's variables that predictions read, chains and draws flattened: (S, ...) each, and S."""
    post = fit.posterior
    S = int(post.sizes["chain"]) * int(post.sizes["draw"])
    params = {}
    for name in post.data_vars:
        if str(name) in _UNUSED:
            continue
        v = post[name].transpose("chain", "draw", ...).values
        params[str(name)] = v.reshape((S,) + v.shape[2:])
    return params, S


def _cells_first(a: np.ndarray) -> np.ndarray:
    """(S, ...) draws as (..., S), C-contiguous: a cell's draws lie together."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(a, dtype=float), 0, -1))


def _prepare(fit, *, new_rows, new_cols, max_draws, seed) -> dict:
    """What every chunk of cells needs: the draws (cells first), new levels' scales (drawn once), the
    covariates' lookup, and under a Kronecker or full residual its correlated part on the whole table."""
    spec, data = fit.model, fit.data
    params, S_all = _flat_parameters(fit)
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
    scales = {}
    for side, n_old, extra in (("row", N, nr), ("col", K, nc)):
        kind = getattr(spec, f"{side}_scale")
        if kind == "none" or f"{side}_sd" not in params:
            continue
        sd = params[f"{side}_sd"]
        if kind == "hetero":
            if extra:
                loc = params[f"{side}_log_sd_loc"].reshape(S, 1)
                scale = params[f"{side}_log_sd_scale"].reshape(S, 1)
                sd = np.concatenate([sd, np.exp(loc + scale * rng.standard_normal((S, extra)))], axis=1)
            scales[side] = _cells_first(sd)                              # (N + nr, S)
        else:
            scales[side] = np.asarray(sd, dtype=float).reshape(1, S)    # the same at every level
    mask = data.mask
    prep = dict(spec=spec, S=S, R=R, N=N, K=K, nr=nr, nc=nc, n_rows=N + nr, n_cols=K + nc, mask=mask,
                values=data.values, se=data.se_or_zero() if data.has_se else None, scales=scales,
                design=design if coef is not None else None, coef_t=None if coef is None else coef.T.copy(),
                covariates=None if coef is None else _CellCovariates(design, data, N + nr, K + nc),
                correlated=None)
    prep["intercept"] = params["intercept"].reshape(1, S) if "intercept" in params else None
    for side in ("row", "col"):
        has = getattr(spec, f"{side}_effect") != "none" and f"{side}_effect" in params
        prep[f"{side}_effect"] = _cells_first(params[f"{side}_effect"]) if has else None     # (N, S)
        sd = params.get(f"{side}_effect_sd")
        prep[f"{side}_effect_var"] = None if sd is None else np.asarray(sd, float).reshape(1, S) ** 2
        shock = params.get(f"{side}_shock") if spec.residual == "latent" else None
        prep[f"{side}_shock"] = None if shock is None else _cells_first(shock)               # (R, N, S)
    prep["cell_effect"] = (_cells_first(params["cell_effect"].reshape(S, N * K)) if "cell_effect" in params
                           else None)                                                        # (N K, S)
    prep["cell_var"] = params["cell_sd"].reshape(1, S) ** 2 if "cell_sd" in params else None
    sigma = params.get("sigma") if spec.sigma else None
    prep["sigma"] = None if sigma is None else np.asarray(sigma, float).reshape(1, S)
    if spec.residual in ("kronecker", "full"):
        prep["correlated"] = _correlated_cells(fit, prep, params)
    return prep


def _correlated_cells(fit, prep: dict, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The Kronecker / full residual's correlated part on the whole table, cells first: (R N K, S) mean, variance."""
    spec, data = prep["spec"], fit.data
    lay, plan = full_layout(fit)
    params = dict(params)
    if plan is not None:
        for name, value in plan.constants.items():
            params.setdefault(name, np.full(prep["S"], value))
    R, N, K, S = prep["R"], prep["N"], prep["K"], prep["S"]
    r, i, j = (np.asarray(a, dtype=np.int64).ravel() for a in np.indices((R, N, K)))
    x = None if prep["design"] is None else prep["covariates"].at(r, i, j)[0]
    mean, _ = _cell_moments(prep, r, i, j, x, new_observation=False)                   # (R N K, S)
    noise = np.broadcast_to(_noise(prep, r, i, j), (r.size, S))
    g_mu, g_var = _correlated_part(spec, lay, data, params, mean.T.reshape(S, R, N, K),
                                   np.ascontiguousarray(noise.T).reshape(S, R, N, K))
    return _cells_first(g_mu.reshape(S, -1)), _cells_first(g_var.reshape(S, -1))


def _check_new_covariates(prep: dict) -> None:
    """:class:`FitError` when new rows (columns) were asked for and a covariate term has no value there."""
    design, nr, nc = prep["design"], prep["nr"], prep["nc"]
    if design is None or not (nr or nc):
        return
    cov = prep["covariates"]
    if not cov.by_cell and not (nr and cov.row_terms.any()) and not (nc and cov.col_terms.any()):
        return
    what = " and ".join(w for w, n in (("rows", nr), ("columns", nc)) if n)
    raise FitError(f"The new {what} cannot be predicted without their covariate values: "
                   f"{missing_terms_text(design, new_rows=bool(nr), new_cols=bool(nc))}; "
                   "predict them with cells= (twoway predict --cells FILE, or --at FILE), a table of the cells "
                   "with their covariate values.")


def _gather(table: np.ndarray, index: np.ndarray, keep: np.ndarray, out: np.ndarray) -> None:
    """``out[keep] += table[index[keep]]`` (all lines at once when every line is kept)."""
    if keep.all():
        out += table[index]
    elif keep.any():
        out[keep] += table[index[keep]]


def _cell_moments(prep: dict, r: np.ndarray, i: np.ndarray, j: np.ndarray, x: np.ndarray | None, *,
                  new_observation: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(mu, var), (n, S) each: per cell (r, i, j) of the extended grid and draw, the Gaussian law of the cell's
    mean (or new observation) given the observed cells; ``x`` (n, p) the cells' covariates (0 where unknown).
    ``var`` is None where it is 0 at every cell and draw (the table's cells' means, without a correlated part)."""
    spec, S, N, K = prep["spec"], prep["S"], prep["N"], prep["K"]
    n = r.size
    old_i, old_j = i < N, j < K
    old = old_i & old_j
    mu = np.zeros((n, S))
    var = None
    if prep["intercept"] is not None:
        mu += prep["intercept"]
    for side, idx, keep in (("row", i, old_i), ("col", j, old_j)):
        if prep[f"{side}_effect"] is None:
            continue
        _gather(prep[f"{side}_effect"], idx, keep, mu)
        if not keep.all():   # a new level: its effect from the effects' law
            var = _add_variance(var, ~keep, prep[f"{side}_effect_var"], (n, S))
    if prep["cell_effect"] is not None:
        _gather(prep["cell_effect"], np.where(old, i * K + j, 0), old, mu)
    if prep["cell_var"] is not None and not old.all():
        var = _add_variance(var, ~old, prep["cell_var"], (n, S))
    if x is not None:   # the covariates' part x' coef (0 where x is unknown)
        mu += x @ prep["coef_t"]
    if spec.residual == "latent":
        for side, idx, keep in (("row", i, old_i), ("col", j, old_j)):
            if getattr(spec, f"{side}_scale") == "none" or prep[f"{side}_shock"] is None:
                continue
            shock = prep[f"{side}_shock"]                                          # (R, N, S)
            _gather(shock.reshape(-1, S), r * shock.shape[1] + np.where(keep, idx, 0), keep, mu)
            if not keep.all():   # a new level's shock from its scale
                sd = prep["scales"][side]
                var = _add_variance(var, ~keep, (sd[idx[~keep]] if sd.shape[0] > 1 else sd) ** 2, (n, S))
    elif prep["correlated"] is not None:   # Kronecker / full: no new levels, every cell is the table's
        g_mu, g_var = prep["correlated"]
        flat = (r * N + i) * K + j
        mu += g_mu[flat]
        var = _add_variance(var, None, g_var[flat], (n, S))
    if new_observation:
        var = _add_variance(var, None, _noise(prep, r, i, j), (n, S))
    return mu, var


def _add_variance(var: np.ndarray | None, rows: np.ndarray | None, value, shape: tuple) -> np.ndarray:
    """``var[rows] += value`` (every row for None), ``var`` made (zeros) on first use."""
    if var is None:
        var = np.zeros(shape)
    if rows is None:
        var += value
    else:
        var[rows] += value
    return var


def _noise(prep: dict, r: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Variance (n, S) or (n, 1) of each cell's independent part: the known se (observed cells only) and the
    independent residual's scales (see :func:`twoway.likelihood.marginal.noise_variance`)."""
    spec, N, K = prep["spec"], prep["N"], prep["K"]
    se = np.zeros((r.size, 1))
    if prep["se"] is not None:
        old = (i < N) & (j < K)
        se[old, 0] = prep["se"][r[old], i[old], j[old]]
    sigma = prep["sigma"]
    if spec.residual == "independent":
        parts = []
        for side, idx in (("row", i), ("col", j)):
            sd = prep["scales"].get(side)
            parts.append(None if sd is None else (sd[idx] if sd.shape[0] > 1 else sd))
        sd = residual_sd(se, parts[0], parts[1], sigma, combine=spec.combine)
        return sd * sd
    return se * se if sigma is None else se * se + sigma * sigma


def cell_moments(fit, *, new_observation: bool = False, new_rows: Sequence[str] = (), new_cols: Sequence[str] = (),
                 max_draws: int | None = None, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per draw, the Gaussian law of each cell's mean (or new observation) given the observed cells, on the grid.

    Holds (S, grid) arrays: for small tables (tests, checks); :func:`predict` goes chunk by chunk.

    Returns
    -------
    (mu, var) : arrays (S, R, N + len(new_rows), K + len(new_cols))
        Conditional mean and variance per draw and cell; NaN at cells whose covariate values
        are unknown (see :func:`predict`).
    """
    new_rows = _new_labels(new_rows, fit.data.row_labels, "row")
    new_cols = _new_labels(new_cols, fit.data.col_labels, "col")
    prep = _prepare(fit, new_rows=new_rows, new_cols=new_cols, max_draws=max_draws, seed=seed)
    R, n_rows, n_cols, S = prep["R"], prep["n_rows"], prep["n_cols"], prep["S"]
    r, i, j = (np.asarray(a, dtype=np.int64).ravel() for a in np.indices((R, n_rows, n_cols)))
    x = known = None
    if prep["design"] is not None:
        x, known = prep["covariates"].at(r, i, j)
    mu, var = _cell_moments(prep, r, i, j, x, new_observation=new_observation)
    var = np.zeros_like(mu) if var is None else var
    if known is not None:
        mu[~known] = np.nan
        var[~known] = np.nan
    shape = (S, R, n_rows, n_cols)
    return np.ascontiguousarray(mu.T).reshape(shape), np.ascontiguousarray(var.T).reshape(shape)


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
