"""Row and column covariance structures, each with its parameters and priors.

A Kronecker (matrix-normal) residual for one N x K table has
``Cov(vec(E)) = U (x) V``, with ``vec`` in row-major order (cell ``(i, j)`` at
index ``i * K + j``), ``U`` (N x N) the row covariance and ``V`` (K x K) the
column covariance. Each of ``U`` and ``V`` is chosen from a menu of
:class:`Structure` kinds, written as a short string:

==================  ===========================================  ==========================================
structure           matrix                                       parameters (``side`` is "row" or "col")
==================  ===========================================  ==========================================
``iid``             ``s^2 I``                                    ``{side}_sd`` (scalar)
``diag``            ``diag(sd_i^2)``                             ``{side}_sd`` (n,)
``ar1``             ``s^2 rho^|i-j|``                            ``{side}_rho`` in (-1, 1), ``{side}_sd``
``cs``              ``s^2 ((1 - rho) I + rho J)``                ``{side}_rho`` in (-1/(n-1), 1), ``{side}_sd``
``fa:k``            ``Lambda Lambda' + diag(psi)``               ``{side}_loadings`` (n, k), ``{side}_psi`` (n,)
``unstructured``    ``diag(sd) R diag(sd)``, ``R ~ LKJ(eta)``    ``{side}_corr`` (n, n), ``{side}_sd`` (n,)
``known:FILE``      ``s^2 M``, ``M`` read from a CSV file        ``{side}_sd`` (scalar)
==================  ===========================================  ==========================================

A Kronecker product has one redundant scale (``cU (x) V/c = U (x) V``). It is
fixed by building one factor, by convention the column matrix ``V``, with
**unit scale**: its mean diagonal is exactly 1 and the other factor carries the
scale. Under unit scale:

* ``iid``: ``I``, no parameters;
* ``diag``: ``sd_i^2 = n softmax(2 w)_i`` with ``w`` a zero-sum vector (the
  centred log sds, ``w_i = log sd_i - mean(log sd)``, n - 1 free directions);
  its prior is ``{side}_log_sd_centred`` (normal, mu = 0);
* ``ar1``, ``cs``: ``s = 1``, only ``{side}_rho``;
* ``fa:k``: ``(Lambda Lambda' + diag(psi)) / m`` with ``m`` its mean diagonal;
  the reported ``{side}_loadings`` and ``{side}_psi`` are the normalised
  ``Lambda / sqrt(m)`` and ``psi / m``; their priors apply before
  normalisation (the overall size of the raw values is left to the prior);
* ``unstructured``: the sds as in ``diag`` (``mean sd^2 = 1``);
* ``known:FILE``: ``M / mean(diag M)``, no parameters.

Names that users see: the parameters above, with dims ``side`` for per-level
vectors, ``(side, f"{side}_factor")`` for the loadings (coordinates ``f1`` ..
``fk``) and ``(side, f"{side}_other")`` for a correlation matrix (coordinates
the side's labels again). Variables whose names start with an underscore are
sampling devices (the raw values behind a deterministic).

The module also provides closed forms as pure functions that take NumPy
arrays or PyTensor tensors alike: the matrix, log-determinant, precision and
quadratic form ``x' A^-1 x`` of ``ar1`` (tridiagonal precision), ``cs``
(identity plus rank one) and factor-analytic matrices (Woodbury and the
matrix determinant lemma). A known matrix (a relationship or kinship matrix)
is read from its labelled CSV file by :func:`twoway.io.matrices.read_labelled_matrix`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from twoway.errors import ModelError
from twoway.io.matrices import read_labelled_matrix
from twoway.priors import Prior

__all__ = [
    "KINDS",
    "Structure",
    "BuiltStructure",
    "parse_structure",
    "ar1_matrix",
    "ar1_logdet",
    "ar1_precision",
    "ar1_quad",
    "cs_matrix",
    "cs_logdet",
    "cs_precision",
    "cs_quad",
    "fa_matrix",
    "fa_logdet",
    "fa_precision",
    "fa_quad",
]

#: The structure kinds, as written (``fa`` as ``fa:k``, ``known`` as ``known:FILE``).
KINDS = ("iid", "diag", "ar1", "cs", "fa", "unstructured", "known")
_FORMS = "iid, diag, ar1, cs, fa:K, unstructured or known:FILE"
_SIDES = ("row", "col")

#: Default shape of the LKJ prior of an ``unstructured`` correlation matrix.
LKJ_ETA = 2.0


# ---------------------------------------------------------------------------
# one set of operations for NumPy arrays and PyTensor tensors
# ---------------------------------------------------------------------------


def _ops(*xs: Any):
    """The ops of ``xs`` (:func:`twoway.likelihood.backend.ops_for`): NumPy, PyTensor or JAX."""
    from twoway.likelihood.backend import ops_for

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


def _q(text: Any) -> str:
    return f"'{text}'"


# ---------------------------------------------------------------------------
# structures
# ---------------------------------------------------------------------------


def parse_structure(
    text: str,
    *,
    side: str,
    labels: Sequence[str],
    base_dir: str | Path | None = None,
) -> "Structure":
    """Read a structure as the user writes it.

    Parameters
    ----------
    text : str
        ``iid``, ``diag``, ``ar1``, ``cs``, ``fa:k`` (1 <= k < n),
        ``unstructured`` or ``known:FILE`` (a CSV file, see
        :func:`twoway.io.matrices.read_labelled_matrix`).
    side : {"row", "col"}
        Which factor of the Kronecker product this is; it prefixes the parameter names.
    labels : sequence of str, length n >= 2
        The row (or column) labels, in the table's order.
    base_dir : path, optional
        Directory against which a relative ``known:FILE`` path is resolved
        (for example the directory of a model file); the working directory if None.

    Returns
    -------
    Structure

    Raises
    ------
    twoway.errors.ModelError
        For an unknown form, a bad rank, or a bad side or labels.
    twoway.errors.DataError
        When the file of ``known:FILE`` cannot be used (see
        :func:`twoway.io.matrices.read_labelled_matrix`).
    """
    if side not in _SIDES:
        raise ModelError(f"The structure side must be 'row' or 'col'; got {side!r}.")
    what = f"{side}_structure"
    try:
        if isinstance(labels, str):
            raise TypeError
        labels = tuple(str(x) for x in labels)
    except TypeError:
        raise ModelError(
            f"The labels of the {_q(what)} must be a sequence of labels; got {type(labels).__name__}."
        ) from None
    if len(labels) < 2:
        raise ModelError(f"The {_q(what)} needs at least 2 levels; got {len(labels)}.")
    if len(set(labels)) != len(labels):
        raise ModelError(f"The labels of the {_q(what)} must be unique; got {list(labels)!r}.")
    if not isinstance(text, str):
        raise ModelError(f"The {_q(what)} must be one of {_FORMS}; got {text!r}.")
    n = len(labels)
    head, sep, arg = text.strip().partition(":")
    kind = head.strip().lower()
    arg = arg.strip()
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        shown = {"fa": "fa:K", "known": "known:FILE"}
        hint = f" (did you mean {shown.get(close[0], close[0])!r}?)" if close else ""
        raise ModelError(f"The {_q(what)} must be one of {_FORMS}; got {text!r}{hint}.")
    if kind == "fa":
        if not sep or not arg:
            raise ModelError(f"The {_q(what)} 'fa:K' needs its rank K, a whole number from 1 to {n - 1}; got {text!r}.")
        try:
            k = int(arg)
        except ValueError:
            raise ModelError(
                f"The rank K in the {_q(what)} 'fa:K' must be a whole number from 1 to {n - 1}; got {text!r}."
            ) from None
        if not 1 <= k < n:
            raise ModelError(
                f"The rank K in the {_q(what)} 'fa:K' must be from 1 to n - 1 = {n - 1} "
                f"({n} levels); got {text!r}."
            )
        return Structure("fa", side, labels, k=k)
    if kind == "known":
        if not sep or not arg:
            raise ModelError(f"The {_q(what)} 'known:FILE' needs the path of a CSV file; got {text!r}.")
        path = Path(arg)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        matrix = read_labelled_matrix(path, labels, what=what)
        return Structure("known", side, labels, path=str(path), known=matrix)
    if sep:
        raise ModelError(f"The {_q(what)} {kind!r} takes no argument after ':'; got {text!r}.")
    return Structure(kind, side, labels)


@dataclass(frozen=True)
class BuiltStructure:
    """A structure built into a PyMC model.

    Attributes
    ----------
    cov : TensorVariable, shape (n, n)
        The matrix.
    params : dict of str to TensorVariable
        The public parameters (see :meth:`Structure.parameter_names`), for
        example ``{"row_rho": ..., "row_sd": ...}``.
    kind : str
    structure : Structure
    parts : dict of str to TensorVariable
        The pieces the closed forms use (``sd2``, ``rho``, ``var``,
        ``loadings``, ``psi``, ``chol``).
    """

    cov: Any
    params: dict[str, Any]
    kind: str
    structure: "Structure"
    parts: dict[str, Any] = field(default_factory=dict)

    def logdet(self) -> Any:
        """``log det`` of :attr:`cov` by the structure's closed form (a scalar tensor)."""
        import pytensor.tensor as pt

        p, n = self.parts, self.structure.n
        if self.kind in ("iid", "known"):
            return n * pt.log(p["sd2"]) + p.get("logdet_known", 0.0)
        if self.kind == "diag":
            return pt.log(p["var"]).sum()
        if self.kind == "ar1":
            return ar1_logdet(p["rho"], p["sd2"], n)
        if self.kind == "cs":
            return cs_logdet(p["rho"], p["sd2"], n)
        if self.kind == "fa":
            return fa_logdet(p["loadings"], p["psi"])
        return 2.0 * pt.log(pt.diagonal(p["chol"])).sum()  # unstructured

    def quad(self, X: Any) -> Any:
        """The quadratic forms ``x' cov^-1 x`` by the structure's closed form.

        Parameters
        ----------
        X : array or tensor, shape (..., n)

        Returns
        -------
        tensor, shape (...)
        """
        import pytensor.tensor as pt

        p = self.parts
        X = pt.as_tensor_variable(X)
        if self.kind == "iid":
            return (X * X).sum(axis=-1) / p["sd2"]
        if self.kind == "known":
            return ((X @ p["inverse_known"]) * X).sum(axis=-1) / p["sd2"]
        if self.kind == "diag":
            return (X * X / p["var"]).sum(axis=-1)
        if self.kind == "ar1":
            return ar1_quad(p["rho"], p["sd2"], X)
        if self.kind == "cs":
            return cs_quad(p["rho"], p["sd2"], X)
        if self.kind == "fa":
            return fa_quad(p["loadings"], p["psi"], X)
        n = self.structure.n
        flat = X.reshape((-1, n))
        z = pt.linalg.solve_triangular(p["chol"], flat.T, lower=True)
        return (z * z).sum(axis=0).reshape(X.shape[:-1])


@dataclass(frozen=True)
class Structure:
    """A row or column covariance structure (see the module docstring for the menu).

    Build one with :func:`parse_structure`.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    side : {"row", "col"}
    labels : tuple of str, length n
    k : int or None
        The rank of ``fa:k``.
    path : str or None
        The file of ``known:FILE``.
    known : numpy.ndarray, shape (n, n), or None
        The matrix of ``known:FILE``, ordered as ``labels``.
    eta : float
        Shape of the LKJ prior of an ``unstructured`` correlation matrix.
    """

    kind: str
    side: str
    labels: tuple[str, ...]
    k: int | None = None
    path: str | None = None
    known: np.ndarray | None = field(default=None, compare=False, repr=False)
    eta: float = LKJ_ETA

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"The structure kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")
        if self.side not in _SIDES:
            raise ModelError(f"The structure side must be 'row' or 'col'; got {self.side!r}.")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        if self.n < 2:
            raise ModelError(f"The '{self.side}_structure' needs at least 2 levels; got {self.n}.")
        if self.kind == "fa" and not (isinstance(self.k, int) and 1 <= self.k < self.n):
            raise ModelError(f"The rank of the '{self.side}_structure' 'fa:K' must be from 1 to {self.n - 1}; got {self.k!r}.")
        if self.kind == "known":
            m = None if self.known is None else np.asarray(self.known, dtype=float)
            if m is None or m.shape != (self.n, self.n):
                raise ModelError(
                    f"The known matrix of the '{self.side}_structure' must have shape ({self.n}, {self.n}); "
                    f"got {None if m is None else m.shape}."
                )
            object.__setattr__(self, "known", m)
        if not (math.isfinite(self.eta) and self.eta > 0):
            raise ModelError(f"The LKJ 'eta' of the '{self.side}_structure' must be positive; got {self.eta!r}.")

    # -- description ---------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of levels."""
        return len(self.labels)

    @property
    def text(self) -> str:
        """The structure as the user writes it (``fa:2``, ``known:K.csv``)."""
        if self.kind == "fa":
            return f"fa:{self.k}"
        if self.kind == "known":
            return f"known:{self.path}"
        return self.kind

    def __str__(self) -> str:
        return self.text

    def _name(self, what: str) -> str:
        return f"{self.side}_{what}"

    def parameter_names(self, *, unit_scale: bool) -> list[str]:
        """The public parameters, as stored in the posterior.

        Parameters
        ----------
        unit_scale : bool
            Whether the matrix is built with mean diagonal 1.

        Returns
        -------
        list of str
            ``{side}_sd`` (scalar for iid, ar1, cs, known; per level for diag
            and unstructured), ``{side}_rho``, ``{side}_loadings``,
            ``{side}_psi``, ``{side}_corr``.
        """
        kind, nm = self.kind, self._name
        if kind in ("iid", "known"):
            return [] if unit_scale else [nm("sd")]
        if kind == "diag":
            return [nm("sd")]
        if kind in ("ar1", "cs"):
            return [nm("rho")] if unit_scale else [nm("rho"), nm("sd")]
        if kind == "fa":
            return [nm("loadings"), nm("psi")]
        return [nm("corr"), nm("sd")]

    def prior_names(self, *, unit_scale: bool) -> list[str]:
        """The names that carry a prior (the keys of :meth:`default_priors`).

        They are the public names except under unit scale for ``diag`` and
        ``unstructured`` (``{side}_log_sd_centred``), and for ``unstructured``
        whose correlation matrix has an LKJ prior of shape :attr:`eta`.
        """
        kind, nm = self.kind, self._name
        if kind in ("diag", "unstructured"):
            return [nm("log_sd_centred")] if unit_scale else [nm("sd")]
        return self.parameter_names(unit_scale=unit_scale)

    def parameter_dims(self, *, unit_scale: bool) -> dict[str, tuple[str, ...]]:
        """The dims of each public parameter (``()`` for a scalar)."""
        side = self.side
        dims = {
            "sd": (side,) if self.kind in ("diag", "unstructured") else (),
            "rho": (),
            "loadings": (side, f"{side}_factor"),
            "psi": (side,),
            "corr": (side, f"{side}_other"),
        }
        return {name: dims[name[len(side) + 1:]] for name in self.parameter_names(unit_scale=unit_scale)}

    def coords(self) -> dict[str, list]:
        """The coordinates of the dims the parameters use: ``side``, and ``{side}_factor`` or ``{side}_other``."""
        out: dict[str, list] = {self.side: list(self.labels)}
        if self.kind == "fa":
            out[f"{self.side}_factor"] = [f"f{j + 1}" for j in range(self.k)]
        if self.kind == "unstructured":
            out[f"{self.side}_other"] = list(self.labels)
        return out

    def n_parameters(self, *, unit_scale: bool) -> int:
        """Free parameters: iid 1, diag n, ar1 and cs 2, fa:k n k - k (k - 1) / 2 + n,
        unstructured n (n - 1) / 2 + n, known 1; one fewer under unit scale."""
        n, k = self.n, self.k
        count = {
            "iid": 1,
            "diag": n,
            "ar1": 2,
            "cs": 2,
            "fa": n * (k or 0) - (k or 0) * ((k or 0) - 1) // 2 + n,
            "unstructured": n * (n - 1) // 2 + n,
            "known": 1,
        }[self.kind]
        return count - 1 if unit_scale else count

    # -- priors --------------------------------------------------------------------
    def rho_range(self) -> tuple[float, float]:
        """The open interval of ``{side}_rho``: (-1, 1) for ar1, (-1/(n-1), 1) for cs."""
        if self.kind == "cs":
            return -1.0 / (self.n - 1), 1.0
        return -1.0, 1.0

    def default_priors(self, spread: float, *, unit_scale: bool) -> dict[str, Prior]:
        """Weakly informative priors scaled to the data spread ``s``.

        ==========================  =============================================
        parameter                   prior
        ==========================  =============================================
        ``{side}_sd``               halfnormal(sigma=s) (each level if a vector)
        ``{side}_rho``              uniform over its range (``rho_range``)
        ``{side}_loadings``         normal(0, s / sqrt(k)); the k leading
                                    diagonal loadings are its half-normal
        ``{side}_psi``              halfnormal(sigma=s^2) (a variance)
        ``{side}_log_sd_centred``   normal(0, 0.5) (unit scale, zero-sum)
        ==========================  =============================================

        Under unit scale the scale-free versions are used (``s = 1``).

        Parameters
        ----------
        spread : float
            The data spread ``s`` > 0.
        unit_scale : bool

        Returns
        -------
        dict of str to Prior, keyed by :meth:`prior_names`
        """
        s = float(spread)
        if not (math.isfinite(s) and s > 0):
            raise ModelError(f"The data spread must be finite and positive; got {spread!r}.")
        if unit_scale:
            s = 1.0
        out: dict[str, Prior] = {}
        for name in self.prior_names(unit_scale=unit_scale):
            what = name[len(self.side) + 1:]
            if what == "sd":
                out[name] = Prior.make("halfnormal", sigma=s)
            elif what == "rho":
                lo, hi = self.rho_range()
                out[name] = Prior.make("uniform", lower=lo, upper=hi)
            elif what == "loadings":
                out[name] = Prior.make("normal", mu=0.0, sigma=s / math.sqrt(self.k))
            elif what == "psi":
                out[name] = Prior.make("halfnormal", sigma=s * s)
            elif what == "log_sd_centred":
                out[name] = Prior.make("normal", mu=0.0, sigma=0.5)
        return out

    def check_priors(self, priors: Mapping[str, Prior], *, unit_scale: bool) -> dict[str, Prior]:
        """The priors this structure needs from ``priors``, checked against each parameter's support.

        ``{side}_sd`` and ``{side}_psi`` need a positive support (``Prior.positive``);
        ``{side}_rho`` a uniform inside :meth:`rho_range` or a beta;
        ``{side}_loadings`` and ``{side}_log_sd_centred`` a normal with mu = 0.

        Parameters
        ----------
        priors : mapping of str to Prior
            At least :meth:`prior_names`; other keys are ignored.
        unit_scale : bool

        Returns
        -------
        dict of str to Prior, keyed by :meth:`prior_names`

        Raises
        ------
        twoway.errors.ModelError
            When a prior is missing or does not fit its parameter.
        """
        out = {}
        for name in self.prior_names(unit_scale=unit_scale):
            if name not in priors:
                raise ModelError(f"The priors must include {name!r} for the '{self.side}_structure' {self.text}.")
            prior = priors[name]
            if not isinstance(prior, Prior):
                raise ModelError(f"The prior for {name!r} must be a Prior; got {prior!r}.")
            what = name[len(self.side) + 1:]
            if what in ("sd", "psi") and not prior.positive:
                raise ModelError(
                    f"The prior for {name!r} must have positive support (halfnormal, halfstudentt, "
                    f"exponential, lognormal, beta, or uniform with lower >= 0); got {prior}."
                )
            if what == "rho":
                lo, hi = self.rho_range()
                p = prior.kwargs
                inside = (
                    (prior.dist == "uniform" and p["lower"] >= lo - 1e-12 and p["upper"] <= hi)
                    or (prior.dist == "beta" and lo <= 0.0)
                )
                if not inside:
                    raise ModelError(
                        f"The prior for {name!r} must keep it within ({lo:.4g}, {hi:.4g}): a uniform "
                        f"inside that range or a beta; got {prior}."
                    )
            if what in ("loadings", "log_sd_centred") and not (prior.dist == "normal" and prior.kwargs["mu"] == 0.0):
                why = ("the k leading loadings are taken positive" if what == "loadings"
                       else "the centred log sds sum to zero")
                raise ModelError(f"The prior for {name!r} must be normal with mu = 0 ({why}); got {prior}.")
            out[name] = prior
        return out

    # -- fa layout -----------------------------------------------------------------
    def _fa_index(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Indices of the free loadings (below the diagonal of the first k rows, all of the others) and of the diagonal."""
        n, k = self.n, self.k
        rows, cols = np.tril_indices(n, k=-1, m=k)
        return (rows, cols), np.arange(k)

    # -- PyMC ----------------------------------------------------------------------
    def _add_coords(self, model: Any) -> None:
        for name, values in self.coords().items():
            if name in model.coords:
                have = model.coords[name]
                if have is not None and len(have) != len(values):
                    raise ModelError(
                        f"The model's {name!r} coordinate has {len(have)} values; the "
                        f"'{self.side}_structure' needs {len(values)}."
                    )
            else:
                model.add_coord(name, values)

    def build_pymc(self, priors: Mapping[str, Prior], *, unit_scale: bool) -> BuiltStructure:
        """Create the parameters and the matrix inside the current PyMC model.

        Parameters
        ----------
        priors : mapping of str to Prior
            At least :meth:`prior_names` (other keys are ignored).
        unit_scale : bool
            Build the matrix with mean diagonal 1 (see the module docstring).

        Returns
        -------
        BuiltStructure
            ``cov`` of shape (n, n) and the public parameters (deterministics
            or random variables) with dims as in :meth:`parameter_dims`.
            Coordinates the model lacks are added (:meth:`coords`).
        """
        import pymc as pm
        import pytensor.tensor as pt

        from twoway.engines.pymc_priors import pymc_variable

        model = pm.modelcontext(None)
        self._add_coords(model)
        pri = self.check_priors(priors, unit_scale=unit_scale)
        kind, side, n, nm = self.kind, self.side, self.n, self._name
        params: dict[str, Any] = {}
        parts: dict[str, Any] = {}

        def scalar_sd2():
            if unit_scale:
                return pt.constant(1.0)
            sd = pymc_variable(pri[nm("sd")], nm("sd"))
            params[nm("sd")] = sd
            return sd * sd

        def unit_sd():
            w = pm.ZeroSumNormal(f"_{nm('log_sd_centred')}", sigma=pri[nm("log_sd_centred")].kwargs["sigma"], dims=side)
            return pm.Deterministic(nm("sd"), pt.sqrt(n * pt.special.softmax(2.0 * w)), dims=side)

        if kind in ("iid", "known"):
            sd2 = scalar_sd2()
            base = np.eye(n) if kind == "iid" else self._known_unit() if unit_scale else self.known
            cov = sd2 * pt.constant(base)
            parts["sd2"] = sd2
            if kind == "known":
                sign, logdet = np.linalg.slogdet(base)
                parts["logdet_known"] = float(logdet)
                parts["inverse_known"] = pt.constant(np.linalg.inv(base))
        elif kind == "diag":
            sd = unit_sd() if unit_scale else pymc_variable(pri[nm("sd")], nm("sd"), dims=side)
            params[nm("sd")] = sd
            parts["var"] = sd * sd
            cov = pt.diag(parts["var"])
        elif kind in ("ar1", "cs"):
            rho = pymc_variable(pri[nm("rho")], nm("rho"))
            params[nm("rho")] = rho
            sd2 = scalar_sd2()
            cov = ar1_matrix(rho, sd2, n) if kind == "ar1" else cs_matrix(rho, sd2, n)
            parts.update(rho=rho, sd2=sd2)
        elif kind == "fa":
            (rows, cols), diag = self._fa_index()
            sigma = pri[nm("loadings")].kwargs["sigma"]
            free = pm.Normal(f"_{nm('loadings')}_lower", 0.0, sigma, shape=rows.size)
            lead = pm.HalfNormal(f"_{nm('loadings')}_diag", sigma, shape=self.k)
            lam = pt.zeros((n, self.k))
            lam = pt.set_subtensor(lam[rows, cols], free)
            lam = pt.set_subtensor(lam[diag, diag], lead)
            if unit_scale:
                psi_raw = pymc_variable(pri[nm("psi")], f"_{nm('psi')}_raw", dims=side)
                m = ((lam * lam).sum() + psi_raw.sum()) / n
                lam, psi_raw = lam / pt.sqrt(m), psi_raw / m
                psi = pm.Deterministic(nm("psi"), psi_raw, dims=side)
            else:
                psi = pymc_variable(pri[nm("psi")], nm("psi"), dims=side)
            loadings = pm.Deterministic(nm("loadings"), lam, dims=(side, f"{side}_factor"))
            params = {nm("loadings"): loadings, nm("psi"): psi}
            parts.update(loadings=loadings, psi=psi)
            cov = fa_matrix(loadings, psi)
        else:  # unstructured
            chol_corr = pm.LKJCorr(f"_{nm('corr')}_chol", n=n, eta=self.eta)
            corr = pm.Deterministic(nm("corr"), chol_corr @ chol_corr.T, dims=(side, f"{side}_other"))
            sd = unit_sd() if unit_scale else pymc_variable(pri[nm("sd")], nm("sd"), dims=side)
            params = {nm("corr"): corr, nm("sd"): sd}
            parts["chol"] = sd[:, None] * chol_corr
            cov = sd[:, None] * corr * sd[None, :]
        return BuiltStructure(cov=cov, params=params, kind=kind, structure=self, parts=parts)

    # -- NumPy ---------------------------------------------------------------------
    def _known_unit(self) -> np.ndarray:
        return self.known / np.mean(np.diag(self.known))

    def draw(
        self, rng: np.random.Generator, priors: Mapping[str, Prior], *, unit_scale: bool
    ) -> dict[str, float | np.ndarray]:
        """Draw the public parameters from their prior with NumPy (the law of :meth:`build_pymc`).

        Parameters
        ----------
        rng : numpy.random.Generator
        priors : mapping of str to Prior
            At least :meth:`prior_names`.
        unit_scale : bool

        Returns
        -------
        dict of str to float or numpy.ndarray
            Keyed by :meth:`parameter_names`, shapes as in :meth:`parameter_dims`;
            pass it to :meth:`matrix`.
        """
        pri = self.check_priors(priors, unit_scale=unit_scale)
        kind, n, nm = self.kind, self.n, self._name
        out: dict[str, Any] = {}

        def unit_sd():
            w = rng.normal(0.0, pri[nm("log_sd_centred")].kwargs["sigma"], n)
            w = 2.0 * (w - w.mean())
            e = np.exp(w - w.max())
            return np.sqrt(n * e / e.sum())

        if kind in ("ar1", "cs"):
            out[nm("rho")] = float(pri[nm("rho")].sample(rng))
        if kind in ("iid", "known", "ar1", "cs") and not unit_scale:
            out[nm("sd")] = float(pri[nm("sd")].sample(rng))
        elif kind == "diag":
            out[nm("sd")] = unit_sd() if unit_scale else pri[nm("sd")].sample(rng, n)
        elif kind == "fa":
            (rows, cols), diag = self._fa_index()
            sigma = pri[nm("loadings")].kwargs["sigma"]
            lam = np.zeros((n, self.k))
            lam[rows, cols] = rng.normal(0.0, sigma, rows.size)
            lam[diag, diag] = np.abs(rng.normal(0.0, sigma, self.k))
            psi = pri[nm("psi")].sample(rng, n)
            if unit_scale:
                m = (np.sum(lam * lam) + np.sum(psi)) / n
                lam, psi = lam / np.sqrt(m), psi / m
            out[nm("loadings")], out[nm("psi")] = lam, psi
        elif kind == "unstructured":
            chol = _lkj_corr_cholesky(rng, n, self.eta)
            out[nm("corr")] = chol @ chol.T
            out[nm("sd")] = unit_sd() if unit_scale else pri[nm("sd")].sample(rng, n)
        return out

    def matrix(self, params: Mapping[str, Any], *, unit_scale: bool) -> np.ndarray:
        """The matrix at given values of the public parameters, with NumPy.

        Parameters
        ----------
        params : mapping of str to float or array
            At least :meth:`parameter_names` (other keys are ignored), shapes
            as in :meth:`parameter_dims`.
        unit_scale : bool
            Rescale to mean diagonal 1 (a no-op, up to rounding, for values
            drawn or sampled under unit scale); ``{side}_sd`` is then 1 for the
            scalar-scale kinds.

        Returns
        -------
        numpy.ndarray, shape (n, n)
        """
        kind, n, nm = self.kind, self.n, self._name
        missing = [k for k in self.parameter_names(unit_scale=unit_scale) if k not in params]
        if missing:
            raise ModelError(f"The parameters of the '{self.side}_structure' {self.text} must include {', '.join(missing)}.")

        def get(name, shape):
            value = np.asarray(params[name], dtype=float)
            if value.shape != shape:
                raise ModelError(f"The parameter {name!r} must have shape {shape}; got {value.shape}.")
            return value

        sd2 = 1.0 if unit_scale or kind in ("diag", "fa", "unstructured") else float(get(nm("sd"), ())) ** 2
        if kind == "iid":
            out = sd2 * np.eye(n)
        elif kind == "known":
            out = sd2 * (self._known_unit() if unit_scale else self.known)
        elif kind == "diag":
            out = np.diag(get(nm("sd"), (n,)) ** 2)
        elif kind == "ar1":
            out = ar1_matrix(float(get(nm("rho"), ())), sd2, n)
        elif kind == "cs":
            out = cs_matrix(float(get(nm("rho"), ())), sd2, n)
        elif kind == "fa":
            out = fa_matrix(get(nm("loadings"), (n, self.k)), get(nm("psi"), (n,)))
        else:
            sd = get(nm("sd"), (n,))
            out = sd[:, None] * get(nm("corr"), (n, n)) * sd[None, :]
        if unit_scale:
            out = out / np.mean(np.diag(out))
        return out


def _lkj_corr_cholesky(rng: np.random.Generator, n: int, eta: float) -> np.ndarray:
    """One LKJ(eta) correlation matrix's lower Cholesky factor, shape (n, n), by the onion method (as PyMC draws it)."""
    beta = eta - 1.0 + n / 2.0
    upper = np.eye(n)
    r12 = 2.0 * rng.beta(beta, beta) - 1.0
    upper[0, 1] = r12
    upper[1, 1] = math.sqrt(1.0 - r12 * r12)
    for m in range(2, n):
        beta -= 0.5
        y = rng.beta(m / 2.0, beta)
        z = rng.standard_normal(m)
        upper[:m, m] = math.sqrt(y) * z / np.linalg.norm(z)
        upper[m, m] = math.sqrt(1.0 - y)
    return upper.T
