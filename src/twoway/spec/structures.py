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
``fa:k``            ``Lambda Lambda' + diag(psi)``               ``{side}_loadings`` (n, k), ``{side}_psi`` (n,),
                                                                 ``{side}_loadings_scale``, ``{side}_psi_scale``
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
  normalisation; the raw ``psi`` are ``halfnormal(1)`` (the overall size is
  removed by the normalisation, so only the ratio of the two scales counts)
  and ``_{side}_loadings_scale`` is a sampling device, not reported;
* ``unstructured``: the sds as in ``diag`` (``mean sd^2 = 1``);
* ``known:FILE``: ``M / mean(diag M)``, no parameters.

**Factor-analytic structures** (``fa:k``) are hierarchical and identified:

* every raw loading is ``normal(0, {side}_loadings_scale)`` and every
  ``{side}_psi[i]`` is ``halfnormal({side}_psi_scale)``, the two scales with
  their own priors: the data set the size of the loadings and of the specific
  variances (fixed wide priors on n loadings and n variances pull the
  posterior towards large ones when n is large);
* the raw loadings are sampled without constraint (their law and the matrix
  are unchanged by any rotation ``Lambda -> Lambda Q``) and reported in the
  **identified form** ``fa_identify(Lambda)``: lower triangular in the first k
  rows with a positive diagonal (see
  :func:`twoway.linalg.structured.fa_identify`). Sampling the identified
  loadings directly (a half-normal diagonal) leaves the chains in
  opposite-sign modes when a leading loading is near zero; the rotation is
  applied after sampling, so it costs nothing and every draw satisfies the
  constraint. The identified diagonal is then distributed as
  ``scale * chi_(k - i)`` (i = 0 .. k - 1), not half-normal.

Names that users see: the parameters above, with dims ``side`` for per-level
vectors, ``(side, f"{side}_factor")`` for the loadings (coordinates ``f1`` ..
``fk``) and ``(side, f"{side}_other")`` for a correlation matrix (coordinates
the side's labels again). Variables whose names start with an underscore are
sampling devices (the raw values behind a deterministic).

This module describes (the menu, names, dims, priors, NumPy draws and
matrices for simulation and results). The closed forms of the structured
matrices are in :mod:`twoway.linalg.structured`; each engine builds a
structure once, in the model walk (:mod:`twoway.engines.walk`). A known matrix (a relationship or kinship
matrix) is read from its labelled CSV file by
:func:`twoway.table.io.matrices.read_labelled_matrix`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from twoway.errors import ModelError
from twoway.linalg.structured import ar1_matrix, cs_matrix, fa_identify, fa_matrix
from twoway.spec.priors import Prior
from twoway.table.io.matrices import read_labelled_matrix

__all__ = [
    "KINDS",
    "Structure",
    "parse_structure",
]

#: The structure kinds, as written (``fa`` as ``fa:k``, ``known`` as ``known:FILE``).
KINDS = ("iid", "diag", "ar1", "cs", "fa", "unstructured", "known")
_FORMS = "iid, diag, ar1, cs, fa:K, unstructured or known:FILE"
_SIDES = ("row", "col")

#: Default shape of the LKJ prior of an ``unstructured`` correlation matrix.
LKJ_ETA = 2.0


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
        :func:`twoway.table.io.matrices.read_labelled_matrix`).
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
        :func:`twoway.table.io.matrices.read_labelled_matrix`).
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
            scales = [] if unit_scale else [nm("loadings_scale"), nm("psi_scale")]
            return [nm("loadings"), nm("psi")] + scales
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
        if kind == "fa":
            return [nm("loadings_scale")] if unit_scale else [nm("loadings_scale"), nm("psi_scale")]
        return self.parameter_names(unit_scale=unit_scale)

    def parameter_dims(self, *, unit_scale: bool) -> dict[str, tuple[str, ...]]:
        """The dims of each public parameter (``()`` for a scalar)."""
        side = self.side
        dims = {
            "sd": (side,) if self.kind in ("diag", "unstructured") else (),
            "rho": (),
            "loadings": (side, f"{side}_factor"),
            "psi": (side,),
            "loadings_scale": (),
            "psi_scale": (),
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
        """Free parameters: iid 1, diag n, ar1 and cs 2, fa:k n k - k (k - 1) / 2 + n + 2 (the two scales),
        unstructured n (n - 1) / 2 + n, known 1; one fewer under unit scale."""
        n, k = self.n, self.k
        count = {
            "iid": 1,
            "diag": n,
            "ar1": 2,
            "cs": 2,
            "fa": n * (k or 0) - (k or 0) * ((k or 0) - 1) // 2 + n + 2,
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
        ``{side}_loadings_scale``   halfnormal(sigma=s / sqrt(k)) (the sd of
                                    every raw loading)
        ``{side}_psi_scale``        halfnormal(sigma=s^2) (the scale of the
                                    half-normal law of every ``psi``)
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
            elif what == "loadings_scale":
                out[name] = Prior.make("halfnormal", sigma=s / math.sqrt(self.k))
            elif what == "psi_scale":
                out[name] = Prior.make("halfnormal", sigma=s * s)
            elif what == "log_sd_centred":
                out[name] = Prior.make("normal", mu=0.0, sigma=0.5)
        return out

    def check_priors(self, priors: Mapping[str, Prior], *, unit_scale: bool) -> dict[str, Prior]:
        """The priors this structure needs from ``priors``, checked against each parameter's support.

        ``{side}_sd``, ``{side}_loadings_scale`` and ``{side}_psi_scale`` need a
        positive support (``Prior.positive``); ``{side}_rho`` a uniform inside
        :meth:`rho_range` or a beta; ``{side}_log_sd_centred`` a normal with mu = 0.

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
            if what in ("sd", "loadings_scale", "psi_scale") and not prior.positive:
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
            if what == "log_sd_centred" and not (prior.dist == "normal" and prior.kwargs["mu"] == 0.0):
                raise ModelError(f"The prior for {name!r} must be normal with mu = 0 (the centred log sds sum "
                                 f"to zero); got {prior}.")
            out[name] = prior
        return out

    # -- NumPy ---------------------------------------------------------------------
    def _known_unit(self) -> np.ndarray:
        return self.known / np.mean(np.diag(self.known))

    def draw(
        self, rng: np.random.Generator, priors: Mapping[str, Prior], *, unit_scale: bool
    ) -> dict[str, float | np.ndarray]:
        """Draw the public parameters from their prior with NumPy (the law the engines build).

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
            scales = {nm("loadings_scale"): float(pri[nm("loadings_scale")].sample(rng)),
                      nm("psi_scale"): 1.0 if unit_scale else float(pri[nm("psi_scale")].sample(rng))}
            lam = scales[nm("loadings_scale")] * rng.standard_normal((n, self.k))
            psi = scales[nm("psi_scale")] * np.abs(rng.standard_normal(n))
            if unit_scale:
                m = (np.sum(lam * lam) + np.sum(psi)) / n
                lam, psi = lam / np.sqrt(m), psi / m
            out[nm("loadings")], out[nm("psi")] = fa_identify(lam), psi
            if not unit_scale:
                out.update(scales)
        elif kind == "unstructured":
            chol = lkj_corr_cholesky(rng, n, self.eta)
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
        missing = [k for k in self.parameter_names(unit_scale=unit_scale)
                   if k not in params and not k.endswith("_scale")]  # fa's scales: not needed for the matrix
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


def lkj_corr_cholesky(rng: np.random.Generator, n: int, eta: float) -> np.ndarray:
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
