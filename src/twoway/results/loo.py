"""Exact leave-one-out for Gaussian two-way models, cell by cell or block by block.

For one posterior draw the observed cells are ``y ~ N(m, S)``. With the
precision ``Q = S^-1`` and the residual ``r = y - m``, the law of one cell
given all the others is (Sundararajan & Keerthi 2001; Bürkner, Gabry &
Vehtari 2021)::

    y_i | y_-i  ~  N(y_i - (Q r)_i / Q_ii,  1 / Q_ii)

and the law of a block ``B`` of cells (a whole row or column of the table,
over every replicate) given the rest is::

    y_B | y_-B  ~  N(y_B - (Q_BB)^-1 (Q r)_B,  (Q_BB)^-1).

For models whose cells are not independent given the parameters, PSIS-LOO
needs exactly these densities, ``log p(y_i | y_-i, theta)``, in place of the
pointwise log-likelihood (Bürkner et al. 2021, "Efficient leave-one-out
cross-validation for Bayesian non-factorized normal and Student-t models");
:func:`pointwise_log_likelihood` stores them per draw, and :func:`loo` hands
them to ArviZ. When the cells are independent the formula reduces to the
ordinary pointwise log-likelihood, so one definition serves every model.

The pure functions :func:`loo_cell_logpdf` and :func:`loo_block_logpdf` work
on arrays (dense covariances); the rest reads a :class:`~twoway.fit.Fit` through
:func:`twoway.results.structured.iter_laws`, which keeps each draw's covariance
structured (the residual's own structure plus the effects' low-rank part) and
gives ``diag(Q)``, ``Q r`` and the blocks ``Q_BB`` without an n x n matrix; draws
that share their covariance parameters (the ``laplace`` engine's) share one
precision.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from twoway.errors import FitError
from twoway.fit import Fit
from twoway.fit import fit as fit_model
from twoway.results.psis import good_k, psis_loo
from twoway.results.structured import blas_threads_help, iter_laws, single_blas

# Deferred imports: arviz_stats, scipy (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = [
    "UNITS",
    "add_log_likelihood",
    "default_conditional",
    "exact_loo",
    "gaussian_lppd",
    "loo",
    "loo_block_logpdf",
    "loo_cell_logpdf",
    "pointwise_log_likelihood",
    "refit_loo",
    "unit_blocks",
    "unit_labels",
]

#: What is left out at a time: one cell, one row (all its cells), one column.
UNITS = ("cell", "row", "col")

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------
# pure functions over arrays
# ---------------------------------------------------------------------------


def _precision_terms(y: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision matrix and precision-weighted residual of a Gaussian.

    Parameters
    ----------
    y, mean : array (..., n)
    cov : array (..., n, n)
        Symmetric positive definite.

    Returns
    -------
    (Q, Qr) : arrays (..., n, n) and (..., n)
        ``Q = cov^-1`` (exactly symmetric) and ``Q (y - mean)``.
    """
    cov = np.asarray(cov, dtype=float)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise FitError("The predictive covariance of the observed cells is not positive definite, "
                       "so leave-one-out densities cannot be computed for this draw.") from None
    eye = np.broadcast_to(np.eye(cov.shape[-1]), cov.shape)
    chol_inv = np.linalg.solve(chol, eye)
    precision = np.swapaxes(chol_inv, -1, -2) @ chol_inv
    resid = np.asarray(y, dtype=float) - np.asarray(mean, dtype=float)
    return precision, (precision @ resid[..., None])[..., 0]


def _diagonal_logpdf(y, mean, var) -> np.ndarray:
    """Elementwise normal log-density, (..., n)."""
    var = np.asarray(var, dtype=float)
    resid = np.asarray(y, dtype=float) - np.asarray(mean, dtype=float)
    return -0.5 * (_LOG_2PI + np.log(var) + resid * resid / var)


def loo_cell_logpdf(y, mean, cov=None, *, var=None) -> np.ndarray:
    """Log density of each cell given all the other cells, ``log p(y_i | y_-i)``.

    Parameters
    ----------
    y : array (..., n)
        The observed cells.
    mean : array (..., n)
        Their joint mean.
    cov : array (..., n, n), optional
        Their joint covariance (symmetric positive definite). Leave it out for
        independent cells and give ``var`` instead.
    var : array (..., n), optional
        The variances of independent cells; used only when ``cov`` is None.

    Returns
    -------
    array (..., n)
        ``log N(y_i | y_i - (Q r)_i / Q_ii, 1 / Q_ii)`` with ``Q = cov^-1`` and
        ``r = y - mean``; for independent cells simply ``log N(y_i | mean_i, var_i)``.
    """
    if cov is None:
        if var is None:
            raise FitError("The leave-one-out density needs either a covariance or the variances of the cells.")
        return _diagonal_logpdf(y, mean, var)
    precision, qr = _precision_terms(y, mean, cov)
    q_ii = np.diagonal(precision, axis1=-2, axis2=-1)
    return -0.5 * (_LOG_2PI - np.log(q_ii) + qr * qr / q_ii)


def loo_block_logpdf(y, mean, cov=None, blocks: Sequence[np.ndarray] = (), *, var=None) -> np.ndarray:
    """Log density of each block of cells given all the cells outside it, ``log p(y_B | y_-B)``.

    Parameters
    ----------
    y : array (..., n)
    mean : array (..., n)
    cov : array (..., n, n), optional
        Joint covariance; leave it out for independent cells and give ``var``.
    blocks : sequence of int arrays
        Indices (into the last axis) of the cells of each block; blocks may be
        of different sizes. An empty block has log density 0.
    var : array (..., n), optional
        Variances of independent cells; used only when ``cov`` is None.

    Returns
    -------
    array (..., n_blocks)
        ``log N(y_B | y_B - (Q_BB)^-1 (Q r)_B, (Q_BB)^-1)``; for independent
        cells the sum of the cells' own log densities.
    """
    blocks = [np.asarray(b, dtype=np.int64).reshape(-1) for b in blocks]
    if cov is None:
        cell = loo_cell_logpdf(y, mean, var=var)
        out = [cell[..., b].sum(axis=-1) for b in blocks]
        return np.stack(out, axis=-1) if out else np.zeros(cell.shape[:-1] + (0,))
    precision, qr = _precision_terms(y, mean, cov)
    out = []
    for b in blocks:
        if b.size == 0:
            out.append(np.zeros(qr.shape[:-1]))
            continue
        q_bb = precision[..., b[:, None], b[None, :]]
        g = qr[..., b]
        try:
            chol = np.linalg.cholesky(q_bb)
        except np.linalg.LinAlgError:  # pragma: no cover - a principal block of an SPD matrix is SPD
            raise FitError("A block of the predictive precision is not positive definite.") from None
        z = np.linalg.solve(chol, g[..., None])[..., 0]
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        out.append(-0.5 * (b.size * _LOG_2PI - logdet + (z * z).sum(axis=-1)))
    return np.stack(out, axis=-1) if out else np.zeros(qr.shape[:-1] + (0,))


def gaussian_lppd(y, mean, cov, residual_cov, blocks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Log pointwise predictive density of each cell (or block) under an exact Gaussian posterior.

    The model is ``y = mu + e`` with ``e ~ N(0, R)`` (the residual law, ``R =
    residual_cov``) and, a priori, ``mu ~ N(mean, S - R)`` (``S = cov``, the
    marginal covariance with every effect integrated out). With ``Q = S^-1``
    and ``r = y - mean`` the posterior of the cell means is::

        mu | y  ~  N(y - R Q r,  R - R Q R).

    The pointwise likelihood of a cell given the means is the residual law of
    that cell given the other cells, ``N(y_i - (P (y - mu))_i / P_ii, 1 / P_ii)``
    with ``P = R^-1`` (``N(mu_i, R_ii)`` for independent residuals). Its centre
    is linear in ``mu``, so its posterior average is Gaussian; with
    ``P (y - E[mu|y]) = Q r`` and ``P Var(mu|y) P = P - Q``::

        p(y_i | y) = N(0 | (Q r)_i / P_ii,  (2 P_ii - Q_ii) / P_ii^2)

    and for a block ``B`` with ``A = (P_BB)^-1``::

        p(y_B | y) = N(0 | A (Q r)_B,  2 A - A Q_BB A).

    ``lppd - elpd_loo`` (each unit's log density given all the data, minus
    given all but itself) is the effective number of parameters p_loo; for a
    fixed-effects model with flat priors it is about the trace of the hat
    matrix ``I - R Q``, the number of free mean parameters.

    Parameters
    ----------
    y, mean : array (n,)
        The observed cells and their marginal (prior predictive) mean.
    cov : array (n, n)
        Their marginal covariance ``S`` (symmetric positive definite).
    residual_cov : array (n, n)
        The residual covariance ``R`` given the effects (SPD; ``S - R`` positive semi-definite).
    blocks : sequence of int arrays, optional
        Units of several cells (see :func:`loo_block_logpdf`); None: every cell its own unit.

    Returns
    -------
    array (n,) or (n_blocks,)
        ``log p(y_u | y)`` for each unit.
    """
    precision, qr = _precision_terms(y, mean, cov)
    resid_precision, _ = _precision_terms(y, mean, residual_cov)
    return _lppd(qr, _MatrixPrecision(precision), _MatrixPrecision(resid_precision), blocks)


class _MatrixPrecision:
    """A dense precision matrix with the interface of :class:`twoway.results.structured.Precision`."""

    def __init__(self, q: np.ndarray):
        self.q = q
        self.diag = np.diagonal(q)

    def block(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.q[np.ix_(idx, idx)]


def _lppd(qr: np.ndarray, precision, resid_precision, blocks) -> np.ndarray:
    """:func:`gaussian_lppd` from ``Q r`` and the two precisions (their diagonals and blocks)."""
    if blocks is None:
        p_ii = np.asarray(resid_precision.diag)
        q_ii = np.asarray(precision.diag)
        centre = qr / p_ii
        var = (2.0 * p_ii - q_ii) / (p_ii * p_ii)
        return -0.5 * (_LOG_2PI + np.log(var) + centre * centre / var)
    out = []
    for b in blocks:
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        if b.size == 0:
            out.append(0.0)
            continue
        a = np.linalg.inv(resid_precision.block(b))
        centre = a @ qr[b]
        c = 2.0 * a - a @ precision.block(b) @ a
        c = 0.5 * (c + c.T)
        chol = np.linalg.cholesky(c)
        z = np.linalg.solve(chol, centre)
        logdet = 2.0 * np.log(np.diagonal(chol)).sum()
        out.append(-0.5 * (b.size * _LOG_2PI + logdet + z @ z))
    return np.asarray(out, dtype=float)


# ---------------------------------------------------------------------------
# units of a table
# ---------------------------------------------------------------------------


def _check_by(by: str) -> str:
    if by not in UNITS:
        raise FitError(f"The unit left out must be one of {', '.join(UNITS)}; got {by!r}.")
    return by


def unit_blocks(data, by: str) -> list[np.ndarray] | None:
    """Which observed cells make up each unit left out.

    Parameters
    ----------
    data : TwoWayData
    by : {"cell", "row", "col"}

    Returns
    -------
    list of int arrays, or None
        For ``row`` (``col``): one array per row (column) with the positions,
        in :meth:`TwoWayData.observed_index` order, of that row's observed cells
        over every replicate. None for ``cell`` (every cell is its own unit).
    """
    _check_by(by)
    if by == "cell":
        return None
    _, ii, jj = data.observed_index()
    idx, n = (ii, data.n_rows) if by == "row" else (jj, data.n_cols)
    return [np.flatnonzero(idx == k) for k in range(n)]


def unit_labels(data, by: str) -> list[str]:
    """Labels of the units: ``"replicate|row|col"`` per observed cell, or the row or column labels."""
    _check_by(by)
    if by == "row":
        return list(data.row_labels)
    if by == "col":
        return list(data.col_labels)
    rr, ii, jj = data.observed_index()
    return [f"{data.replicate_labels[r]}|{data.row_labels[i]}|{data.col_labels[j]}"
            for r, i, j in zip(rr, ii, jj)]


def default_conditional(fit, by: str = "cell") -> bool:
    """Whether leave-one-out conditions on the drawn row and column effects by default.

    Conditioning (the ordinary pointwise log-likelihood of independent cells)
    is the default only where it is the model's own likelihood: leaving out
    single cells of a model with an independent residual whose effects were
    sampled (``effects="sample"``; specs without that option sampled them).
    Otherwise, for whole rows or columns (whose own random effect would have
    to be learnt anew from the prior) and for models with integrated-out
    effects or correlated residuals, the random effects are integrated out
    and the exact leave-one-out density of the marginal law is used. Both
    estimate the same predictive density; integrating out only lowers the
    Monte Carlo error, at the cost of one structured precision per distinct draw
    (:mod:`twoway.results.structured`).

    Parameters
    ----------
    fit : Fit
    by : {"cell", "row", "col"}

    Returns
    -------
    bool
    """
    _check_by(by)
    spec = fit.model
    sampled = getattr(spec, "effects", "sample") == "sample"
    return by == "cell" and spec.residual == "independent" and sampled


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


def _thinned_draws(n_draws: int, keep: int | None) -> np.ndarray:
    """Positions of ``keep`` draws spread evenly over ``n_draws`` (all when None)."""
    if keep is None or keep >= n_draws:
        return np.arange(n_draws)
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise FitError(f"The number of draws must be a whole number >= 1; got {keep!r}.")
    return np.unique(np.linspace(0, n_draws - 1, int(keep)).round().astype(int))


def _chunk_logpdf(y: np.ndarray, chunk, blocks) -> np.ndarray:
    """``log p(y_u | y_-u)`` for each unit and each draw of a :class:`~twoway.results.structured.LawChunk`.

    Parameters
    ----------
    y : array (n,)
    chunk : LawChunk
        Its means (s, n) (s = 1 when its draws share one) and either one law for every draw or a batch
        of precisions, one per draw.
    blocks : list of int arrays, or None (cells)

    Returns
    -------
    array (s, n_units)
    """
    from scipy.linalg import solve_triangular

    mean = chunk.mean
    precision = chunk.batch if chunk.batch is not None else chunk.law.precision
    diagonal = chunk.batch.is_diagonal if chunk.batch is not None else chunk.law.is_diagonal
    if diagonal:
        var = chunk.batch.var if chunk.batch is not None else chunk.law.var
        cell = _diagonal_logpdf(y, mean, var)
        if blocks is None:
            return cell
        return np.stack([cell[:, b].sum(axis=-1) for b in blocks], axis=-1)
    resid = y - mean                                                       # (s, n)
    if chunk.batch is not None:
        qr = precision.apply(np.broadcast_to(resid, (precision.S, resid.shape[-1])))
    else:
        qr = precision.apply(resid.T).T
    if blocks is None:
        q_ii = precision.diag
        return -0.5 * (_LOG_2PI - np.log(q_ii) + qr * qr / q_ii)
    out = np.zeros((qr.shape[0], len(blocks)))
    for k, b in enumerate(blocks):
        if b.size == 0:
            continue
        if chunk.batch is not None:                                        # one block per draw
            try:
                chol = np.linalg.cholesky(precision.block(b))              # (s, |b|, |b|)
            except np.linalg.LinAlgError:  # pragma: no cover - a principal block of an SPD matrix is SPD
                raise FitError("A block of the predictive precision is not positive definite.") from None
            z = np.linalg.solve(chol, qr[:, b][:, :, None])[:, :, 0]
            logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
            out[:, k] = -0.5 * (b.size * _LOG_2PI - logdet + (z * z).sum(axis=-1))
            continue
        chol, logdet = precision.block_factor(b)
        z = solve_triangular(chol, qr[:, b].T, lower=True)                 # (|b|, s)
        out[:, k] = -0.5 * (b.size * _LOG_2PI - logdet + (z * z).sum(axis=0))
    return out


def pointwise_log_likelihood(fit, *, by: str = "cell", conditional: bool | None = None,
                             draws: int | None = None) -> xr.DataArray:
    """Per-draw leave-one-out log density of each unit, ready for PSIS-LOO.

    For each posterior draw ``theta`` this is ``log p(y_u | y_-u, theta)`` for
    each unit ``u`` (a cell, or a row or column with all its observed cells
    over every replicate). For independent cells given ``theta`` it is the
    ordinary pointwise log-likelihood; for correlated cells it is the exact
    conditional density that non-factorized PSIS-LOO needs (Bürkner et al. 2021).

    Parameters
    ----------
    fit : Fit
    by : {"cell", "row", "col"}
        The unit left out.
    conditional : bool, optional
        True: condition on the drawn row and column effects; False: integrate
        the random effects out (exact, through the covariance's structure). Default: see
        :func:`default_conditional`.
    draws : int, optional
        Keep this many draws per chain, evenly spaced (default: all). Use all
        draws to store the result next to the posterior.

    Returns
    -------
    xarray.DataArray, dims (chain, draw, <by>)
        Named ``y``. The unit dim is ``cell`` (labels ``"replicate|row|col"``,
        with coordinates ``cell_replicate``, ``cell_row``, ``cell_col``),
        ``row`` or ``col`` (the table's labels). Attributes ``twoway_by`` and
        ``twoway_conditional``.
    """

    _check_by(by)
    rows, index, keep, conditional = log_likelihood_rows(fit, by=by, conditional=conditional, draws=draws)
    post = fit.posterior
    out = rows[index].reshape(post.sizes["chain"], keep.size, rows.shape[1])
    return xr.DataArray(out, dims=("chain", "draw", by), coords=_unit_coords(fit, by, keep), name="y",
                        attrs={"twoway_by": by, "twoway_conditional": int(bool(conditional))})


def _unit_coords(fit, by: str, keep: np.ndarray) -> dict:
    data, post = fit.data, fit.posterior
    coords = {
        "chain": post["chain"].values,
        "draw": post["draw"].values[keep],
        by: unit_labels(data, by),
    }
    if by == "cell":
        rr, ii, jj = data.observed_index()
        coords["cell_replicate"] = ("cell", np.array(data.replicate_labels, dtype=str)[rr])
        coords["cell_row"] = ("cell", np.array(data.row_labels, dtype=str)[ii])
        coords["cell_col"] = ("cell", np.array(data.col_labels, dtype=str)[jj])
    return coords


#: Spread the draws over worker processes when the rest of the work would take longer than this (seconds,
#: projected from the first group of draws).
PARALLEL_SECONDS = 6.0


def log_likelihood_rows(fit, *, by: str = "cell", conditional: bool | None = None, draws: int | None = None,
                        progress=None, workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """:func:`pointwise_log_likelihood` with each distinct draw's row stored once.

    Draws that share every parameter the density depends on (the ``laplace``
    engine resamples its proposals) share one row, so memory and work grow
    with the distinct draws, not the draws. The first group of draws is
    computed here; when the rest would take more than :data:`PARALLEL_SECONDS`,
    the groups are dealt to ``workers`` forked processes
    (:func:`twoway.results.workers.map_tasks`).

    Parameters
    ----------
    fit : Fit
    by, conditional, draws
        As in :func:`pointwise_log_likelihood`.
    progress : callable, optional
        Called as ``progress(done, total)`` with the draws done.
    workers : int, optional
        Processes for the draws (default :func:`twoway.results.workers.default_workers`; 1: this process only).

    Returns
    -------
    rows : array (D, n_units)
        ``log p(y_u | y_-u, theta)`` at each distinct draw.
    index : int array (chains * kept draws,)
        The row of each draw, chain by chain.
    keep : int array
        The draws kept per chain (positions along ``draw``).
    conditional : bool
        The variant used.
    """
    import time

    from twoway.results.structured import draw_groups
    from twoway.results.workers import default_workers, map_tasks

    _check_by(by)
    if conditional is None:
        conditional = default_conditional(fit, by)
    conditional = bool(conditional)
    data = fit.data
    y = data.observed_values()
    blocks = unit_blocks(data, by)
    post = fit.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    keep = _thinned_draws(n_draw, draws)
    pairs = np.array([(c, int(d)) for c in range(n_chain) for d in keep], dtype=np.int64).reshape(-1, 2)
    flat_of = {(int(c), int(d)): c * keep.size + k for c in range(n_chain) for k, d in enumerate(keep)}
    groups = draw_groups(fit, pairs, conditional=conditional)
    n_groups = int(groups.max()) + 1 if groups.size else 0
    threaded = blas_threads_help(fit)
    shared: dict = {}      # patterns and plans: built for the first group, inherited by the forked workers

    def pieces(task_pairs):
        """(draw positions, values) for the laws of these draws."""
        with contextlib.nullcontext() if threaded else single_blas():
            for chunk in iter_laws(fit, task_pairs, conditional=conditional, cache=shared):
                flat = np.array([flat_of[(int(c), int(d))] for c, d in chunk.pairs], dtype=np.int64)
                yield flat, _chunk_logpdf(y, chunk, blocks)

    index = np.full(len(pairs), -1, dtype=np.int64)
    n_units = y.size if blocks is None else len(blocks)
    # room for a row per draw, though draws that share a law share a row: pages never written are never
    # given memory, so what is held grows with the distinct draws
    rows = np.empty((len(pairs), n_units))
    n_rows = 0
    done = 0

    def take(flat, values):
        nonlocal n_rows, done
        index[flat] = n_rows if values.shape[0] == 1 else n_rows + np.arange(values.shape[0])
        rows[n_rows:n_rows + values.shape[0]] = values
        n_rows += values.shape[0]
        done += flat.size
        if progress is not None:
            progress(done, len(pairs))

    if n_groups:
        started = time.perf_counter()
        for flat, values in pieces(pairs[groups == 0]):
            take(flat, values)
        per_group = time.perf_counter() - started
        n_workers = default_workers() if workers is None else max(1, int(workers))
        if n_workers > 1 and per_group * (n_groups - 1) < PARALLEL_SECONDS:
            n_workers = 1
        n_workers = max(1, min(n_workers, n_groups - 1))
        # one task per worker (its laws share one set of cached patterns), the groups dealt in turn
        tasks = [pairs[(groups > 0) & (groups % n_workers == w)] for w in range(n_workers)]
        for _, (flat, values) in map_tasks(pieces, [t for t in tasks if t.size], workers=n_workers):
            take(flat, values)
    rows = rows[:n_rows]
    if np.any(index < 0):  # pragma: no cover - every draw belongs to a group
        raise FitError("Some draws were left out of the leave-one-out densities.")
    return rows, index, keep, conditional


def add_log_likelihood(fit, *, by: str = "cell", conditional: bool | None = None):
    """A copy of ``fit`` whose DataTree holds the group ``log_likelihood`` (variable ``y``).

    The group holds :func:`pointwise_log_likelihood` over every draw, so that
    ArviZ works on the tree directly (``az.loo(fit.tree)``); an existing
    ``log_likelihood`` group is replaced.

    Parameters
    ----------
    fit : Fit
    by : {"cell", "row", "col"}
    conditional : bool, optional

    Returns
    -------
    Fit
    """

    da = pointwise_log_likelihood(fit, by=by, conditional=conditional)
    ds = da.to_dataset()
    ds.attrs = dict(da.attrs)
    tree = fit.tree.copy()
    tree["log_likelihood"] = xr.DataTree(ds)
    return Fit(tree)


def loo(fit, *, by: str = "cell", conditional: bool | None = None, pointwise: bool = True, progress=None,
        workers: int | None = None):
    """PSIS leave-one-out estimate of the expected log predictive density.

    Parameters
    ----------
    fit : Fit
    by : {"cell", "row", "col"}
        The unit left out: one cell, or a whole row or column.
    conditional : bool, optional
        See :func:`pointwise_log_likelihood`.
    pointwise : bool
        Keep the per-unit ``elpd_i`` and ``pareto_k`` (needed for comparisons).
    progress : callable, optional
        Called as ``progress(done, total)`` with the draws done (see :func:`log_likelihood_rows`).
    workers : int, optional
        Processes for the draws and the Pareto smoothing when the work is large (default: the CPUs).

    Returns
    -------
    arviz_stats.utils.ELPDDataLOO
        ``elpd``, ``se``, ``p`` (p_loo), ``good_k``, and per unit ``elpd_i``,
        ``p_loo_i`` and ``pareto_k`` (dim ``by``). The same numbers as
        ``arviz_stats.loo`` on :func:`add_log_likelihood`'s tree
        (:mod:`twoway.results.psis`), without its draws-by-units copies.
    """
    if fit.description.posterior_gaussian:
        return exact_loo(fit, by=by, pointwise=pointwise)
    from twoway.results.workers import default_workers

    n_workers = default_workers() if workers is None else max(1, int(workers))
    r_eff = relative_efficiency(fit)              # before the rows exist: its temporaries never sit beside them
    rows, index, keep, _ = log_likelihood_rows(fit, by=by, conditional=conditional, progress=progress,
                                               workers=n_workers)
    n_samples = index.size
    elpd, k, p = psis_loo(rows, index, r_eff=r_eff, workers=n_workers)
    del rows
    coords = {key: value for key, value in _unit_coords(fit, by, keep).items() if key not in ("chain", "draw")}

    def unit(values, name):
        return xr.DataArray(values, dims=(by,), coords=coords, name=name)

    return _elpd_data(unit(elpd, "elpd_i"), unit(p, "p_loo_i"), unit(k, "pareto_k"), n_samples,
                      good_k(n_samples), pointwise)


def relative_efficiency(fit) -> float:
    """The draws' relative efficiency for Pareto smoothing: the mean ESS of the posterior's values over the draws.

    As ArviZ's ``loo`` takes it from the fit's tree (one number for every unit; 1 with one chain).
    """
    import arviz_stats  # noqa: F401 - registers the azstats accessor

    post = fit.tree["posterior"].to_dataset()   # the stored variables (means derived on reading left out)
    n_samples = post.sizes["chain"] * post.sizes["draw"]
    if post.sizes["chain"] == 1:
        return 1.0
    ess = post.azstats.ess(method="mean")
    values = np.hstack([np.asarray(ess[v].values, dtype=float).ravel() for v in ess.data_vars])
    return float(values.mean() / n_samples) if values.size else 1.0


def _elpd_data(elpd_i: xr.DataArray, p_i: xr.DataArray, pareto_k: xr.DataArray, n_samples: int,
               good_k: float, pointwise: bool):
    """An ArviZ LOO result from per-unit elpd, p_loo and Pareto k."""
    from arviz_stats.utils import ELPDDataLOO

    values = np.asarray(elpd_i, dtype=float)
    n = values.size
    return ELPDDataLOO(elpd=float(values.sum()), se=float(np.sqrt(n * np.var(values, ddof=1))) if n > 1 else 0.0,
                       p=float(np.asarray(p_i).sum()), n_samples=int(n_samples), n_data_points=int(n),
                       scale="log", warning=bool(np.any(np.asarray(pareto_k) > good_k)), good_k=float(good_k),
                       elpd_i=elpd_i if pointwise else None, pareto_k=pareto_k if pointwise else None,
                       p_loo_i=p_i if pointwise else None)


def exact_loo(fit, *, by: str = "cell", pointwise: bool = True):
    """Exact leave-one-out of a fit with nothing sampled (every unknown Gaussian and integrated out).

    With no sampled parameter, ``p(y_u | y_-u)`` is one Gaussian density of the
    marginal law (effects integrated out with their priors): no importance
    sampling, no Pareto k (reported as 0), no Monte Carlo error. The
    effective number of parameters is exact too: ``p_loo = lppd - elpd_loo``
    with the log pointwise predictive density ``lppd`` of each unit under the
    exact posterior of the effects (:func:`gaussian_lppd`).

    Parameters
    ----------
    fit : Fit
        A fit whose ``description.posterior_gaussian`` is True.
    by : {"cell", "row", "col"}
    pointwise : bool

    Returns
    -------
    arviz_stats.utils.ELPDDataLOO
        ``p_loo_i`` per unit holds ``lppd_i - elpd_i``.
    """
    ll = pointwise_log_likelihood(fit, by=by, conditional=False, draws=1)
    elpd_i = ll.isel(chain=0, draw=0, drop=True).rename("elpd_i")
    first = [(0, 0)]
    marginal = next(iter_laws(fit, first, conditional=False))
    residual = next(iter_laws(fit, first, conditional=True))
    qr = marginal.law.precision.apply(fit.data.observed_values() - marginal.mean[0])
    lppd = _lppd(qr, marginal.law.precision, residual.law.precision, unit_blocks(fit.data, by))
    p_i = (xr.zeros_like(elpd_i) + (lppd - elpd_i.values)).rename("p_loo_i")
    zero = xr.zeros_like(elpd_i)
    n_samples = fit.posterior.sizes["chain"] * fit.posterior.sizes["draw"]
    return _elpd_data(elpd_i, p_i, zero.rename("pareto_k"), n_samples, 0.7, pointwise)


def _without_cell(data, r: int, i: int, j: int):
    """The table with the observed cell (r, i, j) made missing, or None when its row or column would be empty."""

    mask = data.mask.copy()
    mask[r, i, j] = False
    if not mask[:, i, :].any() or not mask[:, :, j].any() or not mask[r].any():
        return None
    return data.with_values(np.where(mask, data.values, np.nan))  # se and covariates of the cells kept


def refit_loo(fit, elpd, *, k_threshold: float = 0.7, max_refits: int = 10,
              conditional: bool | None = None):
    """Exact leave-one-out by refitting the model without each cell whose Pareto k exceeds ``k_threshold``.

    For each such cell the model is fitted again (same engine, priors, chains,
    draws, tuning and seed) on the table without it, and its elpd becomes
    ``log mean_s p(y_i | y_-i, theta_s)`` over the refit's draws (the exact
    Gaussian conditional density of the cell given the rest at each draw).
    Cells whose row or column has no other observation cannot be left out
    and keep their PSIS estimate.

    Parameters
    ----------
    fit : Fit
    elpd : ELPDDataLOO
        The fit's PSIS-LOO by cell, pointwise.
    k_threshold : float
    max_refits : int
        Refit only when at most this many cells are flagged (refits cost a fit each).
    conditional : bool, optional
        As in :func:`pointwise_log_likelihood`.

    Returns
    -------
    (ELPDDataLOO, int)
        The updated estimate and the number of cells refitted (0: nothing changed).
    """

    from scipy.special import logsumexp


    k = np.asarray(elpd.pareto_k, dtype=float)
    bad = np.flatnonzero(k > k_threshold)
    if bad.size == 0 or bad.size > max_refits:
        return elpd, 0
    data, info = fit.data, fit.info
    rr, ii, jj = data.observed_index()
    spec = fit.model.with_priors(**fit.priors)   # the priors the fit had, not defaults rescaled to the smaller table
    elpd_i = elpd.elpd_i.copy()
    pareto_k = elpd.pareto_k.copy()
    p_i = elpd.p_loo_i.copy() if elpd.p_loo_i is not None else xr.zeros_like(elpd_i)
    done = 0
    ll_full = None
    for u in bad:
        smaller = _without_cell(data, int(rr[u]), int(ii[u]), int(jj[u]))
        if smaller is None:
            continue
        refit = fit_model(spec, smaller, chains=info["chains"], draws=info["draws"], tune=info["tune"],
                          seed=info.get("seed"), engine=info.get("engine"), progress=False)
        tree = refit.tree.copy()
        tree["observed_data"] = xr.DataTree(data.to_dataset())   # the refit's draws, the whole table's cells
        ll = pointwise_log_likelihood(Fit(tree), by="cell", conditional=conditional).values[..., u].ravel()
        value = float(logsumexp(ll) - math.log(ll.size))
        if ll_full is None:
            ll_full = pointwise_log_likelihood(fit, by="cell", conditional=conditional).values
        lpd = float(logsumexp(ll_full[..., u].ravel()) - math.log(ll_full[..., u].size))
        elpd_i[u], pareto_k[u], p_i[u] = value, 0.0, lpd - value
        done += 1
    if done == 0:
        return elpd, 0
    out = _elpd_data(elpd_i, p_i, pareto_k, elpd.n_samples, elpd.good_k, True)
    return copy.copy(out), done
