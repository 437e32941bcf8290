"""Quantities derived from the parameters after sampling.

``row_mean[i]`` is the expected value of row i averaged over the table's
columns, ``intercept + row_effect[i] + mean_j col_effect[j]``, and likewise
``col_mean[j]``. Unlike the effects themselves (which trade off against the
intercept), these are pinned down by the data.

A fit does not store them: they repeat the intercept and the effects in every
draw, so :attr:`twoway.fit.Fit.posterior` computes them when it is read (a
file written before this holds them, and they are read from it as stored).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DERIVED_MEANS", "MEAN_SOURCES", "row_col_means"]

#: The derived means, in the order a posterior lists them (after every stored parameter).
DERIVED_MEANS = ("row_mean", "col_mean")

#: The parameters the derived means are computed from (a posterior may lack any of them).
MEAN_SOURCES = ("intercept", "row_effect", "col_effect")


def row_col_means(intercept, row_effect, col_effect):
    """Row and column means of the fitted table.

    Parameters
    ----------
    intercept : array (...,) or scalar
    row_effect : array (..., N) or None
    col_effect : array (..., K) or None

    Returns
    -------
    (row_mean, col_mean) : arrays (..., N) and (..., K), either None when its effect is None
    """
    intercept = np.asarray(intercept, dtype=float)
    row_bar = 0.0 if row_effect is None else np.mean(row_effect, axis=-1)
    col_bar = 0.0 if col_effect is None else np.mean(col_effect, axis=-1)
    row_mean = None if row_effect is None else (intercept + col_bar)[..., None] + row_effect
    col_mean = None if col_effect is None else (intercept + row_bar)[..., None] + col_effect
    return row_mean, col_mean
