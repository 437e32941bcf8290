"""Variance decomposition: how much of a cell's variance each component carries, draw by draw.

For each posterior draw the variance of one cell of the table is split into

* ``row_effect``: the row effects' variance, ``row_effect_sd^2`` for random
  effects (times the mean diagonal of a known relationship matrix), or the
  variance of the drawn effects over the table's rows for fixed effects (a
  finite-population variance);
* ``col_effect``: the same for columns;
* ``covariates``: with covariates in the mean, the variance over the observed
  cells of their part ``x[r,i,j]' coef`` (a finite-population variance, like
  fixed effects'): the variance the covariates explain;
* ``cell``: a random cell effect's variance ``cell_sd^2``, when the model has one;
* ``residual``: the unknown residual variance (row and column scales, sigma,
  latent shocks, a Kronecker or full covariance's diagonal); with
  ``combine = "sd"`` it is ``(se + row_sd + col_sd + sigma)^2 - se^2``, what the
  unknown scales add to the known variance;
* ``known_se``: the known measurement variance, ``se^2``.

Heteroscedastic models (a ``row_sd`` per row, a Kronecker factor with a
variance per level, different known se) give every cell its own variance; the
components are then **averaged over the observed cells**, and the total is the
average cell variance. Shares are each component over that total, per draw,
then summarised (so they sum to 1 in every draw).

Intraclass correlations are given where the residual is independent or latent
(a Kronecker or full residual correlates cells in other ways); they are
conditional on the covariates (the ``covariates`` share is left out of their
denominator, ``total - covariates``): the row ICC ``row_effect / total`` is the correlation of two cells of one row in different
columns (different replicate tables for the latent residual), the column ICC
likewise, and with replicate tables the cell ICC ``(row_effect + col_effect +
cell) / total`` the correlation of two replicates of one cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twoway.likelihood.marginal import kronecker_factors, layout, table_covariance
from twoway.linalg.ops import NUMPY
from twoway.plan import residual_parts
from twoway.results.covariates import fit_design, flat_coef
from twoway.results.stats import statistics_table

# Deferred imports: xarray (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["VarianceDecomposition", "variance_decomposition", "flat_parameters", "full_layout"]


@dataclass(frozen=True)
class VarianceDecomposition:
    """Variance components per draw, their shares and the intraclass correlations.

    Attributes
    ----------
    variances : xarray.DataArray
        (chain, draw, component): each component's variance, averaged over the observed cells.
    shares : xarray.DataArray
        (chain, draw, component): ``variances / total``; sums to 1 in every draw.
    icc : xarray.DataArray or None
        (chain, draw, icc): ``row``, ``col`` (random effects only) and ``cell`` (with
        replicate tables); None where not defined.
    summary : pandas.DataFrame
        One row per ``variance[c]``, ``total``, ``share[c]``, ``icc[k]``; the parameters' columns.
    notes : list of str
        What the numbers mean for this model, in words.
    """

    variances: object
    shares: object
    icc: object
    summary: object
    notes: list = field(default_factory=list)


def flat_parameters(fit, names=None) -> tuple[dict[str, np.ndarray], int, int]:
    """The posterior's variables with chain and draw flattened into one leading axis of S draws.

    Parameters
    ----------
    fit : Fit
    names : iterable of str, optional
        Only these variables (those of them in the posterior); default: every variable.

    Returns
    -------
    (params, n_chain, n_draw) : dict of str to array (S, ...), and the two sizes.
    """
    post = fit.posterior
    n_chain, n_draw = int(post.sizes["chain"]), int(post.sizes["draw"])
    S = n_chain * n_draw
    params = {}
    keep = None if names is None else {str(n) for n in names}
    for name in post.data_vars:
        if keep is not None and str(name) not in keep:
            continue
        v = post[name].transpose("chain", "draw", ...).values
        params[str(name)] = v.reshape((S,) + v.shape[2:])
    return params, n_chain, n_draw


#: Posterior variables the decomposition never reads: derived means, and random effects (their
#: spread is their sd parameter; fixed effects' drawn values are read).
_UNREAD = ("row_mean", "col_mean")


def _read_names(fit) -> list[str]:
    """The posterior variables :func:`variance_decomposition` reads (every one but the per-level ones it needs not)."""
    spec = fit.model
    skip = set(_UNREAD) | {f"{side}_effect" for side in ("row", "col") if getattr(spec, f"{side}_effect") == "random"}
    return [str(n) for n in fit.posterior.data_vars if str(n) not in skip]


def full_layout(fit):
    """The fit's layout (observed cells, se, the residual's parts), also for fits whose effects were sampled."""

    spec, data = fit.model, fit.data
    if spec.effects == "integrate":
        plan = fit.plan
        return plan.layout, plan
    return layout(data, 0.0, residual_parts(spec, data.row_labels, data.col_labels)), None


def _effect_variance(spec, side: str, params, plan, S: int) -> np.ndarray | None:
    kind = getattr(spec, f"{side}_effect")
    if kind == "none":
        return None
    if kind == "random":
        return params[f"{side}_effect_sd"].reshape(S) ** 2 * _relationship_scale(plan, side)
    return np.var(params[f"{side}_effect"].reshape(S, -1), axis=-1)


def covariate_variance(X: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The variance over the observed cells of ``X @ coef``, per draw.

    Parameters
    ----------
    X : array (n_obs, p)
        The covariate design at the observed cells.
    coef : array (S, p)
        Draws of the coefficients.

    Returns
    -------
    array (S,)
        ``coef' C coef`` per draw, C the (p, p) covariance of X's columns over the cells (ddof 0).
    """
    X = np.asarray(X, dtype=float)
    if X.shape[0] == 0:
        return np.zeros(coef.shape[0])
    centred = X - X.mean(axis=0)
    C = centred.T @ centred / X.shape[0]
    return np.maximum(np.einsum("sp,pq,sq->s", coef, C, coef), 0.0)


def _relationship_scale(plan, side: str) -> float:
    """The mean diagonal of a known relationship matrix of ``side``'s random effects (1 without one)."""
    design = None if plan is None else plan.design
    if design is None:
        return 1.0
    return design.relationship_scale(side)  # dense or sparse, each design knows its own


#: Draws per chunk times observed cells: the most cell values held at once.
CHUNK_VALUES = 4_000_000


def residual_variance(spec, lay, params, S: int) -> np.ndarray:
    """The unknown residual variance averaged over the observed cells, per draw, (S,); known se taken out.

    Computed at the observed cells only, a chunk of draws at a time (memory
    ``CHUNK_VALUES`` values, whatever the table's size).
    """

    rr, ii, jj = lay.obs
    se = lay.se[rr, ii, jj]
    n = max(ii.size, 1)
    step = max(1, CHUNK_VALUES // n)
    out = np.zeros(S)
    for lo in range(0, S, step):
        sl = slice(lo, min(S, lo + step))
        m = sl.stop - sl.start
        scale = {}
        for side, index in (("row", ii), ("col", jj)):
            # row/column scales are the independent residual's or the latent shocks' (a Kronecker
            # structure's own row_sd is in its factor)
            kind = getattr(spec, f"{side}_scale") if spec.residual in ("independent", "latent") else "none"
            if kind == "hetero":
                scale[side] = params[f"{side}_sd"][sl][:, index]
            elif kind == "homo":
                scale[side] = params[f"{side}_sd"][sl].reshape(m, 1)
            else:
                scale[side] = 0.0
        sigma = params["sigma"][sl].reshape(m, 1) if spec.sigma else 0.0
        if spec.residual == "independent" and spec.combine == "sd":
            cell = (se + scale["row"] + scale["col"] + sigma) ** 2 - se ** 2
        else:   # variances add: the scales (independent), the shocks (latent), the nugget
            cell = scale["row"] ** 2 + scale["col"] ** 2 + sigma ** 2 + np.zeros((m, 1))
        if not ii.size:
            out[sl] = 0.0
        elif cell.shape[-1] == 1:     # the same for every cell: no need to spread it over them
            out[sl] = cell[:, 0]
        else:
            out[sl] = np.broadcast_to(cell, (m, ii.size)).mean(axis=-1)
    if spec.residual == "kronecker":
        factors = kronecker_factors(spec, lay, params)
        u = np.diagonal(factors["_row_cov"], axis1=-2, axis2=-1)
        v = np.diagonal(factors["_col_cov"], axis1=-2, axis2=-1)
        counts = np.zeros((lay.shape[1], lay.shape[2]))
        np.add.at(counts, (ii, jj), 1.0)
        out = out + np.einsum("si,ij,sj->s", u, counts, v) / n
    elif spec.residual == "full":
        K = lay.shape[2]
        flat = ii * K + jj
        out = out + np.array([np.diagonal(table_covariance(NUMPY, spec, lay, {k: v[s] for k, v in params.items()}))
                              [flat].mean() for s in range(S)])
    return out


def variance_decomposition(fit, *, ci_prob: float = 0.94) -> VarianceDecomposition:
    """Split a cell's variance into components, per draw; shares of the total; intraclass correlations.

    Parameters
    ----------
    fit : Fit
    ci_prob : float
        Probability of the summary's highest-density intervals.

    Returns
    -------
    VarianceDecomposition
        See the module docstring for the definitions; components are averaged over the
        observed cells when they differ between cells.
    """
    import xarray as xr

    spec = fit.model
    params, n_chain, n_draw = flat_parameters(fit, _read_names(fit))
    S = n_chain * n_draw
    lay, plan = full_layout(fit)
    if plan is not None:
        for name, value in plan.constants.items():
            params.setdefault(name, np.full(S, value))
    rr, ii, jj = lay.obs
    comps: dict[str, np.ndarray] = {}
    design = fit_design(fit)
    coef = None if design is None else flat_coef(fit, design)
    if coef is not None:
        comps["covariates"] = covariate_variance(design.X, coef)
    for side in ("row", "col"):
        v = _effect_variance(spec, side, params, plan, S)
        if v is not None:
            comps[f"{side}_effect"] = v
    if "cell_sd" in params:
        comps["cell"] = params["cell_sd"].reshape(S) ** 2
    no_unknown_residual = (spec.residual == "independent" and spec.row_scale == "none"
                           and spec.col_scale == "none" and not spec.sigma)
    if not no_unknown_residual:   # a common-effect model: the known se is the only residual variance
        comps["residual"] = residual_variance(spec, lay, params, S)
    se2 = lay.se[rr, ii, jj] ** 2
    if np.any(se2 > 0):
        comps["known_se"] = np.full(S, float(se2.mean()))
    names = list(comps)
    var = np.stack([comps[n] for n in names], axis=-1)
    total = var.sum(axis=-1)
    shares = var / total[:, None]
    coords = {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "component": names}
    shape = (n_chain, n_draw, len(names))
    variances = xr.DataArray(var.reshape(shape), dims=("chain", "draw", "component"), coords=coords)
    share_da = xr.DataArray(shares.reshape(shape), dims=("chain", "draw", "component"), coords=coords)
    notes = ["components are averaged over the observed cells; shares are per draw (they sum to 1), "
             "then summarised"]
    if "covariates" in comps:
        notes.append(f"covariates: the variance over the observed cells of the covariates' part x'coef "
                     f"(formula '{design.formula}'), the share of a cell's variance the covariates explain")
    # the intraclass correlations are conditional on the covariates: their variance is not a cell's to share
    icc_total = total - comps["covariates"] if "covariates" in comps else total
    icc_da = None
    if spec.residual in ("independent", "latent"):
        iccs: dict[str, np.ndarray] = {}
        for side in ("row", "col"):
            if getattr(spec, f"{side}_effect") == "random":
                iccs[side] = comps[f"{side}_effect"] / icc_total
        if lay.shape[0] > 1:
            shared = sum(comps[n] for n in ("row_effect", "col_effect", "cell") if n in comps)
            if not np.isscalar(shared):
                iccs["cell"] = shared / icc_total
        if iccs:
            icc_da = xr.DataArray(np.stack(list(iccs.values()), axis=-1).reshape(n_chain, n_draw, len(iccs)),
                                  dims=("chain", "draw", "icc"),
                                  coords={"chain": coords["chain"], "draw": coords["draw"], "icc": list(iccs)})
            notes.append("icc[row]: correlation of two cells of one row in different columns; icc[col] likewise"
                         + ("; icc[cell]: of two replicates of one cell" if "cell" in iccs else "")
                         + ("; given the covariates (their variance left out of the total)"
                            if "covariates" in comps else ""))
    else:
        notes.append(f"no intraclass correlation: the {spec.residual} residual correlates cells by its own structure")
    ds = xr.Dataset({"variance": variances,
                     "total": xr.DataArray(total.reshape(n_chain, n_draw), dims=("chain", "draw")),
                     "share": share_da})
    if icc_da is not None:
        ds["icc"] = icc_da.rename(icc="which")   # a variable may not share its name with a dimension
    table = statistics_table(ds, list(ds.data_vars), ci_prob)
    table.index.name = "quantity"
    return VarianceDecomposition(variances=variances, shares=share_da, icc=icc_da, summary=table, notes=notes)
