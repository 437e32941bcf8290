"""The balanced crossed path: two-way ANOVA eigen-decomposition.

On a complete (R, N, K) table with one residual variance v for every cell,
row effects and column effects that are exchangeable (random with identity
relationship, or fixed summing to zero), an optional random cell effect (variance e) and a normal
intercept, the covariance
``s0^2 J + a (J_R x I_N x J_K) + c (J_R x J_N x I_K) + e (J_R x I_N x I_K) + v I`` has five
eigen-spaces: the grand mean, row contrasts, column contrasts, interaction
and within-cell (replicate) contrasts. The squared length of the data in each
of them is computed once, before sampling; an evaluation then costs O(1)
whatever the size of the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twoway.likelihood.woodbury import gaussian_logp_from

__all__ = ["AnovaStats", "anova_stats", "anova_logp"]


@dataclass(frozen=True)
class AnovaStats:
    """Sums of squares of the centred data in each eigen-space, and their dimensions."""

    R: int
    N: int
    K: int
    ss_grand: float
    ss_row: float
    ss_col: float
    ss_inter: float
    ss_within: float

    @property
    def n_obs(self) -> int:
        return self.R * self.N * self.K


def anova_stats(r: np.ndarray) -> AnovaStats:
    """Sufficient statistics of a complete residual table ``r`` (R, N, K)."""
    R, N, K = r.shape
    cell = r.mean(axis=0)
    grand = cell.mean()
    row = cell.mean(axis=1)
    col = cell.mean(axis=0)
    inter = cell - row[:, None] - col[None, :] + grand
    return AnovaStats(
        R, N, K,
        ss_grand=float(R * N * K * grand**2),
        ss_row=float(R * K * np.sum((row - grand) ** 2)),
        ss_col=float(R * N * np.sum((col - grand) ** 2)),
        ss_inter=float(R * np.sum(inter**2)),
        ss_within=float(np.sum((r - cell[None]) ** 2)),
    )


def anova_logp(ops, st: AnovaStats, v, *, row_var=0.0, col_var=0.0, row_mean_var=0.0,
               col_mean_var=0.0, grand_var=0.0, cell_var=0.0):
    """Log-density on the balanced path.

    Parameters
    ----------
    st : AnovaStats
    v : scalar
        Residual variance of every cell.
    row_var, col_var : scalar
        Variance of the row (column) effects in the contrast directions:
        ``tau^2`` for random effects, the prior variance for fixed ones.
    row_mean_var, col_mean_var : scalar
        Variance the effects add to the grand mean direction: ``tau^2`` for
        random effects, 0 for fixed effects (they sum to zero).
    grand_var : scalar
        Prior variance of the intercept.
    cell_var : scalar
        Variance of a random cell effect shared by the replicates of a cell:
        ``R cell_var`` is added to every eigenvalue but the within-cell one.
    """
    R, N, K = st.R, st.N, st.K
    lam_cell = v + R * cell_var
    lam_grand = lam_cell + R * K * row_mean_var + R * N * col_mean_var + R * N * K * grand_var
    lam_row = lam_cell + R * K * row_var
    lam_col = lam_cell + R * N * col_var
    dims_inter = (N - 1) * (K - 1)
    dims_within = (R - 1) * N * K
    logdet = (ops.log(lam_grand) + (N - 1) * ops.log(lam_row) + (K - 1) * ops.log(lam_col)
              + dims_inter * ops.log(lam_cell) + dims_within * ops.log(v))
    quad = (st.ss_grand / lam_grand + st.ss_row / lam_row + st.ss_col / lam_col
            + st.ss_inter / lam_cell + st.ss_within / v)
    return gaussian_logp_from(st.n_obs, logdet, quad)
