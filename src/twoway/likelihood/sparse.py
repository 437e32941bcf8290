"""The ``sparse`` path: crossed effects on a large, sparse table, through a sparse Cholesky factor.

The observed cells are ``r = y - m0 = Z u + e`` with ``u`` the integrated
effects (intercept, row effects, column effects, covariates' coefficients),
``Z`` the (n, m) design (at most three ones per row, held by :mod:`scipy.sparse`,
then the covariates' p dense columns), ``u ~ N(0, G)`` and ``e ~ N(0, D)``, D
diagonal. The coefficients' prior precision ``diag(1/coef_sd^2)`` is fixed. With ``b = Z' D^-1 r`` and
the effects' precision ``Q = G^-1 + Z' D^-1 Z`` (sparse, m x m),

    log p(r) = -1/2 [n log 2 pi + log|D| + log|G| + log|Q| + r' D^-1 r - b' Q^-1 b]
    u | r    ~ N(Q^-1 b, Q^-1).

Q is factored with CHOLMOD (``sksparse.cholmod``): the fill-reducing ordering
and the symbolic factor are computed once (:meth:`SparseSystem.analyse`), each
evaluation only refactors numerically in place. The log-determinant, the
solve and exact draws of u all come from that one factor. Memory is
proportional to the observed cells and to the factor: no N x K array and no
dense design is built here.

Applies to an independent residual with no row or column scales (one
``sigma``, known se, or both), random row and/or column effects (iid, or a
known relationship matrix) and an intercept with a normal prior. NumPy and
SciPy only: JAX cannot trace it, so it serves the ``laplace`` engine, not NUTS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twoway.errors import ModelError, TwowayError
from twoway.likelihood import memory
from twoway.likelihood.diagonal import cell_sd
from twoway.likelihood.marginal import effects_design

# Deferred imports: scipy, sksparse (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["SparseDesign", "SparseSystem", "sparse_applies", "prefers_sparse", "build_system", "cholmod",
           "SPARSE_MIN_LEVELS", "SPARSE_MAX_FRACTION"]

_LOG_2PI = math.log(2.0 * math.pi)

#: The chooser prefers the sparse path when the dense block a NUTS path keeps (the random side it cannot
#: eliminate: the smaller iid side, or a side with a known matrix) has at least this many levels ...
SPARSE_MIN_LEVELS = 300
#: ... on tables with at most this fraction of cells observed.
SPARSE_MAX_FRACTION = 0.25


def cholmod():
    """``sksparse.cholmod``, imported on first use, or a :class:`TwowayError` naming the package."""
    try:
        from sksparse import cholmod as mod
    except ImportError as exc:
        raise TwowayError("The sparse likelihood path needs the 'scikit-sparse' package (CHOLMOD): "
                          "pip install 'scikit-sparse>=0.4.14,<0.5' (it builds against SuiteSparse: "
                          "apt-get install libsuitesparse-dev, or run scripts/ensure-suitesparse.sh); "
                          f"got {type(exc).__name__}: {exc}.") from None
    return mod


# -- when it applies --------------------------------------------------------------------------
def sparse_applies(spec) -> bool:
    """Whether the sparse path can fit ``spec``: crossed random effects, one homogeneous residual."""
    return (spec.effects == "integrate" and spec.residual == "independent"
            and spec.row_scale == "none" and spec.col_scale == "none"
            and getattr(spec, "cell_effect", "none") == "none"
            and spec.row_effect in ("random", "none") and spec.col_effect in ("random", "none")
            and "random" in (spec.row_effect, spec.col_effect))


def prefers_sparse(spec, data) -> bool:
    """Whether the chooser takes the sparse path: a large dense block for NUTS and few cells observed.

    ``woodbury-schur`` eliminates one iid random side and keeps the other side's
    effects as a dense block; the sparse path is preferred when that block has
    at least :data:`SPARSE_MIN_LEVELS` levels and at most
    :data:`SPARSE_MAX_FRACTION` of the cells are observed.
    """
    sides = {side: n for side, n in (("row", data.n_rows), ("col", data.n_cols))
             if getattr(spec, f"{side}_effect") == "random"}
    if len(sides) < 2:
        return False  # one random side is eliminated whole: nothing dense is left
    known = [side for side in sides if getattr(spec, f"{side}_effect_cov", None) is not None]
    dense = sum(sides[s] for s in known) if len(known) == 2 else (sides[known[0]] if known else min(sides.values()))
    fraction = data.n_observed / float(data.values.size)
    return dense >= SPARSE_MIN_LEVELS and fraction <= SPARSE_MAX_FRACTION


# -- the design, described without dense matrices -------------------------------------------------
class SparseDesign:
    """The integrated effects of a sparse plan: blocks and known matrices, no dense design.

    Attributes
    ----------
    blocks : tuple of (name, var_param, start, stop)
        As :class:`twoway.likelihood.marginal.EffectsDesign`: intercept, row_effect, col_effect,
        and ``("coef", None, m - p, m)`` with covariates.
    known : dict
        ``row``/``col`` -> known relationship matrix (n, n) of that side's effects.
    coef_sd : array (p,) or None
        Prior sds of the covariates' coefficients (fixed).

    It stays sparse: it has no ``E``, ``base_cov`` or ``prior``. Code that needs the
    dense :class:`~twoway.likelihood.marginal.EffectsDesign` asks for it by name
    (:meth:`dense`), which refuses when it would not fit in memory.
    """

    def __init__(self, spec, data, known: dict | None = None, coef_sd: np.ndarray | None = None):
        self._spec, self._data = spec, data
        self.known = dict(known or {})
        coef_sd = None if coef_sd is None else np.asarray(coef_sd, dtype=float).reshape(-1)
        if coef_sd is not None and coef_sd.size == 0:
            coef_sd = None
        if coef_sd is not None and not np.all(np.isfinite(coef_sd) & (coef_sd > 0)):
            raise ModelError(f"The covariates' coefficients need positive finite prior sds; got {coef_sd}.")
        self.coef_sd = coef_sd
        blocks, start = [], 0
        if spec.intercept:
            blocks.append(("intercept", "intercept_sd", 0, 1))
            start = 1
        for side, n in (("row", data.n_rows), ("col", data.n_cols)):
            if getattr(spec, f"{side}_effect") == "random":
                blocks.append((f"{side}_effect", f"{side}_effect_sd", start, start + n))
                start += n
        if coef_sd is not None:
            blocks.append(("coef", None, start, start + coef_sd.size))
            start += coef_sd.size
        self.blocks = tuple(blocks)
        self._m = start
        self._dense = None
        self._systems: dict = {}

    @property
    def m(self) -> int:
        return self._m

    @property
    def n_cov(self) -> int:
        """p, the covariates' coefficients integrated with the effects (0 without)."""
        return 0 if self.coef_sd is None else int(self.coef_sd.size)

    def dense(self):
        """The dense :class:`~twoway.likelihood.marginal.EffectsDesign` of the same effects (built once).

        Raises
        ------
        ModelError
            When its (m, m) blocks would need more memory than is available: saying
            how much it needs, how much there is, and what to use instead.
        """
        if self._dense is None:

            need = memory.dense_design_bytes(self._spec, self._data, n_cov=self.n_cov)
            available = memory.available_memory()
            if need > available:
                d = self._data
                raise ModelError(
                    f"The dense design of the {self._m:,} integrated effects of this {d.n_rows} x {d.n_cols} table "
                    f"would need about {memory.gib(need)} of memory; {memory.gib(available)} is available. "
                    "The sparse path keeps them sparse: use what it gives (the posterior, its summary and "
                    "the effects' draws), or ask for the dense quantity on a smaller table or a machine with "
                    "more memory.")
            self._dense = effects_design(self._spec, self._data, known=self.known, coef_sd=self.coef_sd)
        return self._dense

    def relationship_scale(self, side: str) -> float:
        """The mean diagonal of ``side``'s effects' prior covariance (of its known matrix; 1 without one)."""
        return float(np.mean(np.diag(self.known[side]))) if side in self.known else 1.0

    def system(self, spec, lay) -> "SparseSystem":
        """The :class:`SparseSystem` of this design on ``lay`` (built once per layout)."""
        key = id(lay)
        if key not in self._systems:
            self._systems = {key: build_system(spec, lay, self)}
        return self._systems[key]


# -- the system ---------------------------------------------------------------------------------
@dataclass
class SparseSystem:
    """Everything an evaluation needs, computed once from the observed cells.

    Attributes
    ----------
    n : int
        Observed cells.
    m : int
        Effects' coordinates.
    Z : scipy.sparse.csc_matrix (n, m)
        The indicators' ones, then the covariates' columns.
    r : array (n,)
        ``y - m0`` at the observed cells.
    se : array (n,)
        Known se at the observed cells (0 where none).
    pattern : scipy.sparse.csc_matrix (m, m)
        The pattern of Q (sorted indices); Q's values are written into a copy.
    pair_pos, pair_obs : int arrays
        Each (observation, pair of its columns) contribution to ``Z' D^-1 Z``: its
        position in ``pattern.data`` and its observation.
    x : array (n, p) or None
        The covariates' design at the observed cells (None without covariates).
    Zi : scipy.sparse.csc_matrix (n, m - p) or None
        The indicators' ones alone (with covariates): ``Z = [Zi | x]``.
    pos_ax, pos_xa, pos_xx : int arrays or None
        Positions in ``pattern.data`` of the dense blocks ``Zi' D^-1 x`` ((m - p) x p, and its
        transpose) and ``x' D^-1 x`` (p x p), in C order: the covariates' columns are dense, so
        their part of ``Z' D^-1 Z`` is two matrix products, not one entry per observation and pair.
    counts : array (nnz,)
        ``Z' Z`` on the pattern (used when every cell has the same variance).
    prior_data : list of arrays (nnz,)
        Each block's base precision on the pattern (the ``coef`` block's: its fixed precision).
    blocks, base_logdet : as the design
    uniform : bool
        Whether every cell has the same variance (no se, or one constant se).
    combine : str
    """

    n: int
    m: int
    Z: object
    r: np.ndarray
    se: np.ndarray
    pattern: object
    pair_pos: np.ndarray
    pair_obs: np.ndarray
    counts: np.ndarray
    prior_data: list
    blocks: tuple
    base_logdet: list
    uniform: bool
    combine: str
    Ztr: np.ndarray
    rr: float
    x: np.ndarray | None = None
    Zi: object = None
    pos_ax: np.ndarray | None = None
    pos_xa: np.ndarray | None = None
    pos_xx: np.ndarray | None = None

    @property
    def var_params(self) -> list[str]:
        """The blocks' variance parameters (the ``coef`` block has none)."""
        return [vp for _, vp, _, _ in self.blocks if vp is not None]

    def noise_variance(self, params) -> np.ndarray:
        """Variance of each observed cell, (n,) (or (1,) when uniform)."""

        se = self.se[:1] if self.uniform else self.se
        sigma = params.get("sigma")
        sd = cell_sd(se, None, None, None if sigma is None else float(sigma), combine=self.combine)
        return sd * sd

    def _add_covariate_blocks(self, data: np.ndarray, wx: np.ndarray) -> None:
        """Add ``Zi' W x``, its transpose and ``x' W x`` to Q's values ``data`` (nnz,), given ``wx = W x`` (n, p)."""
        ax = np.asarray(self.Zi.T @ wx)           # (m - p, p)
        data[self.pos_ax] += ax.ravel()
        data[self.pos_xa] += ax.ravel()
        data[self.pos_xx] += (self.x.T @ wx).ravel()

    def precision(self, params):
        """``(Q, b, r'D^-1 r, log|D|, log|G|)`` at scalar parameter values ``params``."""
        var = self.noise_variance(params)
        if self.uniform:
            v = float(var[0])
            data = self.counts / v
            b = self.Ztr / v
            quad0 = self.rr / v
            logdet_d = self.n * math.log(v)
        else:
            w = 1.0 / var
            data = np.bincount(self.pair_pos, weights=w[self.pair_obs], minlength=self.pattern.nnz)
            if self.x is not None:
                self._add_covariate_blocks(data, w[:, None] * self.x)
            b = self.Z.T @ (w * self.r)
            quad0 = float(np.dot(w * self.r, self.r))
            logdet_d = float(np.sum(np.log(var)))
        logdet_g = 0.0
        for (_, vp, start, stop), pd, ld in zip(self.blocks, self.prior_data, self.base_logdet):
            if vp is None:  # fixed prior (the covariates' coefficients)
                data = data + pd
                logdet_g += ld
                continue
            sd = float(params[vp])
            data = data + pd / (sd * sd)
            logdet_g += (stop - start) * math.log(sd * sd) + ld
        Q = self.pattern.copy()
        Q.data = data
        return Q, b, quad0, logdet_d, logdet_g

    def analyse(self):
        """A CHOLMOD factor of Q's pattern: fill-reducing ordering and symbolic factor (once per thread)."""
        mod = cholmod()
        Q = self.pattern.copy()
        Q.data = self.counts + sum(self.prior_data) + 1.0
        return mod.analyze(Q, mode="supernodal")

    def evaluate(self, factor, params):
        """Refactor ``factor`` at ``params``; return ``(log p(r), Q^-1 b)``."""
        Q, b, quad0, logdet_d, logdet_g = self.precision(params)
        try:
            factor.cholesky_inplace(Q)
        except Exception as exc:  # CHOLMOD: not positive definite at extreme values
            if type(exc).__name__.startswith("Cholmod"):
                return -math.inf, None
            raise
        mean = factor(b)
        if mean.ndim > 1:
            mean = mean[:, 0]
        logp = -0.5 * (self.n * _LOG_2PI + logdet_d + logdet_g + factor.logdet() + quad0 - float(b @ mean))
        return float(logp), mean

    def draw(self, factor, mean, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Exact draws (size, m) of ``u ~ N(mean, Q^-1)`` through the factor (``P Q P' = L L'``)."""
        e = rng.standard_normal((self.m, size))
        w = factor.solve_Lt(e, use_LDLt_decomposition=False)
        return (mean[:, None] + factor.apply_Pt(w)).T


def _positions(pattern, rows, cols) -> np.ndarray:
    """Positions in ``pattern.data`` (csc, sorted indices) of the entries (rows, cols)."""
    m = pattern.shape[0]
    coo_cols = np.repeat(np.arange(m), np.diff(pattern.indptr))
    keys = coo_cols.astype(np.int64) * m + pattern.indices
    want = np.asarray(cols, dtype=np.int64) * m + np.asarray(rows, dtype=np.int64)
    pos = np.searchsorted(keys, want)
    return pos


def build_system(spec, lay, design: SparseDesign) -> SparseSystem:
    """The :class:`SparseSystem` of ``spec`` on the layout ``lay`` (observed cells only)."""
    import scipy.sparse as sps

    rr_, ii, jj = lay.obs
    n = int(ii.size)
    m = design.m
    p = design.n_cov
    if p != lay.n_cov:
        raise ModelError(f"The sparse design has {p} covariate columns and the layout {lay.n_cov}; lay the data "
                         "out with the covariates' design (layout(..., x=X)).")
    cols = []
    start_of = {name: start for name, _, start, _ in design.blocks}
    if "intercept" in start_of:
        cols.append(np.zeros(n, dtype=np.int64))
    if "row_effect" in start_of:
        cols.append(start_of["row_effect"] + ii.astype(np.int64))
    if "col_effect" in start_of:
        cols.append(start_of["col_effect"] + jj.astype(np.int64))
    m_ind = m - p   # the indicators' coordinates come first, the coef block last
    C = np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)  # (n, c): each observation's ones
    c = C.shape[1]
    Zi = sps.csc_matrix((np.ones(n * c), (np.repeat(np.arange(n), c), C.ravel())), shape=(n, m_ind))
    if p:
        X = np.ascontiguousarray(lay.x, dtype=float)
        Z = sps.hstack([Zi, sps.csc_matrix(X)], format="csc")
    else:
        X, Z = None, sps.csc_matrix(Zi, shape=(n, m))
    # the prior precision of each block, embedded (identity, or the inverse of a known matrix)
    prior_mats = []
    base_logdet = []
    for name, _, start, stop in design.blocks:
        side = name.split("_")[0]
        if name == "coef":
            var = design.coef_sd ** 2
            base_logdet.append(float(np.sum(np.log(var))))
            idx = np.arange(start, stop)
            prior_mats.append(sps.csc_matrix((1.0 / var, (idx, idx)), shape=(m, m)))
        elif name != "intercept" and side in design.known:
            K = np.asarray(design.known[side], dtype=float)
            prec = np.linalg.inv(K)
            prec = 0.5 * (prec + prec.T)
            base_logdet.append(float(np.linalg.slogdet(K)[1]))
            loc = sps.coo_matrix(prec)
            prior_mats.append(sps.csc_matrix((loc.data, (loc.row + start, loc.col + start)), shape=(m, m)))
        else:
            base_logdet.append(0.0)
            idx = np.arange(start, stop)
            prior_mats.append(sps.csc_matrix((np.ones(stop - start), (idx, idx)), shape=(m, m)))
    # every observation adds w to (a, b) for each pair of its indicator columns
    pa = np.repeat(C, c, axis=1).ravel()
    pb = np.tile(C, (1, c)).ravel()
    ZtZ = (Zi.T @ Zi).tocsc()
    ZtZ.resize((m, m))
    blocks = []
    if p:  # the covariates' columns are dense: their rows and columns of Q are kept whole
        ax_r, ax_c = np.repeat(np.arange(m_ind), p), m_ind + np.tile(np.arange(p), m_ind)
        xx_r, xx_c = m_ind + np.repeat(np.arange(p), p), m_ind + np.tile(np.arange(p), p)
        rows, cols_ = np.concatenate([ax_r, ax_c, xx_r]), np.concatenate([ax_c, ax_r, xx_c])
        blocks.append(sps.csc_matrix((np.ones(rows.size), (rows, cols_)), shape=(m, m)))
    pattern = (abs(ZtZ) + sum(abs(P) for P in prior_mats) + sum(blocks)).tocsc()
    pattern.sort_indices()
    pattern.data[:] = 1.0
    pair_pos = _positions(pattern, pa, pb)
    pair_obs = np.repeat(np.arange(n), c * c)
    counts = np.bincount(pair_pos, minlength=pattern.nnz).astype(float)
    extra = {}
    if p:
        extra = dict(x=X, Zi=Zi, pos_ax=_positions(pattern, ax_r, ax_c), pos_xa=_positions(pattern, ax_c, ax_r),
                     pos_xx=_positions(pattern, xx_r, xx_c))
    prior_data = []
    for P in prior_mats:
        P = P.tocoo()
        prior_data.append(np.bincount(_positions(pattern, P.row, P.col), weights=P.data, minlength=pattern.nnz))
    r = lay.r[lay.obs]
    se = lay.se[lay.obs]
    uniform = bool(np.all(se == se[0])) if n else True
    if spec.residual != "independent":  # pragma: no cover - guarded by sparse_applies
        raise ModelError("The sparse path needs an independent residual.")
    system = SparseSystem(n=n, m=m, Z=Z, r=r, se=se, pattern=pattern, pair_pos=pair_pos, pair_obs=pair_obs,
                          counts=counts, prior_data=prior_data, blocks=design.blocks, base_logdet=base_logdet,
                          uniform=uniform, combine=spec.combine, Ztr=np.asarray(Z.T @ r), rr=float(r @ r), **extra)
    if p:
        system._add_covariate_blocks(system.counts, X)
    return system


def sparse_logp(spec, lay, design: SparseDesign, params) -> np.ndarray:
    """Log-density of the observed cells, effects integrated out, at each of a batch of parameter values.

    Parameters
    ----------
    params : dict of str to arrays () or (S,)
        Must hold each block's variance parameter (``intercept_sd`` included)
        and ``sigma`` when the model has one.

    Returns
    -------
    float or array (S,)
    """
    system = design.system(spec, lay)
    factor = system.analyse()
    arrays = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    shape = np.broadcast_shapes(*(arrays[k].shape for k in system.var_params + (["sigma"] if "sigma" in arrays
                                                                                 else [])))
    flat = {k: np.broadcast_to(v, shape).ravel() for k, v in arrays.items() if v.shape == () or v.shape == shape}
    out = np.empty(int(np.prod(shape)))
    for s in range(out.size):
        out[s] = system.evaluate(factor, {k: v[s] for k, v in flat.items()})[0]
    return out.reshape(shape) if shape else float(out[0])


def sparse_draw(spec, lay, design: SparseDesign, params, rng: np.random.Generator) -> np.ndarray:
    """Exact draws (S, m) of the effects' coordinates given S parameter draws, one factor each."""
    system = design.system(spec, lay)
    factor = system.analyse()
    S = next(iter(params.values())).shape[0]
    u = np.empty((S, system.m))
    for s in range(S):
        _, mean = system.evaluate(factor, {k: v[s] for k, v in params.items()})
        if mean is None:
            raise ModelError("The effects' precision is not positive definite at these parameter values.")
        u[s] = system.draw(factor, mean, rng, 1)[0]
    return u
