"""Checking fits against what is known: recovery of true parameters."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from twoway.errors import FitError

__all__ = ["recovery", "hdi_bounds"]


def hdi_bounds(draws: np.ndarray, prob: float = 0.94) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval of draws along axis 0.

    Parameters
    ----------
    draws : array (S, ...)
    prob : float

    Returns
    -------
    (low, high) : arrays (...)
    """
    x = np.sort(np.asarray(draws, dtype=float), axis=0)
    n = x.shape[0]
    k = max(1, int(np.floor(prob * n)))
    widths = x[k:] - x[: n - k]
    best = np.argmin(widths, axis=0)
    low = np.take_along_axis(x[: n - k], best[None, ...], axis=0)[0]
    high = np.take_along_axis(x[k:], best[None, ...], axis=0)[0]
    return low, high


def recovery(fit, truth: Mapping[str, Any], *, prob: float = 0.94,
             names: list[str] | None = None) -> pd.DataFrame:
    """Compare a fit's posterior with the true parameters.

    Parameters
    ----------
    fit : Fit
    truth : mapping
        Parameter name to a scalar, an array (N,) / (K,), or ``{label: value}``
        (the form of :meth:`Simulation.truth_dict`).
    prob : float
        Probability of the highest-density interval.
    names : list of str, optional
        Parameters to compare (default: every one in both truth and posterior).

    Returns
    -------
    pandas.DataFrame
        Index ``name`` or ``name[label]``; columns ``true, mean, low, high,
        covered, error`` (error = mean - true).
    """
    post = fit.posterior
    names = names or [n for n in truth if n in post]
    rows = []
    for name in names:
        if name not in post:
            raise FitError(f"The parameter {name!r} is not in the fit's posterior.")
        da = post[name]
        flat = da.stack(sample=("chain", "draw")).transpose("sample", ...)
        draws = flat.values
        value = truth[name]
        extra = [d for d in flat.dims if d != "sample"]
        if extra:
            labels = [str(v) for v in flat[extra[0]].values]
            if isinstance(value, Mapping):
                true = np.array([float(value[lab]) for lab in labels])
            else:
                true = np.asarray(value, dtype=float).reshape(len(labels))
            keys = [f"{name}[{lab}]" for lab in labels]
        else:
            true = np.array([float(value)])
            draws = draws[:, None]
            keys = [name]
        low, high = hdi_bounds(draws, prob)
        mean = draws.mean(axis=0)
        for k, t, m, lo, hi in zip(keys, true, mean, low, high):
            rows.append({"parameter": k, "true": t, "mean": m, "low": lo, "high": hi,
                         "covered": bool(lo <= t <= hi), "error": m - t})
    return pd.DataFrame(rows).set_index("parameter")
