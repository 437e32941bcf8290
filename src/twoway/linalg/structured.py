"""Closed forms of the structured covariance matrices, written once against the ops protocol.

Pure functions that take NumPy, PyTensor or JAX arrays alike (the ops are
found from the arguments, :func:`twoway.linalg.ops.ops_for`): the
matrix, log-determinant, precision and quadratic form ``x' A^-1 x`` of
``ar1`` (tridiagonal precision), ``cs`` (identity plus rank one) and
factor-analytic matrices (Woodbury and the matrix determinant lemma).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twoway.linalg.ops import ops_for

__all__ = ["ar1_matrix", "ar1_logdet", "ar1_precision", "ar1_quad", "cs_matrix", "cs_logdet", "cs_precision",
           "cs_quad", "fa_matrix", "fa_logdet", "fa_precision", "fa_quad", "fa_identify"]


# ---------------------------------------------------------------------------
# one set of operations for NumPy arrays and PyTensor tensors
# ---------------------------------------------------------------------------


def _ops(*xs: Any):
    """The ops of ``xs`` (:func:`twoway.linalg.ops.ops_for`): NumPy, PyTensor or JAX."""

    return ops_for(*xs)


def _ar1_constants(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity, the two first off-diagonals, and the two corner indicators (the (0,0) and (n-1,n-1) entries; both in the one entry when n = 1)."""
    eye = np.eye(n)
    off = np.eye(n, k=1) + np.eye(n, k=-1)
    ends = np.zeros((n, n))
    ends[0, 0] += 1.0
    ends[n - 1, n - 1] += 1.0
    return eye, off, ends


# ---------------------------------------------------------------------------
# ar1: s^2 rho^|i-j|
# ---------------------------------------------------------------------------


def ar1_matrix(rho: Any, sd2: Any, n: int) -> Any:
    """The AR(1) covariance ``sd2 * rho^|i-j|``.

    Parameters
    ----------
    rho : float or scalar tensor
        Lag-one correlation, in (-1, 1).
    sd2 : float or scalar tensor
        Variance (the diagonal).
    n : int
        Size.

    Returns
    -------
    array or tensor, shape (n, n)
    """
    lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    eye = np.eye(n)
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    # rho ** max(lag, 1) off the diagonal and 1 on it: finite gradient at rho = 0
    return sd2 * (eye + (1.0 - eye) * rho ** np.maximum(lag, 1).astype(float))


def ar1_logdet(rho: Any, sd2: Any, n: int) -> Any:
    """``log det`` of the AR(1) covariance: ``n log sd2 + (n - 1) log(1 - rho^2)``.

    Parameters
    ----------
    rho, sd2 : float or tensor
        Lag-one correlation and variance; any broadcastable shape.
    n : int

    Returns
    -------
    float or tensor, the broadcast shape of ``rho`` and ``sd2``
    """
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    return n * ops.log(sd2) + (n - 1) * ops.log(1.0 - rho * rho)


def ar1_precision(rho: Any, sd2: Any, n: int) -> Any:
    """The tridiagonal inverse of the AR(1) covariance.

    ``A^-1 = [(1 + rho^2) I - rho (S + S') - rho^2 (e_1 e_1' + e_n e_n')] / (sd2 (1 - rho^2))``
    with ``S`` the shift matrix.

    Parameters
    ----------
    rho, sd2 : float or scalar tensor
    n : int

    Returns
    -------
    array or tensor, shape (n, n)
    """
    eye, off, ends = _ar1_constants(n)
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    r2 = rho * rho
    return ((1.0 + r2) * eye - rho * off - r2 * ends) / (sd2 * (1.0 - r2))


def ar1_quad(rho: Any, sd2: Any, X: Any) -> Any:
    """The quadratic forms ``x' A^-1 x`` of the AR(1) covariance, in O(n) each.

    ``x' A^-1 x = [sum x_i^2 + rho^2 (sum x_i^2 - x_1^2 - x_n^2) - 2 rho sum x_i x_(i+1)] / (sd2 (1 - rho^2))``.

    Parameters
    ----------
    rho, sd2 : float or tensor
        Scalars, or shaped to broadcast with ``X[..., 0]``.
    X : array or tensor, shape (..., n)
        A batch of vectors.

    Returns
    -------
    array or tensor, shape (...)
    """
    ops = _ops(rho, sd2, X)
    rho, sd2, X = ops.asarray(rho), ops.asarray(sd2), ops.asarray(X)
    r2 = rho * rho
    ss = (X * X).sum(axis=-1)
    ends = X[..., 0] ** 2 + X[..., -1] ** 2
    lag = (X[..., :-1] * X[..., 1:]).sum(axis=-1)
    return (ss + r2 * (ss - ends) - 2.0 * rho * lag) / (sd2 * (1.0 - r2))


# ---------------------------------------------------------------------------
# cs: s^2 ((1 - rho) I + rho J)
# ---------------------------------------------------------------------------


def cs_matrix(rho: Any, sd2: Any, n: int) -> Any:
    """The compound-symmetry covariance ``sd2 ((1 - rho) I + rho J)``.

    Parameters
    ----------
    rho : float or scalar tensor
        Common correlation, in (-1/(n-1), 1).
    sd2 : float or scalar tensor
        Variance (the diagonal).
    n : int

    Returns
    -------
    array or tensor, shape (n, n)
    """
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    return sd2 * ((1.0 - rho) * np.eye(n) + rho * np.ones((n, n)))


def cs_logdet(rho: Any, sd2: Any, n: int) -> Any:
    """``log det`` of the compound-symmetry covariance.

    ``n log sd2 + (n - 1) log(1 - rho) + log(1 + (n - 1) rho)`` (eigenvalues
    ``1 - rho``, n - 1 times, and ``1 + (n - 1) rho``, times ``sd2``).

    Parameters
    ----------
    rho, sd2 : float or tensor; any broadcastable shape
    n : int

    Returns
    -------
    float or tensor, the broadcast shape of ``rho`` and ``sd2``
    """
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    return n * ops.log(sd2) + (n - 1) * ops.log(1.0 - rho) + ops.log(1.0 + (n - 1) * rho)


def cs_precision(rho: Any, sd2: Any, n: int) -> Any:
    """The inverse of the compound-symmetry covariance (identity plus rank one).

    ``A^-1 = [I - rho / (1 + (n - 1) rho) J] / (sd2 (1 - rho))``.

    Returns
    -------
    array or tensor, shape (n, n)
    """
    ops = _ops(rho, sd2)
    rho, sd2 = ops.asarray(rho), ops.asarray(sd2)
    c = rho / (1.0 + (n - 1) * rho)
    return (np.eye(n) - c * np.ones((n, n))) / (sd2 * (1.0 - rho))


def cs_quad(rho: Any, sd2: Any, X: Any) -> Any:
    """The quadratic forms ``x' A^-1 x`` of the compound-symmetry covariance, in O(n) each.

    ``x' A^-1 x = [sum x_i^2 - rho / (1 + (n - 1) rho) (sum x_i)^2] / (sd2 (1 - rho))``.

    Parameters
    ----------
    rho, sd2 : float or tensor
        Scalars, or shaped to broadcast with ``X[..., 0]``.
    X : array or tensor, shape (..., n)

    Returns
    -------
    array or tensor, shape (...)
    """
    ops = _ops(rho, sd2, X)
    rho, sd2, X = ops.asarray(rho), ops.asarray(sd2), ops.asarray(X)
    n = X.shape[-1]
    ss = (X * X).sum(axis=-1)
    total = X.sum(axis=-1)
    return (ss - rho / (1.0 + (n - 1) * rho) * total * total) / (sd2 * (1.0 - rho))


# ---------------------------------------------------------------------------
# factor-analytic: Lambda Lambda' + diag(psi)
# ---------------------------------------------------------------------------


def fa_matrix(loadings: Any, psi: Any) -> Any:
    """The factor-analytic covariance ``Lambda Lambda' + diag(psi)``.

    Parameters
    ----------
    loadings : array or tensor, shape (n, k)
    psi : array or tensor, shape (n,)
        Specific variances, positive.

    Returns
    -------
    array or tensor, shape (n, n)
    """
    ops = _ops(loadings, psi)
    loadings, psi = ops.asarray(loadings), ops.asarray(psi)
    return loadings @ loadings.T + ops.diag(psi)


def fa_identify(loadings: Any) -> Any:
    """The identified form of a loading matrix: ``Lambda Q`` lower triangular with a positive diagonal.

    ``Lambda Lambda'`` is unchanged by ``Lambda -> Lambda Q`` for any orthogonal
    ``Q`` (k x k). The identified form takes the ``Q`` that makes the top k x k
    block lower triangular with a positive diagonal: ``Q``'s columns are the
    Gram-Schmidt orthonormalisation of the first k rows of ``Lambda`` (an LQ
    decomposition of the top block). Row ``i < k`` of ``Lambda`` lies in the span
    of the first ``i + 1`` columns of ``Q``, so the entries above the diagonal
    are zero, and the diagonal entries are the Gram-Schmidt norms (positive).
    For k = 1 it is the sign flip that makes the first loading positive.

    Parameters
    ----------
    loadings : array or tensor, shape (..., n, k), n >= k
        Any loading matrices (a batch of draws, for example), whose top k x k
        block is non-singular (true with probability one under a continuous law).

    Returns
    -------
    array or tensor, shape (..., n, k)
        The identified loadings; ``fa_matrix`` of them equals ``fa_matrix`` of ``loadings``.
    """
    ops = _ops(loadings)
    lam = ops.asarray(loadings)
    n, k = _static_shape(lam)[-2:]
    basis: list = []
    for i in range(k):
        v = lam[..., i, :]
        for q in basis:
            v = v - (v * q).sum(axis=-1)[..., None] * q
        basis.append(v / ops.sqrt((v * v).sum(axis=-1))[..., None])
    q = ops.stack(basis, axis=-1)          # (..., k, k), columns orthonormal
    lower = np.tril(np.ones((n, k)))       # zeros above the diagonal of the top block, exactly
    return (lam[..., :, :, None] * q[..., None, :, :]).sum(axis=-2) * lower


def _static_shape(x: Any) -> tuple:
    """The shape of an array, or the static shape of a tensor (PyTensor keeps it in ``x.type.shape``)."""
    shape = getattr(getattr(x, "type", None), "shape", None)
    if shape is None or any(d is None for d in shape[-2:]):
        shape = x.shape
    return tuple(int(d) for d in shape)


def _fa_core(ops, loadings: Any, psi: Any) -> tuple[Any, Any]:
    """``Psi^-1 Lambda`` (n, k) and the Cholesky factor of ``C = I_k + Lambda' Psi^-1 Lambda`` (k, k)."""
    scaled = loadings / psi[:, None]
    k = loadings.shape[-1]
    core = ops.eye(k) + loadings.T @ scaled
    return scaled, ops.cholesky(core)


def fa_logdet(loadings: Any, psi: Any) -> Any:
    """``log det(Lambda Lambda' + diag(psi))`` by the matrix determinant lemma, in O(n k^2).

    ``= sum log psi + log det(I_k + Lambda' Psi^-1 Lambda)``.

    Parameters
    ----------
    loadings : array or tensor, shape (n, k)
    psi : array or tensor, shape (n,)

    Returns
    -------
    float or scalar tensor
    """
    ops = _ops(loadings, psi)
    loadings, psi = ops.asarray(loadings), ops.asarray(psi)
    _, chol = _fa_core(ops, loadings, psi)
    return ops.log(psi).sum() + 2.0 * ops.log(ops.diagonal(chol)).sum()


def fa_precision(loadings: Any, psi: Any) -> Any:
    """The inverse of ``Lambda Lambda' + diag(psi)`` by the Woodbury identity.

    ``= Psi^-1 - Psi^-1 Lambda C^-1 Lambda' Psi^-1``, ``C = I_k + Lambda' Psi^-1 Lambda``.

    Returns
    -------
    array or tensor, shape (n, n)
    """
    ops = _ops(loadings, psi)
    loadings, psi = ops.asarray(loadings), ops.asarray(psi)
    scaled, chol = _fa_core(ops, loadings, psi)
    return ops.diag(1.0 / psi) - scaled @ ops.cho_inverse(chol) @ scaled.T


def fa_quad(loadings: Any, psi: Any, X: Any) -> Any:
    """The quadratic forms ``x' A^-1 x`` of ``A = Lambda Lambda' + diag(psi)``, in O(n k + k^2) each.

    ``= x' Psi^-1 x - b' C^-1 b`` with ``b = Lambda' Psi^-1 x`` and
    ``C = I_k + Lambda' Psi^-1 Lambda`` (Woodbury).

    Parameters
    ----------
    loadings : array or tensor, shape (n, k)
    psi : array or tensor, shape (n,)
    X : array or tensor, shape (..., n)

    Returns
    -------
    array or tensor, shape (...)
    """
    ops = _ops(loadings, psi, X)
    loadings, psi, X = ops.asarray(loadings), ops.asarray(psi), ops.asarray(X)
    scaled, chol = _fa_core(ops, loadings, psi)
    b = X @ scaled
    return (X * X / psi).sum(axis=-1) - ((b @ ops.cho_inverse(chol)) * b).sum(axis=-1)
