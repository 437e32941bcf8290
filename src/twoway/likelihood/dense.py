"""The dense path: build the covariance of the observed cells, factor it once.

This is the fallback for structures no faster method covers and the oracle
every fast path is tested against.
"""

from __future__ import annotations

from twoway.likelihood.woodbury import Projections, gaussian_logp_from

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



def dense_table_projections(ops, r_obs, obs_flat, indicators, table_cov, noise_var_obs):
    """Projections of a residual with a dense covariance per replicate table.

    Parameters
    ----------
    r_obs : list of arrays (n_r,)
        For each replicate, the residuals of its observed cells.
    obs_flat : list of int arrays (n_r,)
        For each replicate, the flat (row-major) indices of its observed cells.
    indicators : list of arrays (n_r, N+K+p)
        For each replicate, the augmented indicators ``[rows | cols | X]`` of its
        observed cells (p = 0 without covariates).
    table_cov : array (N K, N K)
        Covariance of one complete table (shared by the replicates).
    noise_var_obs : list of arrays (n_r,)
        For each replicate, an independent variance added to its observed cells.

    Returns
    -------
    Projections
    """

    P = b = quad = logdet = 0.0
    for rk, idx, X, noise in zip(r_obs, obs_flat, indicators, noise_var_obs):
        cov = table_cov[idx][:, idx] + ops.diag(noise)
        L = ops.cholesky(cov)
        V = ops.solve_lower(L, ops.asarray(X))
        v = ops.solve_lower(L, rk[:, None])[:, 0]
        P = P + V.T @ V
        b = b + V.T @ v
        quad = quad + ops.sum(v * v)
        logdet = logdet + 2.0 * ops.logdiag_sum(L)
    return Projections(logdet=logdet, quad=quad, P=P, b=b, n_obs=-1)
