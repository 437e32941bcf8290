"""The dense path: build the covariance of the observed cells, factor it once.

This is the fallback for structures no faster method covers and the oracle
every fast path is tested against.
"""

from __future__ import annotations

from twoway.likelihood.woodbury import gaussian_logp_from

__all__ = ["dense_logp"]


def dense_logp(ops, r, cov, n_obs: int):
    """Log-density of ``r ~ N(0, cov)``.

    Parameters
    ----------
    r : array (n,)
    cov : array (n, n)
    n_obs : int
        n, the number of observed cells.

    Returns
    -------
    scalar
    """
    L = ops.cholesky(cov)
    v = ops.solve_lower(L, r[:, None])[:, 0]
    return gaussian_logp_from(n_obs, 2.0 * ops.logdiag_sum(L), ops.sum(v * v))
