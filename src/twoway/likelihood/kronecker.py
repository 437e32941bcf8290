"""Kronecker residuals ``U (x) V`` on complete tables: factors handled separately.

For a complete (R, N, K) residual grid E with covariance ``I_R (x) U (x) V``
the inverse is ``I_R (x) U^-1 (x) V^-1``, so every projection onto the row and
column indicators needs only N x N and K x K algebra:

* ``kronecker-cholesky``: U^-1 and V^-1 from Cholesky factors of U and V;
* ``kronecker-ar1``: U^-1 is the closed-form tridiagonal AR(1) precision and
  log|U| closed-form too;
* ``kronecker-eigen``: ``U (x) V + s^2 I`` (a nugget) through the
  eigen-decompositions of U and V.

Tables with missing cells or known per-cell se fall back to the dense path per
replicate (:mod:`twoway.likelihood.dense`). All functions accept leading batch
dimensions with NumPy. With covariates (a grid X (R, N, K, p)) each replicate's
covariate k is one more (N, K) "indicator" matrix ``X_rk``, seen through
``U^-1 X_rk V^-1`` (or the eigenbases), which augments P and b by p.
"""

from __future__ import annotations

import numpy as np

from twoway.likelihood.woodbury import Projections, augment

# Deferred imports: scipy (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["kron", "kronecker_path", "inverse_and_logdet", "kron_precision_projections",
           "kron_eigen_projections"]


def kron(ops, a, b):
    """Kronecker product of two matrices (no batch)."""
    return ops.kron(a, b)


def kronecker_path(spec, lay) -> str:
    """The Kronecker path for ``spec`` on this layout."""
    if not lay.complete or np.any(lay.se):
        return "dense-table"
    if spec.sigma:
        return "kronecker-eigen"
    if lay.parts["row"].kind == "ar1":
        return "kronecker-ar1"
    return "kronecker-cholesky"


def _mT(x):
    return x.swapaxes(-1, -2) if hasattr(x, "swapaxes") else x.T


def inverse_and_logdet(ops, a):
    """(A^-1, log|A|) of a symmetric positive definite (..., n, n) matrix via its Cholesky factor."""
    n = a.shape[-1]
    L = ops.cholesky(a)
    eye = ops.eye(n)
    Li = ops.solve_lower(L, eye + 0.0 * a)
    return _mT(Li) @ Li, 2.0 * ops.logdiag_sum(L)


def _assemble(ops, rows, cross, cols):
    top = ops.concatenate([rows, cross], axis=-1)
    bottom = ops.concatenate([_mT(cross), cols], axis=-1)
    return ops.concatenate([top, bottom], axis=-2)


def _covariates_last(ops, Xt):
    """(..., R, p, N, K) -> (..., R, N, K, p)."""
    return ops.swapaxes(ops.swapaxes(Xt, -3, -2), -2, -1)


def _covariate_products(ops, T, Xt):
    """``sum_r <T_rk, Xt_rl>`` (..., p, p) of two (..., R, p, N, K) stacks of matrices."""
    return ops.sum(ops.sum(ops.swapaxes(T, -3, -2) @ _covariates_last(ops, Xt), axis=-3), axis=-3)


def kron_precision_projections(ops, r, u_inv, v_inv, logdet_u, logdet_v, n_rep: int, X=None) -> Projections:
    """Projections of ``I_R (x) U (x) V`` given the factors' inverses and log-determinants.

    Parameters
    ----------
    r : array (R, N, K)
        Complete residual grid.
    u_inv : array (..., N, N)
    v_inv : array (..., K, K)
    logdet_u, logdet_v : scalar (...,)
    n_rep : int
    X : array (R, N, K, p), optional
        The covariates on the grid: P and b are augmented through ``T_rk = U^-1 X_rk V^-1``.
    """
    N, K = u_inv.shape[-1], v_inv.shape[-1]
    a = ops.sum(u_inv, axis=-1)                  # U^-1 1, (..., N)
    bv = ops.sum(v_inv, axis=-1)                 # V^-1 1, (..., K)
    cu = ops.sum(a, axis=-1)
    cv = ops.sum(bv, axis=-1)
    rows = n_rep * cv[..., None, None] * u_inv if getattr(cv, "ndim", 0) else n_rep * cv * u_inv
    cols = n_rep * cu[..., None, None] * v_inv if getattr(cu, "ndim", 0) else n_rep * cu * v_inv
    cross = n_rep * a[..., :, None] * bv[..., None, :]
    P = _assemble(ops, rows, cross, cols)
    S = ops.sum(r, axis=-3)                      # (N, K)
    b_rows = ops.sum((u_inv @ S) * bv[..., None, :], axis=-1)
    b_cols = ops.sum((v_inv @ _mT(S)) * a[..., None, :], axis=-1)
    b = ops.concatenate([b_rows, b_cols], axis=-1)
    # q = sum_r tr(V^-1 E_r' U^-1 E_r)
    UE = u_inv[..., None, :, :] @ r                # (..., R, N, K)
    EV = r @ v_inv[..., None, :, :]                # (..., R, N, K)
    quad = ops.sum(ops.sum(ops.sum(UE * EV, axis=-1), axis=-1), axis=-1)
    logdet = n_rep * (K * logdet_u + N * logdet_v)
    if X is not None:
        Xt = ops.asarray(np.moveaxis(X, -1, -3))                                     # (R, p, N, K)
        T = u_inv[..., None, None, :, :] @ Xt @ v_inv[..., None, None, :, :]          # (..., R, p, N, K)
        T_sum = ops.sum(T, axis=-4)                                                  # (..., p, N, K)
        P_rX = _mT(ops.sum(T_sum, axis=-1))
        P_cX = _mT(ops.sum(T_sum, axis=-2))
        b_X = ops.sum(ops.sum(ops.sum(T * r[..., :, None, :, :], axis=-1), axis=-1), axis=-2)
        P, b = augment(ops, P, b, (P_rX, P_cX, _covariate_products(ops, T, Xt), b_X))
    return Projections(logdet=logdet, quad=quad, P=P, b=b, n_obs=-1)


def fixed_eigenvectors(structure) -> np.ndarray | None:
    """Eigenvectors that do not depend on the parameters, when the structure has them.

    ``iid`` and ``diag``: the identity; ``cs``: an orthonormal basis whose first
    vector is constant (every compound-symmetric matrix is diagonal in it);
    ``known``: the known matrix's own eigenvectors, computed once. With these
    the eigenvalues are ``diag(Q' A Q)``, which keeps gradients exact where
    eigenvalues repeat (a generic eigen-decomposition's gradient is not).
    """
    n = structure.n
    if structure.kind in ("iid", "diag"):
        return np.eye(n)
    if structure.kind == "cs":
        from scipy.linalg import helmert

        return helmert(n, full=True).T.copy()
    if structure.kind == "known":
        return np.linalg.eigh(structure.known)[1]
    return None


def factor_eigh(ops, a, structure):
    """(eigenvalues (..., n), eigenvectors (..., n, n)) of a factor, exact-gradient where possible."""
    q = fixed_eigenvectors(structure) if structure is not None else None
    if q is None:
        return ops.eigh(a)
    qa = ops.asarray(q)
    vals = ops.sum((a @ qa) * qa, axis=-2)     # diag(Q' A Q)
    return vals, qa + 0.0 * a if ops.batched else qa


def kron_eigen_projections(ops, r, u, v, nugget, n_rep: int, row_structure=None,
                           col_structure=None, X=None) -> Projections:
    """Projections of ``I_R (x) (U (x) V + nugget I)`` through the eigen-decompositions of U and V.

    Parameters
    ----------
    r : array (R, N, K)
    u : array (..., N, N)
    v : array (..., K, K)
    nugget : scalar (...,)
    X : array (R, N, K, p), optional
        The covariates on the grid: P and b are augmented through ``Qu' X_rk Qv``.
    """
    lam, qu = factor_eigh(ops, u, row_structure)
    mu, qv = factor_eigh(ops, v, col_structure)
    if getattr(nugget, "ndim", 0):
        nugget = nugget[..., None, None]
    lm = lam[..., :, None] * mu[..., None, :] + nugget      # (..., N, K)
    om = 1.0 / lm
    p = ops.sum(qu, axis=-2)                                  # Qu' 1, (..., N)
    qq = ops.sum(qv, axis=-2)                                 # Qv' 1, (..., K)
    d_rows = ops.sum(om * (qq * qq)[..., None, :], axis=-1)   # (..., N)
    d_cols = ops.sum(om * (p * p)[..., :, None], axis=-2)     # (..., K)
    rows = n_rep * (qu * d_rows[..., None, :]) @ _mT(qu)
    cols = n_rep * (qv * d_cols[..., None, :]) @ _mT(qv)
    cross = n_rep * qu @ (om * p[..., :, None] * qq[..., None, :]) @ _mT(qv)
    P = _assemble(ops, rows, cross, cols)
    Et = _mT(qu)[..., None, :, :] @ r @ qv[..., None, :, :]  # (..., R, N, K)
    St = ops.sum(Et, axis=-3)
    OS = om * St
    b_rows = qu @ ops.sum(OS * qq[..., None, :], axis=-1)[..., :, None]
    b_cols = qv @ ops.sum(OS * p[..., :, None], axis=-2)[..., :, None]
    b = ops.concatenate([b_rows[..., 0], b_cols[..., 0]], axis=-1)
    quad = ops.sum(ops.sum(ops.sum(om[..., None, :, :] * Et * Et, axis=-1), axis=-1), axis=-1)
    logdet = n_rep * ops.sum(ops.sum(ops.log(lm), axis=-1), axis=-1)
    if X is not None:
        Xt = ops.asarray(np.moveaxis(X, -1, -3))                                     # (R, p, N, K)
        Xe = _mT(qu)[..., None, None, :, :] @ Xt @ qv[..., None, None, :, :]          # (..., R, p, N, K)
        OX = om[..., None, None, :, :] * Xe
        OX_sum = ops.sum(OX, axis=-4)                                                # (..., p, N, K)
        P_rX = qu @ _mT(ops.sum(OX_sum * qq[..., None, None, :], axis=-1))           # (..., N, p)
        P_cX = qv @ _mT(ops.sum(OX_sum * p[..., None, :, None], axis=-2))            # (..., K, p)
        b_X = ops.sum(ops.sum(ops.sum(OX * Et[..., :, None, :, :], axis=-1), axis=-1), axis=-2)
        P, b = augment(ops, P, b, (P_rX, P_cX, _covariate_products(ops, OX, Xe), b_X))
    return Projections(logdet=logdet, quad=quad, P=P, b=b, n_obs=-1)
