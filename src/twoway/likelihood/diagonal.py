"""The elementwise path: independent cells, each with its own variance.

The functions here use only arithmetic operators, so they accept NumPy arrays
and PyTensor tensors alike; the simulator and the fitted model share them.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["residual_sd", "diagonal_logp"]

_LOG_2PI = math.log(2.0 * math.pi)


def residual_sd(se, row_sd, col_sd, sigma, *, combine: str):
    """Residual standard deviation of each cell (the independent part; ``cell_sd`` is the random cell effect's sd).

    Parameters
    ----------
    se : array (C,) or scalar
        Known standard error of each cell (0 where none is given).
    row_sd, col_sd : array (C,) or scalar or None
        The unknown row and column scales, already indexed to the cells; None
        where the model has no such term.
    sigma : scalar or None
        The cell-level scale, None where the model has none.
    combine : {"variance", "sd"}
        ``variance``: ``sqrt(se^2 + row_sd^2 + col_sd^2 + sigma^2)``;
        ``sd``: ``se + row_sd + col_sd + sigma``.

    Returns
    -------
    array (C,)
    """
    terms = [t for t in (row_sd, col_sd, sigma) if t is not None]
    if combine == "variance":
        total = se * se
        for t in terms:
            total = total + t * t
        return total ** 0.5
    if combine == "sd":
        total = se
        for t in terms:
            total = total + t
        return total
    raise ValueError(f"combine must be 'variance' or 'sd'; got {combine!r}")


def diagonal_logp(y, mu, sd):
    """Pointwise normal log-density of independent cells (NumPy).

    Parameters
    ----------
    y, mu, sd : array (..., C)

    Returns
    -------
    array (..., C)
    """
    z = (y - mu) / sd
    return -0.5 * z * z - np.log(sd) - 0.5 * _LOG_2PI


cell_sd = residual_sd  # the older name of residual_sd; ``cell_sd`` now names the random cell effect's sd
