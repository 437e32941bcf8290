"""The pieces of the marginal Gaussian law of the observed cells, written once against the ops protocol.

A fitted model's cells are ``y = intercept + row_effect + col_effect + X coef + e``.
With a Gaussian residual e and Gaussian priors on the effects and on the
covariates' coefficients, both are integrated out: ``y ~ N(m0, B + Z G Z')``
where B is the residual covariance (block-diagonal over replicates) and
``Z G Z'`` the effects' and coefficients'. This module

* lays the data out once (:class:`Layout`): residuals from the prior mean on
  the full (R, N, K) grid with zeros at missing cells, the mask, the known se,
  the covariates' design X, the balanced-design sums of squares when they apply;
* describes the integrated effects (:class:`EffectsDesign`): which
  coordinates, how they map onto the augmented indicators ``[rows | cols | X]``,
  their prior covariance as a sum of scaled constant blocks (the coefficients'
  block fixed, not scaled);
* sees the residual through the augmented indicators
  (:func:`base_projections`), eliminates one side's iid effects
  (:func:`schur_logp`, :func:`schur_draw`), builds the dense covariance
  (:func:`dense_covariance`) and draws latent shocks back (:func:`draw_shocks`).

The likelihood paths themselves (which applies, log-density, draw-back of the
effects) are objects in :mod:`twoway.likelihood.paths`.

``params`` maps parameter names to values: PyTensor or JAX arrays inside a
sampler, or NumPy arrays with a leading batch of posterior draws afterwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from twoway.errors import ModelError
from twoway.likelihood import kronecker as kr
from twoway.likelihood.anova import AnovaStats, anova_stats
from twoway.likelihood.dense import dense_table_projections
from twoway.likelihood.diagonal import residual_sd
from twoway.likelihood.kronecker import kron
from twoway.likelihood.woodbury import (
    Projections,
    _assemble,
    cell_effect_projections,
    collapse_cells,
    collapse_covariates,
    covariate_pieces,
    diagonal_projections,
    eliminate_side,
    eliminated_side_logp,
    eliminated_side_posterior,
    shock_projections,
)
from twoway.linalg.ops import NUMPY
from twoway.linalg.structured import ar1_logdet, ar1_precision
from twoway.spec.model import ModelSpec
from twoway.table.data import TwoWayData

# Deferred imports: scipy (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["Layout", "EffectsDesign", "layout", "covariate_grid", "effects_design", "effects_map",
           "base_projections", "noise_variance",
           "eliminated_block", "schur_logp", "schur_draw", "dense_covariance", "draw_shocks", "kronecker_factors",
           "point_parameters", "cell_variance", "draw_cell_effects"]


@dataclass(frozen=True)
class Layout:
    """The data as every path needs it, computed once before sampling.

    Attributes
    ----------
    r : array (R, N, K)
        ``y - m0`` at observed cells, 0 at missing ones.
    mask : array (R, N, K) of float
        1 where observed.
    se : array (R, N, K)
        Known standard errors, 0 where none or missing.
    m0 : float
        Prior mean of the intercept (0 without an intercept).
    obs : tuple of three int arrays
        Observed (replicate, row, col) indices, C order.
    anova : AnovaStats or None
        Balanced sums of squares when the table is complete and the se constant.
    x : array (n_obs, p) or None
        The covariates' design, rows in the order of ``obs``; None without covariates.
    x_grid : array (R, N, K, p) or None
        ``x`` on the full grid, 0 at missing cells (derived from ``x``; see :func:`covariate_grid`).
    """

    r: np.ndarray
    mask: np.ndarray
    se: np.ndarray
    m0: float
    obs: tuple
    n_obs: int
    complete: bool
    se_constant: float | None
    anova: AnovaStats | None
    shape: tuple = (0, 0, 0)
    parts: dict = field(default_factory=dict)
    x: np.ndarray | None = None

    def __post_init__(self):
        x = None if self.x is None else np.asarray(self.x, dtype=float)
        if x is not None and (x.ndim != 2 or x.shape[0] != self.n_obs):
            raise ModelError(f"The covariates' design must have one row per observed cell ({self.n_obs}); "
                             f"got an array of shape {x.shape}.")
        if x is not None and x.shape[1] == 0:
            x = None
        object.__setattr__(self, "x", x)

    @property
    def x_grid(self) -> np.ndarray | None:
        """``x`` on the full grid, (R, N, K, p) with 0 at missing cells; built on first use (the sparse path
        never asks: its memory grows with the observed cells), then kept."""
        if self.x is None:
            return None
        grid = self.__dict__.get("_x_grid")
        if grid is None:
            grid = np.zeros(tuple(self.shape) + (self.x.shape[1],))
            grid[self.obs] = self.x
            object.__setattr__(self, "_x_grid", grid)
        return grid

    @property
    def n_cov(self) -> int:
        """p, the number of covariate columns (0 without covariates)."""
        return 0 if self.x is None else int(self.x.shape[1])

    @property
    def obs_flat(self) -> list[np.ndarray]:
        """For each replicate, the row-major flat indices of its observed cells."""
        R, N, K = self.shape
        rr, ii, jj = self.obs
        return [(ii[rr == k] * K + jj[rr == k]) for k in range(R)]

    @property
    def indicators(self) -> list[np.ndarray]:
        """For each replicate, the (n_r, N+K+p) augmented indicators ``[rows | cols | X]`` of its observed cells."""
        R, N, K = self.shape
        rr, ii, jj = self.obs
        p = self.n_cov
        out = []
        for k in range(R):
            sel = rr == k
            i, j = ii[sel], jj[sel]
            X = np.zeros((i.size, N + K + p))
            X[np.arange(i.size), i] = 1.0
            X[np.arange(i.size), N + j] = 1.0
            if p:
                X[:, N + K:] = self.x[sel]
            out.append(X)
        return out


def covariate_grid(lay: Layout) -> np.ndarray | None:
    """The covariates' design on the full grid, (R, N, K, p) with zeros at missing cells; None without covariates."""
    return lay.x_grid


def _anova_grid(x, obs, shape) -> np.ndarray | None:
    """The covariates (n_obs, p) on the grid for :func:`anova_stats` (None without, or when misshapen:
    :class:`Layout` says so)."""
    if x is None or np.ndim(x) != 2 or np.shape(x)[1] == 0 or np.shape(x)[0] != obs[0].size:
        return None
    grid = np.zeros(tuple(shape) + (np.shape(x)[1],))
    grid[obs] = np.asarray(x, dtype=float)
    return grid


def layout(data: TwoWayData, m0: float, parts: dict | None = None, *, x: np.ndarray | None = None) -> Layout:
    """Lay ``data`` out for the likelihood paths, relative to the prior mean ``m0``.

    ``parts`` holds what the residual needs beyond parameters: the ``full``
    covariance, the Kronecker ``row``/``col`` structures. ``x`` (n_obs, p) is the
    covariates' design, rows in ``data.observed_index()`` order (None, or p = 0:
    no covariates).
    """
    mask = data.mask.astype(float)
    r = np.where(data.mask, np.nan_to_num(data.values) - m0, 0.0)
    se = data.se_or_zero()
    obs = data.observed_index()
    complete = bool(data.is_complete)
    se_obs = se[data.mask]
    se_constant = float(se_obs[0]) if se_obs.size and np.all(se_obs == se_obs[0]) else None
    with np.errstate(over="ignore", invalid="ignore"):  # data far from an extreme prior mean: the start-up check says so
        stats = anova_stats(r, x=_anova_grid(x, obs, r.shape)) if complete and se_constant is not None else None
    return Layout(r=r, mask=mask, se=se, m0=float(m0), obs=obs, n_obs=int(obs[0].size),
                  complete=complete, se_constant=se_constant, anova=stats, shape=tuple(int(d) for d in r.shape),
                  parts=dict(parts or {}), x=x)


@dataclass(frozen=True)
class EffectsDesign:
    """The integrated effects: coordinates u with prior ``N(0, G)``, ``G = sum_b var_b G_b``.

    Attributes
    ----------
    E : array (N+K+p, m)
        Maps u onto the coefficients of the augmented indicators ``[rows | cols | X]``
        (p = 0 without covariates).
    blocks : tuple of (name, var_param, start, stop)
        Each block of u: what it is (``intercept``, ``row_effect``, ``col_effect``,
        ``coef``), the name of the parameter holding its variance scale (a sd; None
        for ``coef``, whose prior covariance is fixed: ``var_b = 1``), and its slice.
    base_cov : tuple of arrays (m, m)
        G_b: the block's constant covariance (identity or a known matrix), embedded.
    base_prec : tuple of arrays (m, m)
        G_b^-1 on the block, embedded (zeros elsewhere).
    base_logdet : tuple of float
        log|G_b| on the block.
    bases : dict
        ``row``/``col`` -> the (n, p) basis mapping block coordinates to effects
        (identity for random effects, an orthonormal sum-to-zero basis for fixed ones).
    """

    E: np.ndarray
    blocks: tuple
    base_cov: tuple
    base_prec: tuple
    base_logdet: tuple
    bases: dict = field(default_factory=dict)

    @property
    def m(self) -> int:
        return self.E.shape[1]

    @property
    def n_cov(self) -> int:
        """p, the covariates' coefficients integrated with the effects (the ``coef`` block; 0 without)."""
        return sum(stop - start for name, _, start, stop in self.blocks if name == "coef")

    def dense(self) -> "EffectsDesign":
        """This design: it is dense already (a sparse design builds one on request)."""
        return self

    def relationship_scale(self, side: str) -> float:
        """The mean diagonal of ``side``'s effects' prior covariance (of its known matrix; 1 without one)."""
        for k, (name, _, start, stop) in enumerate(self.blocks):
            if name == f"{side}_effect":
                return float(np.mean(np.diag(self.base_cov[k])[start:stop]))
        return 1.0

    def without_covariates(self) -> "EffectsDesign":
        """The same effects without the ``coef`` block (E on the row and column indicators alone).

        What a table's covariance is given the coefficients: the covariates' part
        needs their values at every cell, unknown off the observed cells.
        """
        if not self.n_cov:
            return self
        keep = [k for k, (name, *_) in enumerate(self.blocks) if name != "coef"]
        m = self.blocks[keep[-1]][3] if keep else 0
        n = self.E.shape[0] - self.n_cov
        return EffectsDesign(E=self.E[:n, :m], blocks=tuple(self.blocks[k] for k in keep),
                             base_cov=tuple(self.base_cov[k][:m, :m] for k in keep),
                             base_prec=tuple(self.base_prec[k][:m, :m] for k in keep),
                             base_logdet=tuple(self.base_logdet[k] for k in keep), bases=self.bases)

    def without_effects(self) -> "EffectsDesign":
        """The same layout with nothing integrated: the residual law alone."""
        return EffectsDesign(E=self.E[:, :0], blocks=(), base_cov=(), base_prec=(), base_logdet=())

    def prior(self, ops, params):
        """``(G^-1, log|G|)`` for parameter values ``params`` (batched over leading dims).

        A block without a variance parameter (``coef``) adds its fixed precision and log-determinant.
        """
        if self.m == 0:
            return None, 0.0
        g_inv = 0.0
        logdet = 0.0
        fixed = [(prec, ld) for (_, var_param, _, _), prec, ld in zip(self.blocks, self.base_prec, self.base_logdet)
                 if var_param is None]
        for (name, var_param, start, stop), prec, ld in zip(self.blocks, self.base_prec, self.base_logdet):
            if var_param is None:
                continue
            sd = params[var_param]
            var = sd * sd
            g_inv = g_inv + (1.0 / var)[..., None, None] * prec if hasattr(var, "ndim") and var.ndim else \
                g_inv + prec / var
            logdet = logdet + (stop - start) * ops.log(var) + ld
        for prec, ld in fixed:  # added last: a scaled block's parameter sets the type of the sum
            g_inv = g_inv + prec
            logdet = logdet + ld
        return g_inv, logdet

    def covariance(self, ops, params):
        """G for parameter values ``params`` (no batch)."""
        g = 0.0
        for (name, var_param, start, stop), cov in zip(self.blocks, self.base_cov):
            if var_param is None:
                g = g + cov
                continue
            sd = params[var_param]
            g = g + sd * sd * cov
        return g


def _sum_to_zero_basis(n: int) -> np.ndarray:
    """An orthonormal (n, n-1) basis of the vectors summing to zero."""
    from scipy.linalg import helmert

    return helmert(n, full=False).T.copy()


def effects_design(spec: ModelSpec, data: TwoWayData, *, known: dict | None = None,
                   coef_sd: np.ndarray | None = None) -> EffectsDesign:
    """Which effects ``spec`` integrates out on ``data``, and their prior structure.

    Parameters
    ----------
    known : dict, optional
        ``row``/``col`` -> a known relationship matrix (n, n) for random effects.
    coef_sd : array (p,), optional
        Prior sds of the covariates' coefficients: with them E has p more rows
        (the covariates' columns of the augmented indicators) and a last block
        ``("coef", None, m - p, m)`` with the fixed prior covariance ``diag(coef_sd^2)``.
    """
    N, K = data.n_rows, data.n_cols
    coef_sd = None if coef_sd is None else np.asarray(coef_sd, dtype=float).reshape(-1)
    p = 0 if coef_sd is None else coef_sd.size
    known = known or {}
    cols: list[np.ndarray] = []
    blocks = []
    bases = {}
    covs = []
    precs = []
    lds = []
    start = 0
    if spec.effects != "integrate":
        return EffectsDesign(E=np.zeros((N + K, 0)), blocks=(), base_cov=(), base_prec=(), base_logdet=())
    if p and not np.all(np.isfinite(coef_sd) & (coef_sd > 0)):
        raise ModelError(f"The covariates' coefficients need positive finite prior sds; got {coef_sd}.")
    parts = []
    if spec.intercept:
        e = np.concatenate([np.ones(N), np.zeros(K + p)])[:, None]
        parts.append(("intercept", "intercept_sd", e, np.eye(1)))
    for side, kind, n, offset in (("row", spec.row_effect, N, 0), ("col", spec.col_effect, K, N)):
        if kind == "none":
            continue
        basis = np.eye(n) if kind == "random" else _sum_to_zero_basis(n)
        bases[side] = basis
        e = np.zeros((N + K + p, basis.shape[1]))
        e[offset:offset + n] = basis
        rel = known.get(side) if kind == "random" else None
        cov = np.eye(basis.shape[1]) if rel is None else np.asarray(rel, dtype=float)
        var_param = f"{side}_effect_sd" if kind == "random" else f"{side}_fixed_sd"
        parts.append((f"{side}_effect", var_param, e, cov))
    if p:
        e = np.zeros((N + K + p, p))
        e[N + K:] = np.eye(p)
        parts.append(("coef", None, e, np.diag(coef_sd * coef_sd)))
    m = sum(part[2].shape[1] for part in parts)
    for name, var_param, e, cov in parts:
        stop = start + e.shape[1]
        cols.append(e)
        blocks.append((name, var_param, start, stop))
        full_cov = np.zeros((m, m))
        full_cov[start:stop, start:stop] = cov
        full_prec = np.zeros((m, m))
        full_prec[start:stop, start:stop] = np.linalg.inv(cov)
        covs.append(full_cov)
        precs.append(full_prec)
        lds.append(float(np.linalg.slogdet(cov)[1]))
        start = stop
    E = np.concatenate(cols, axis=1) if cols else np.zeros((N + K + p, 0))
    return EffectsDesign(E=E, blocks=tuple(blocks), base_cov=tuple(covs), base_prec=tuple(precs),
                         base_logdet=tuple(lds), bases=bases)


def effects_map(lay: Layout, design) -> np.ndarray:
    """``design.E`` on the layout's augmented indicators: (N+K+p, m), p = ``lay.n_cov``.

    A design without the covariates' block on a layout with covariates ignores
    them (zero rows); a design with the block needs the layout's covariates.
    """
    N, K = lay.shape[1], lay.shape[2]
    E = design.E
    want = N + K + lay.n_cov
    if E.shape[0] == want:
        return E
    if E.shape[0] == N + K:
        return np.concatenate([E, np.zeros((lay.n_cov, E.shape[1]))], axis=0)
    raise ModelError(f"The effects' design has {E.shape[0] - N - K} covariate columns and the layout "
                     f"{lay.n_cov}; lay the data out with the covariates' design (layout(..., x=X)).")


# -- residual pieces ------------------------------------------------------------------------
def _on_rows(x, hetero: bool):
    return x[..., None, :, None] if hetero else x[..., None, None, None]


def _on_cols(x, hetero: bool):
    return x[..., None, None, :] if hetero else x[..., None, None, None]


def _scale_grid(spec: ModelSpec, params, side: str):
    kind = getattr(spec, f"{side}_scale")
    if kind == "none":
        return None
    value = params[f"{side}_sd"]
    return (_on_rows if side == "row" else _on_cols)(value, kind == "hetero")


def noise_variance(ops, spec: ModelSpec, lay: Layout, params):
    """Variance of each cell's independent part, (..., R, N, K); 1 at missing cells.

    Independent residual: se, row, column and cell scales combined by
    ``spec.combine``. Latent and Kronecker residuals: ``se^2 + sigma^2`` (the
    row and column parts are not independent there).
    """
    se = lay.se
    sigma = params.get("sigma") if spec.sigma else None
    if sigma is not None and hasattr(sigma, "ndim") and sigma.ndim:
        sigma = sigma[..., None, None, None]
    if spec.residual == "independent":
        sd = residual_sd(se, _scale_grid(spec, params, "row"), _scale_grid(spec, params, "col"), sigma,
                     combine=spec.combine)
        var = sd * sd
    else:
        var = se * se if sigma is None else se * se + sigma * sigma
    return var * lay.mask + (1.0 - lay.mask)


def base_projections(ops, spec: ModelSpec, lay: Layout, params) -> Projections:
    """The residual covariance seen through the augmented indicators ``[rows | cols | X]`` (X: the layout's
    covariates, when it has them)."""
    var = noise_variance(ops, spec, lay, params)
    if spec.residual == "kronecker":   # the noise may be zero there; its own path handles it
        return _kronecker(ops, spec, lay, params, var)
    if spec.residual == "full":
        return _dense_table(ops, spec, lay, params, var)
    w = lay.mask / var
    logdet = ops.sum(ops.sum(ops.sum(lay.mask * ops.log(var), axis=-1), axis=-1), axis=-1)
    X = covariate_grid(lay)
    if spec.residual == "independent":
        if spec.cell_effect == "random":
            return cell_effect_projections(ops, lay.r, w, logdet, cell_variance(params), X)
        return diagonal_projections(ops, lay.r, w, logdet, X)
    if spec.residual == "latent":
        shock_var, index = _shock_variances(ops, spec, lay, params)
        return shock_projections(ops, lay.r, w, logdet, shock_var, index, lay.shape[0], lay.shape[1] + lay.shape[2],
                                 X)
    raise ModelError(f"No projection path for the {spec.residual!r} residual.")  # pragma: no cover


def table_covariance(ops, spec: ModelSpec, lay: Layout, params):
    """Covariance (N K, N K) of one complete table's correlated residual part."""
    if spec.residual == "full":
        return lay.parts["full"](ops, params)
    if spec.residual == "kronecker":

        return kron(ops, params["_row_cov"], params["_col_cov"])
    raise ModelError(f"The {spec.residual!r} residual has no table covariance.")  # pragma: no cover


def _kronecker(ops, spec, lay, params, var):
    path = kr.kronecker_path(spec, lay)
    R = lay.shape[0]
    if path == "dense-table":
        return _dense_table(ops, spec, lay, params, var)
    U, V = params["_row_cov"], params["_col_cov"]
    X = covariate_grid(lay)
    if path == "kronecker-eigen":
        return kr.kron_eigen_projections(ops, lay.r, U, V, params["sigma"] ** 2, R,
                                         lay.parts["row"], lay.parts["col"], X=X)
    v_inv, ld_v = kr.inverse_and_logdet(ops, V)
    if path == "kronecker-ar1" and not ops.batched:

        sd2 = params["row_sd"] ** 2
        N = lay.shape[1]
        u_inv, ld_u = ar1_precision(params["row_rho"], sd2, N), ar1_logdet(params["row_rho"], sd2, N)
    else:
        u_inv, ld_u = kr.inverse_and_logdet(ops, U)
    return kr.kron_precision_projections(ops, lay.r, u_inv, v_inv, ld_u, ld_v, R, X=X)


def kronecker_factors(spec: ModelSpec, lay: Layout, params) -> dict:
    """U (S, N, N) and V (S, K, K) for each posterior draw, from the structures' parameters (NumPy)."""
    out = {}
    S = next(iter(params.values())).shape[0]
    for side, unit in (("row", False), ("col", True)):
        st = lay.parts[side]
        names = st.parameter_names(unit_scale=unit)
        out[f"_{side}_cov"] = np.stack([st.matrix({n: params[n][s] for n in names}, unit_scale=unit)
                                        for s in range(S)])
    return out


def point_parameters(spec: ModelSpec, lay: Layout, posterior, chain: int, draw: int, constants: dict) -> dict:
    """NumPy parameter values at one posterior draw, with what the residual derives from them."""
    params = {k: np.asarray(v) for k, v in constants.items()}
    for name in posterior.data_vars:
        params[name] = posterior[name].values[chain, draw]
    if spec.residual == "kronecker":
        batch = {k: np.asarray(v)[None] for k, v in params.items()}
        params.update({k: v[0] for k, v in kronecker_factors(spec, lay, batch).items()})
    return params


def _dense_table(ops, spec, lay, params, var):
    R, N, K = lay.shape
    cov = table_covariance(ops, spec, lay, params)
    flat = lay.obs_flat
    noise_has_value = spec.sigma or bool(np.any(lay.se))
    r_obs, noise = [], []
    for k in range(R):
        rk = lay.r[k].reshape((N * K,))
        r_obs.append(rk[flat[k]])
        vk = var[..., k, :, :].reshape((N * K,)) if noise_has_value else None
        noise.append(vk[flat[k]] if vk is not None else ops.asarray(np.zeros(flat[k].size)))
    return dense_table_projections(ops, r_obs, flat, lay.indicators, cov, noise)


def _shock_variances(ops, spec, lay, params):
    R, N, K = lay.shape
    parts, index = [], []
    for side, n, offset in (("row", N, 0), ("col", K, N)):
        kind = getattr(spec, f"{side}_scale")
        if kind == "none":
            continue
        sd = params[f"{side}_sd"]
        if kind == "homo":
            sd = sd[..., None] * np.ones(n) if hasattr(sd, "ndim") and sd.ndim else sd * ops.asarray(np.ones(n))
        parts.append(sd * sd)
        index.extend(range(offset, offset + n))
    return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0], np.asarray(index)


# -- the log-density ----------------------------------------------------------------------------
def eliminated_block(spec: ModelSpec, lay: Layout, design: EffectsDesign):
    """The block of iid random effects the ``woodbury-schur`` path eliminates, or None.

    Of the row and column effects that are random with an identity relationship
    matrix, the side with more levels (rows on a tie).

    Returns
    -------
    (index in design.blocks, side) or None
    """
    best = None
    for k, (name, _, start, stop) in enumerate(design.blocks):
        if name not in ("row_effect", "col_effect"):
            continue
        side = name.split("_")[0]
        if getattr(spec, f"{side}_effect") != "random":
            continue
        if not np.array_equal(design.base_cov[k][start:stop, start:stop], np.eye(stop - start)):
            continue
        if best is None or stop - start > best[2]:
            best = (k, side, stop - start)
    return None if best is None else best[:2]


def uniform_noise(spec: ModelSpec, lay: Layout) -> bool:
    """Whether every observed cell of an independent residual has the same variance (a scalar), no cell effect."""
    return (spec.residual == "independent" and spec.row_scale != "hetero" and spec.col_scale != "hetero"
            and lay.se_constant is not None and spec.cell_effect == "none")


def cell_variance(params):
    """The random cell effects' variance, ``cell_sd^2`` (batched over leading dims)."""
    sd = params["cell_sd"]
    return sd * sd


def _eliminated(ops, spec: ModelSpec, lay: Layout, design: EffectsDesign, params):
    """(EliminatedSide, quad0, log|B|, log|G|) for the ``woodbury-schur`` path, batched over draws in NumPy.

    With one variance v for every cell, the precision pattern is the constant
    count of observations per cell and v enters as a scale; otherwise the cell
    precisions are summed over replicates.
    """
    k, side = eliminated_block(spec, lay, design)
    _, var_param, start, stop = design.blocks[k]
    keep = np.r_[0:start, stop:design.m]
    X = covariate_grid(lay)
    cov = None
    g_inv, logdet_g = design.prior(ops, params)
    g_inv_rest = g_inv[..., keep, :][..., keep]
    sd = params[var_param]
    if uniform_noise(spec, lay):
        one = dataclasses.replace(lay, se=np.full((1, 1, 1), lay.se_constant), mask=np.ones((1, 1, 1)))
        v = noise_variance(ops, spec, one, params)[..., 0, 0, 0]
        r = lay.r
        scale = 1.0 / v
        w_sum, wr_sum = lay.mask.sum(axis=0), ops.sum(r, axis=-3)
        quad0 = ops.sum(ops.sum(ops.sum(r * r, axis=-1), axis=-1), axis=-1) / v
        logdet_base = lay.n_obs * ops.log(v)
        if X is not None:  # constant patterns (X is 0 at missing cells); only b_X sees the data
            b_X = ops.sum(ops.sum(ops.sum(r[..., None] * ops.asarray(X), axis=-2), axis=-2), axis=-2)
            cov = (X.sum(axis=(0, 2)), X.sum(axis=(0, 1)), np.einsum("rnkp,rnkq->pq", X, X), b_X)
    else:
        var = noise_variance(ops, spec, lay, params)
        w = lay.mask / var
        wr = w * lay.r
        scale = 1.0
        logdet_base = ops.sum(ops.sum(ops.sum(lay.mask * ops.log(var), axis=-1), axis=-1), axis=-1)
        if spec.cell_effect == "random":
            w_sum, wr_sum, quad0, extra = collapse_cells(ops, lay.r, w, cell_variance(params))
            logdet_base = logdet_base + extra
            if X is not None:
                cov = collapse_covariates(ops, lay.r, w, cell_variance(params), X)
        else:
            w_sum, wr_sum = ops.sum(w, axis=-3), ops.sum(wr, axis=-3)
            quad0 = ops.sum(ops.sum(ops.sum(wr * lay.r, axis=-1), axis=-1), axis=-1)
            if X is not None:
                P_rX, P_cX, P_XX, b_X = covariate_pieces(ops, w, wr, X)
                cov = (ops.sum(P_rX, axis=-3), ops.sum(P_cX, axis=-3), ops.sum(P_XX, axis=-3), ops.sum(b_X, axis=-2))
    parts = eliminate_side(ops, w_sum=w_sum, wr_sum=wr_sum, scale=scale, n_rows=lay.shape[1], side=side,
                           side_var=sd * sd, E_rest=effects_map(lay, design)[:, keep], g_inv_rest=g_inv_rest,
                           cov=cov, n_cov=lay.n_cov)
    return parts, quad0, logdet_base, logdet_g


def schur_logp(ops, spec: ModelSpec, lay: Layout, design: EffectsDesign, params):
    """The ``woodbury-schur`` path: diagonal residual, one side's iid random effects eliminated."""
    parts, quad0, logdet_base, logdet_g = _eliminated(ops, spec, lay, design, params)
    return eliminated_side_logp(ops, parts, quad0=quad0, logdet_base=logdet_base, logdet_g=logdet_g,
                                n_obs=lay.n_obs)


def schur_draw(spec: ModelSpec, lay: Layout, design: EffectsDesign, params, rng) -> np.ndarray:
    """Effects' coordinates (S, m) drawn through the eliminated side's block structure."""

    k, _ = eliminated_block(spec, lay, design)
    _, _, start, stop = design.blocks[k]
    parts, *_ = _eliminated(NUMPY, spec, lay, design, params)
    u_a, u_o = eliminated_side_posterior(parts, rng)
    return np.concatenate([u_o[..., :start], u_a, u_o[..., start:]], axis=-1)


# -- dense covariance ---------------------------------------------------------------------------
def indicator_matrix(lay: Layout) -> np.ndarray:
    """X for the observed cells: (n_obs, N+K) row and column indicators."""
    R, N, K = lay.shape
    rr, ii, jj = lay.obs
    X = np.zeros((lay.n_obs, N + K))
    X[np.arange(lay.n_obs), ii] = 1.0
    X[np.arange(lay.n_obs), N + jj] = 1.0
    return X


def dense_covariance(ops, spec: ModelSpec, lay: Layout, design: EffectsDesign, params):
    """The (n_obs, n_obs) covariance of the observed cells (one parameter point, no batch).

    The integrated part is ``Z G Z'`` with ``Z = [rows | cols | X] E`` (X: the layout's covariates).
    """
    rr, ii, jj = lay.obs
    var = noise_variance(ops, spec, lay, params)[rr, ii, jj]
    cov = ops.diag(var)
    X = indicator_matrix(lay)
    if spec.residual == "latent":
        shock_var, index = _shock_variances(ops, spec, lay, params)
        Xs = X[:, index]
        same = (rr[:, None] == rr[None, :]).astype(float)
        cov = cov + (ops.asarray(Xs) * shock_var) @ ops.asarray(Xs.T) * same
    elif spec.residual in ("full", "kronecker"):

        R, N, K = lay.shape
        table = table_covariance(ops, spec, lay, params)
        flat_all = rr * (N * K) + ii * K + jj
        big = kron(ops, ops.asarray(np.eye(R)), table)
        cov = cov + big[flat_all][:, flat_all]
    elif spec.residual != "independent":
        raise ModelError(f"No dense covariance for the {spec.residual!r} residual.")  # pragma: no cover
    if spec.cell_effect == "random":
        same_cell = ((ii[:, None] == ii[None, :]) & (jj[:, None] == jj[None, :])).astype(float)
        cov = cov + cell_variance(params) * ops.asarray(same_cell)
    if design.m:
        A = X if lay.x is None else np.concatenate([X, lay.x], axis=1)
        Z = ops.asarray(A @ effects_map(lay, design))
        cov = cov + Z @ design.covariance(ops, params) @ Z.T
    return cov


# -- drawing the effects back -------------------------------------------------------------------------
def draw_shocks(spec: ModelSpec, lay: Layout, design: EffectsDesign, params, effects: dict,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exact draws of the latent residual's row and column shocks, given the drawn effects.

    Given the parameters and the effects, each replicate's shocks are Gaussian:
    ``s_r | ... ~ N(M^-1 X_s' D^-1 e_r, M^-1)``, ``M = diag(1/shock_var) + X_s' D^-1 X_s``,
    where e_r is the replicate's residual after the effects and D the noise variances.
    Drawing the effects from their marginal conditional first and the shocks
    given them is an exact draw from the joint conditional.

    Returns
    -------
    dict with ``row_shock`` (S, R, N) and/or ``col_shock`` (S, R, K).
    """

    R, N, K = lay.shape
    S = next(iter(params.values())).shape[0]
    resid = _residual_after_effects(lay, effects, S)                     # (S, R, N, K)
    var = noise_variance(NUMPY, spec, lay, params)                        # (S, R, N, K)
    w = lay.mask / var
    shock_var, index = _shock_variances(NUMPY, spec, lay, params)         # (S, m)
    wr = w * resid
    P = _assemble(NUMPY, w.sum(-1), w.sum(-2), w)[..., index[:, None], index[None, :]]   # (S, R, m, m)
    b = np.concatenate([wr.sum(-1), wr.sum(-2)], axis=-1)[..., index]                  # (S, R, m)
    M = P + (1.0 / shock_var)[:, None, :, None] * np.eye(index.size)
    L = np.linalg.cholesky(M)
    mu = np.linalg.solve(M, b[..., None])[..., 0]
    z = rng.standard_normal(mu.shape)
    draws = mu + np.linalg.solve(np.swapaxes(L, -1, -2), z[..., None])[..., 0]
    out = {}
    pos = 0
    for side, n in (("row", N), ("col", K)):
        if getattr(spec, f"{side}_scale") != "none":
            out[f"{side}_shock"] = draws[..., pos:pos + n]
            pos += n
    return out


def _residual_after_effects(lay: Layout, effects: dict, S: int) -> np.ndarray:
    """The centred table minus the drawn intercept, row and column effects and ``X @ coef``, zero at missing
    cells (S, R, N, K)."""
    mean = np.zeros((S, 1, 1, 1))
    if "intercept" in effects:
        mean = mean + (effects["intercept"] - lay.m0)[:, None, None, None]
    if "row_effect" in effects:
        mean = mean + effects["row_effect"][:, None, :, None]
    if "col_effect" in effects:
        mean = mean + effects["col_effect"][:, None, None, :]
    if "coef" in effects and lay.x is not None:
        mean = mean + np.einsum("rnkp,sp->srnk", covariate_grid(lay), effects["coef"])
    return (lay.r[None] - mean) * lay.mask


def draw_cell_effects(spec: ModelSpec, lay: Layout, params, effects: dict,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exact draws of the random cell effects, given the parameters and the drawn effects.

    Given everything else, the cells are independent:
    ``c[i,j] | ... ~ N(v m / (1 + v W), v / (1 + v W))`` with ``v = cell_sd^2``,
    ``W`` the cell's precisions summed over replicates and ``m`` its
    precision-weighted residuals after the effects (a cell with no observation
    draws from its prior). Drawing the effects from their marginal conditional
    first and the cells given them is an exact draw from the joint conditional.

    Returns
    -------
    dict with ``cell_effect`` (S, N, K).
    """

    S = next(iter(params.values())).shape[0]
    resid = _residual_after_effects(lay, effects, S)                     # (S, R, N, K)
    w = lay.mask / noise_variance(NUMPY, spec, lay, params)                 # (S, R, N, K)
    W, m = w.sum(axis=-3), (w * resid).sum(axis=-3)                       # (S, N, K)
    v = cell_variance(params)[:, None, None]
    g = 1.0 + v * W
    return {"cell_effect": v * m / g + np.sqrt(v / g) * rng.standard_normal(W.shape)}
