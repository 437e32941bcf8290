"""The one statistics helper of the results: per-component statistics tables and the highest-density interval.

Every table of posterior statistics twoway prints (a fit's summary, contrasts, the
variance decomposition) is :func:`statistics_table`, and every interval (those tables',
the recovery table's, the report's, predictions') is :func:`hdi`, computed as
``arviz_stats.hdi(method="nearest")`` computes it. R-hat and the effective sample sizes
come from :mod:`twoway.results.diagnostics`. Importing this module costs only NumPy;
the tables import pandas when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from twoway.results.diagnostics import TAIL_PROB, component_labels, ess_bulk, ess_tail, rhat

# Deferred imports: pandas (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import xarray

__all__ = ["hdi", "summary_table", "statistics_table", "interval_names"]


def _pooled(x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Draws (chains, draws, *shape) as float (components, chains * draws), and ``shape``."""
    x = np.asarray(x, dtype=float)
    if x.ndim < 2:
        raise ValueError(f"The draws must have shape (chains, draws, ...); got shape {x.shape}.")
    shape = x.shape[2:]
    return x.reshape(x.shape[0] * x.shape[1], -1).T, shape


def _hdi_pooled(pooled: np.ndarray, prob: float) -> np.ndarray:
    """The HDI of each row of ``pooled`` (components, S): array (components, 2)."""
    if not 0 < prob <= 1:
        raise ValueError(f"The interval probability must be in (0, 1]; got {prob!r}.")
    n = pooled.shape[1]
    if n == 0:
        raise ValueError("There are no draws to compute an interval from.")
    srt = np.sort(pooled, axis=1)
    inc = min(int(np.floor(prob * n)), n - 1)
    widths = srt[:, inc:] - srt[:, : n - inc]
    best = np.argmin(widths, axis=1)
    rows = np.arange(srt.shape[0])
    return np.stack((srt[rows, best], srt[rows, best + inc]), axis=-1)


def hdi(x: Any, prob: float = 0.94) -> np.ndarray:
    """Highest-density interval: the narrowest interval holding ``prob`` of the pooled draws.

    With ``S`` draws sorted, the interval runs from draw ``i`` to draw ``i + floor(prob S)``
    (at most ``S - 1``) for the ``i`` giving the least width, the first such ``i`` on ties,
    as ``arviz_stats.hdi(method="nearest")``. A component with nan draws gets an
    arbitrary interval or nan, as in ArviZ.

    Parameters
    ----------
    x : array_like, shape (chains, draws, *shape)
        Chains and draws are pooled; draws of shape (S, *shape) with no chains are ``x[None]``.
    prob : float
        In (0, 1].

    Returns
    -------
    numpy.ndarray, shape (*shape, 2)
        Lower and upper bounds.
    """
    pooled, shape = _pooled(x)
    return _hdi_pooled(pooled, prob).reshape(*shape, 2)


def summary_table(posterior: xarray.Dataset, names: Sequence[str] | None = None, ci_prob: float = 0.94,
                  *, tail_prob: float | tuple[float, float] = TAIL_PROB) -> pandas.DataFrame:
    """Per-component statistics and diagnostics of a posterior, as ``az.summary`` gives them.

    Parameters
    ----------
    posterior : xarray.Dataset
        Variables with dimensions ``chain``, ``draw`` and any others.
    names : sequence of str, optional
        Variables to include, in this order (default: all).
    ci_prob : float
        Probability of the highest-density interval, in (0, 1).
    tail_prob : float or (float, float)
        Quantile levels of the tail ESS (see :func:`twoway.results.diagnostics.ess_tail`);
        the paper's 5% and 95% by default. (``az.summary`` takes them from
        ``rcParams["stats.ci_prob"]``, 0.89 unless set: the 11% and 89% quantiles; pass
        that value to reproduce its ``ess_tail``.)

    Returns
    -------
    pandas.DataFrame
        One row per component, indexed by :func:`twoway.results.diagnostics.component_labels`
        (ArviZ's summary index); float columns ``mean, sd, hdi{P}_lb, hdi{P}_ub, ess_bulk,
        ess_tail, r_hat`` with ``P = int(100 ci_prob)`` (ArviZ's column names for
        ``kind="all", ci_kind="hdi"``, less its MCSE columns). ``sd`` has ``ddof=1``.
    """
    import pandas as pd

    if not 0 < ci_prob < 1:
        raise ValueError(f"The interval probability must be between 0 and 1; got {ci_prob!r}.")
    names = list(posterior.data_vars) if names is None else list(names)
    perc = int(ci_prob * 100)
    labels: list[str] = []
    blocks: list[np.ndarray] = []
    for name in names:
        da = posterior[name]
        missing = {"chain", "draw"} - set(da.dims)
        if missing:
            raise ValueError(f"The variable {name!r} lacks the dimension(s) {', '.join(sorted(missing))}.")
        da = da.transpose("chain", "draw", ...)
        values = np.asarray(da.values, dtype=float)
        pooled, _ = _pooled(values)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = pooled.mean(axis=1)
            sd = pooled.std(axis=1, ddof=1) if pooled.shape[1] >= 2 else np.full(pooled.shape[0], np.nan)
        interval = _hdi_pooled(pooled, ci_prob)
        blocks.append(np.column_stack([mean, sd, interval[:, 0], interval[:, 1],
                                       np.ravel(ess_bulk(values)), np.ravel(ess_tail(values, tail_prob)),
                                       np.ravel(rhat(values))]))
        labels += component_labels(name, da)
    columns = ["mean", "sd", f"hdi{perc}_lb", f"hdi{perc}_ub", "ess_bulk", "ess_tail", "r_hat"]
    values = np.concatenate(blocks, axis=0) if blocks else np.empty((0, len(columns)))
    return pd.DataFrame(values, index=pd.Index(labels), columns=columns)


def statistics_table(post: xarray.Dataset, names: list[str], ci_prob: float = 0.94) -> pandas.DataFrame:
    """Per-component statistics of ``post[names]``: ``mean, sd, hdi_L%, hdi_U%, ess_bulk, ess_tail, r_hat``.

    Parameters
    ----------
    post : xarray.Dataset
        Variables with dims ``chain``, ``draw`` and any others.
    names : list of str
    ci_prob : float
        Probability of the highest-density interval; its columns are named by the
        tails it leaves (``hdi_3%``, ``hdi_97%`` for 0.94).

    Returns
    -------
    pandas.DataFrame
        One row per component (labels as :func:`summary_table`), the seven float columns.
    """
    import pandas as pd

    raw = summary_table(post, names, ci_prob)
    lo_name, hi_name = interval_names(ci_prob)
    lo_col, hi_col = raw.columns[2], raw.columns[3]
    return pd.DataFrame({
        "mean": raw["mean"].astype(float),
        "sd": raw["sd"].astype(float),
        lo_name: raw[lo_col].astype(float),
        hi_name: raw[hi_col].astype(float),
        "ess_bulk": raw["ess_bulk"].astype(float),
        "ess_tail": raw["ess_tail"].astype(float),
        "r_hat": raw["r_hat"].astype(float),
    })


def interval_names(ci_prob: float) -> tuple[str, str]:
    """The names of an interval's bounds: ``("hdi_3%", "hdi_97%")`` for 0.94."""
    pct = 100 * ci_prob
    return f"hdi_{(100 - pct) / 2:g}%", f"hdi_{100 - (100 - pct) / 2:g}%"
