"""Pareto-smoothed importance sampling leave-one-out, vectorised over units.

The estimator is ArviZ's (``arviz_stats.loo``: Vehtari, Gelman and Gabry 2017;
Vehtari et al. 2024 for the generalized Pareto fit with its weak prior on k),
computed here for many units at once and chunk by chunk, so that a table of
100,000 cells needs neither a Python loop per cell nor a second copy of the
draws-by-units matrix for the weights.

For one unit with log-likelihoods ``l_s`` over S draws (log ratios
``a_s = -l_s``, shifted to a maximum of 0):

* the M = floor(3 sqrt(S / r_eff)) largest ratios (S / 5 when S r_eff <= 225)
  form the tail, ``cutoff`` the largest ratio below it;
* a generalized Pareto distribution is fitted to ``exp(tail) - exp(cutoff)``
  (Zhang and Stephens' empirical Bayes estimate on a grid of
  ``30 + floor(sqrt(M))`` points, then k shrunk towards 0.5 by a prior worth
  10 observations): its shape is the unit's Pareto k;
* the tail's ratios are replaced by the fitted quantiles at (i - 1/2) / M,
  capped at the largest raw ratio (in log space), when k is finite;
* ``elpd_i = log sum_s w_s exp(l_s)`` with the normalised smoothed weights,
  ``lppd_i = log mean_s exp(l_s)``, ``p_loo_i = lppd_i - elpd_i``.

Outside the tail a weight times its likelihood is the same constant for every
draw (the raw ratio is the inverse likelihood), so only the tail is sorted:
one partial sort of each unit's distinct ratios, then a sort of its M + 1
largest, repeated as often as their draws.

The draws may be given as distinct rows plus an index (``rows[index]`` the
draws), as engines that resample proposals repeat them; the result is the
same as for the expanded matrix.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from twoway.errors import FitError

__all__ = ["good_k", "psis_loo", "tail_length"]

#: Prior of the generalized Pareto fit: the b-grid's scale and the weight (in observations) of k's prior at 0.5.
_PRIOR_BS = 3.0
_PRIOR_K = 10.0
#: Units per chunk are chosen so that one chunk's draws take about this many bytes.
CHUNK_BYTES = 64 * 2**20


def tail_length(n_draws: int, r_eff: float = 1.0) -> int:
    """The number M of largest ratios fitted by the generalized Pareto distribution."""
    if n_draws * r_eff > 225:
        return int(math.floor(3.0 * math.sqrt(n_draws / r_eff)))
    return int(math.floor(n_draws / 5))


def good_k(n_draws: int) -> float:
    """The Pareto k above which a unit's estimate is unreliable: ``min(1 - 1 / log10 S, 0.7)``."""
    return min(1.0 - 1.0 / math.log10(n_draws), 0.7) if n_draws > 1 else 0.7


def _gpd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Generalized Pareto (k, sigma) of each column of ``x`` (M, c), sorted ascending, exceedances >= 0.

    Columns whose first quartile is not above their minimum give (nan, nan); a
    fit whose k is nan gives (inf, nan), as ArviZ's.
    """
    n = x.shape[0]
    m_est = 30 + int(n ** 0.5)
    xstar = x[int((n / 4 + 0.5) - 1)]                                     # (c,) first quartile
    ok = xstar > x[0]
    safe_xstar = np.where(ok, xstar, 1.0)
    top = np.where(x[-1] > 0, x[-1], 1.0)
    grid = 1.0 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))  # (m,)
    b = grid[:, None] / (_PRIOR_BS * safe_xstar)[None, :] + (1.0 / top)[None, :]  # (m, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        k_grid = np.empty_like(b)
        for g in range(m_est):                                            # (c, M) per grid point: bounded memory
            k_grid[g] = np.mean(np.log1p(-b[g][None, :] * x), axis=0)
        len_scale = n * (np.log(-b / k_grid) - k_grid - 1.0)
        w = np.exp(len_scale - logsumexp(len_scale, axis=0)[None, :])
        w = np.where(w >= 10 * np.finfo(float).eps, w, 0.0)
        w /= w.sum(axis=0, keepdims=True)
        b_post = np.sum(b * w, axis=0)
        kappa = np.mean(np.log1p(-b_post[None, :] * x), axis=0)
        sigma = -kappa / b_post
        kappa = (n * kappa + _PRIOR_K * 0.5) / (n + _PRIOR_K)
    sigma = np.where(np.isnan(kappa), np.nan, sigma)
    kappa = np.where(np.isnan(kappa), np.inf, kappa)
    return np.where(ok, kappa, np.nan), np.where(ok, sigma, np.nan)


def _gpd_quantiles(p: np.ndarray, kappa: np.ndarray, sigma: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Quantiles (M, c) at probabilities ``p`` (M,) of generalized Paretos with columns' k, sigma, mu (c,)."""
    lp = np.log1p(-p)[:, None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        safe_k = np.where(kappa == 0, 1.0, kappa)
        q = np.where(kappa == 0, mu - sigma * lp, mu + sigma * np.expm1(-safe_k * lp) / safe_k)
    return np.where(sigma > 0, q, np.nan)


def _largest(values: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of each column's values, each value repeated ``counts`` times, in descending order.

    Parameters
    ----------
    values : array (D, c)
        Distinct draws' values (-inf for a row no draw uses).
    counts : array (D,)
        How many draws each row stands for (whole numbers; their sum at least ``k``).
    k : int

    Returns
    -------
    array (k, c)
    """
    D, c = values.shape
    K = min(D, k)                                                           # k repeats need at most k rows
    pick = np.argpartition(values, D - K, axis=0)[D - K:] if K < D else np.broadcast_to(
        np.arange(D)[:, None], (D, c))
    vals = np.take_along_axis(values, pick, axis=0)                         # (K, c)
    order = np.argsort(-vals, axis=0, kind="stable")
    vals = np.take_along_axis(vals, order, axis=0)
    reps = np.minimum(np.rint(counts).astype(np.int64)[np.take_along_axis(pick, order, axis=0)], k)   # (K, c)
    # column by column (column-major), each value repeated; then each column's first k
    flat = np.repeat(vals.T.ravel(), reps.T.ravel())
    starts = np.concatenate([[0], np.cumsum(reps.sum(axis=0))[:-1]])
    return flat[starts[None, :] + np.arange(k)[:, None]]


def _chunk(rows: np.ndarray, index: np.ndarray | None, log_counts: np.ndarray,
           r_eff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """elpd_i, pareto_k, p_loo_i of each column of ``rows`` (D, c): the draws are ``rows[index]`` (S of them).

    ``log_counts`` (D, 1) is the log of each row's number of draws (-inf for a row no draw uses).
    """
    S = rows.shape[0] if index is None else index.size
    M = tail_length(S, r_eff)
    if M < 5:
        raise FitError(f"Pareto smoothing needs at least 5 tail draws: {S} draws give {M}; draw more.")
    used = np.isfinite(log_counts)
    lppd = logsumexp(rows + log_counts, axis=0) - math.log(S)
    shift = np.max(np.where(used, -rows, -np.inf), axis=0)                 # the largest log ratio
    ratio_rows = np.where(used, -rows - shift[None, :], -np.inf)            # log ratios, max 0 (unused: -inf)
    top = _largest(ratio_rows, np.exp(log_counts[:, 0]), M + 1)             # (M + 1, c) descending, repeats kept
    cutoff = top[M]
    tail = top[M - 1::-1]                                                   # (M, c) ascending
    same = np.abs(tail[-1] - tail[0]) < np.finfo(float).tiny
    kappa, sigma = _gpd_fit(np.exp(tail) - np.exp(cutoff)[None, :])
    kappa = np.where(same, 0.0, kappa)                                      # a constant tail: nothing to smooth
    smooth = np.isfinite(kappa) & ~same
    p = np.arange(0.5, M) / M
    with np.errstate(divide="ignore", invalid="ignore"):
        smoothed = np.log(_gpd_quantiles(p, kappa, sigma, np.exp(cutoff)))
    smoothed = np.where(smoothed > tail[-1][None, :], tail[-1][None, :], smoothed)
    new_tail = np.where(smooth[None, :], smoothed, tail)
    # the weights' normalising constant: the body's raw ratios (the S - M smallest: every ratio below the cutoff
    # and as many copies of the cutoff as are left), the tail smoothed
    counts = np.exp(log_counts)                                             # (D, 1)
    below = ratio_rows < cutoff[None, :]
    with np.errstate(under="ignore"):
        body = np.sum(np.where(below, counts * np.exp(ratio_rows), 0.0), axis=0)
    body += (S - M - np.sum(np.where(below, counts, 0.0), axis=0)) * np.exp(cutoff)
    total = np.log(body + np.exp(new_tail).sum(axis=0))
    # log(w_s lik_s) = -total - shift outside the tail (a raw ratio is the inverse likelihood); inside it the
    # smoothed ratio replaces the raw one
    const = -total - shift
    with np.errstate(divide="ignore"):
        body_term = np.log(S - M) + const
    elpd = logsumexp(np.concatenate([body_term[None, :], new_tail - tail + const[None, :]], axis=0), axis=0)
    return elpd, kappa, lppd - elpd


def psis_loo(rows: np.ndarray, index: np.ndarray | None = None, *, r_eff: float = 1.0,
             progress=None, workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSIS-LOO of each unit from its log-likelihood draws.

    Parameters
    ----------
    rows : array (D, n)
        Log-likelihood of each unit (column) at D draws, or at D distinct draws when ``index`` is given.
    index : int array (S,), optional
        Which row each of the S draws is (a draw repeated by the engine is one row). Default: the rows.
    r_eff : float
        Relative efficiency of the draws (sets the tail length).
    progress : callable, optional
        Called with the number of units done after each chunk.
    workers : int
        Processes sharing the chunks (:func:`twoway.results.workers.map_tasks`; forked, so the
        rows are shared, not copied). 1: this process.

    Returns
    -------
    elpd_i, pareto_k, p_loo_i : arrays (n,)
    """
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2:
        raise FitError(f"The log-likelihood must be (draws, units); got shape {rows.shape}.")
    if index is not None:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= rows.shape[0]):
            raise FitError("A draw's index points outside the rows of the log-likelihood.")
    S = rows.shape[0] if index is None else index.size
    n = rows.shape[1]
    if not (math.isfinite(r_eff) and r_eff > 0):
        r_eff = 1.0
    counts = np.ones(rows.shape[0]) if index is None else np.bincount(index, minlength=rows.shape[0])
    with np.errstate(divide="ignore"):
        log_counts = np.log(counts.astype(float))[:, None]
    from twoway.results.workers import map_tasks

    step = max(1, min(n, CHUNK_BYTES // (8 * max(1, S))))
    starts = list(range(0, n, step))
    if workers > 1 and len(starts) < 4 * workers:                          # no process for a few chunks
        workers = 1

    def one(start):
        stop = min(n, start + step)
        yield start, _chunk(rows[:, start:stop], index, log_counts, r_eff)

    elpd, k, p = np.empty(n), np.empty(n), np.empty(n)
    done = 0
    for _, (start, (e, kk, pp)) in map_tasks(one, starts, workers=workers):
        stop = start + e.size
        elpd[start:stop], k[start:stop], p[start:stop] = e, kk, pp
        done += e.size
        if progress is not None:
            progress(done)
    return elpd, k, p
