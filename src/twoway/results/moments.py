"""Predictive moments of the observed cells, one posterior draw at a time.

Checks (predictive tables, leave-one-out, comparison) need, for each
posterior draw, the Gaussian law of the observed cells: a mean vector and a
covariance. :func:`iter_moments` gives them for any fitted model, in the
order of :meth:`TwoWayData.observed_index` (replicate, row, col; C order).

``conditional=True`` conditions on the drawn row and column effects and
covariate coefficients (the residual law only); ``conditional=False`` integrates
the random effects out (the marginal law the likelihood of an integrated model
uses; there the covariates' coefficients, integrated out with the effects, are
integrated out too). The mean includes the covariates' part ``X @ coef`` of
every draw where the coefficients are conditioned on. For models
whose cells are independent given the parameters the covariance is diagonal
and ``cov`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from twoway.likelihood.diagonal import residual_sd
from twoway.likelihood.marginal import dense_covariance, point_parameters
from twoway.linalg.ops import NUMPY
from twoway.results.covariates import coef_draws, fit_design

__all__ = ["DrawMoments", "iter_moments", "draw_indices"]


@dataclass(frozen=True)
class DrawMoments:
    """The law of the observed cells under one posterior draw.

    Attributes
    ----------
    chain, draw : int
        Which posterior draw.
    mean : array (n_obs,)
    var : array (n_obs,)
        Diagonal of the covariance.
    cov : array (n_obs, n_obs) or None
        The full covariance, None when it is diagonal.
    """

    chain: int
    draw: int
    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray | None = None

    def dense_cov(self) -> np.ndarray:
        """The covariance as a dense (n_obs, n_obs) matrix."""
        return np.diag(self.var) if self.cov is None else self.cov

    def sample(self, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Draw ``size`` replicated vectors of observed cells; shape (size, n_obs)."""
        if self.cov is None:
            return self.mean + np.sqrt(self.var) * rng.standard_normal((size, self.mean.size))
        chol = np.linalg.cholesky(self.cov)
        return self.mean + rng.standard_normal((size, self.mean.size)) @ chol.T


def draw_indices(fit, max_draws: int | None = None, *, seed: int | None = 0) -> list[tuple[int, int]]:
    """(chain, draw) pairs: all of them, or ``max_draws`` chosen at random without replacement."""
    post = fit.posterior
    pairs = [(c, d) for c in range(post.sizes["chain"]) for d in range(post.sizes["draw"])]
    if max_draws is None or max_draws >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(pairs), size=max_draws, replace=False))
    return [pairs[k] for k in pick]


def iter_moments(fit, draws: list[tuple[int, int]] | None = None, *,
                 conditional: bool = True) -> Iterator[DrawMoments]:
    """Yield the moments of the observed cells for each (chain, draw) in ``draws`` (default: all)."""
    spec = fit.model
    if spec.effects == "integrate":
        yield from _integrated_moments(fit, draws, conditional=conditional)
        return
    data = fit.data
    rr, ii, jj = data.observed_index()
    se = data.se_or_zero()[rr, ii, jj]
    post = fit.posterior
    draws = draw_indices(fit) if draws is None else draws

    def get(name):
        return post[name].values if name in post else None

    intercept, row_eff, col_eff = get("intercept"), get("row_effect"), get("col_effect")
    row_sd, col_sd, sigma = get("row_sd"), get("col_sd"), get("sigma")
    row_esd, col_esd = get("row_effect_sd"), get("col_effect_sd")
    X, coef = _covariates(fit)
    for c, d in draws:
        mean = np.zeros(ii.size) if intercept is None else np.full(ii.size, intercept[c, d])
        if X is not None:   # sampled coefficients: a parameter of the draw, conditional or not
            mean = mean + X @ coef[c, d]
        random_terms = []
        if row_eff is not None:
            if conditional or spec.row_effect != "random":
                mean = mean + row_eff[c, d][ii]
            else:
                random_terms.append((ii, row_esd[c, d]))
        if col_eff is not None:
            if conditional or spec.col_effect != "random":
                mean = mean + col_eff[c, d][jj]
            else:
                random_terms.append((jj, col_esd[c, d]))
        rs = None if row_sd is None else (row_sd[c, d][ii] if row_sd.ndim == 3 else row_sd[c, d])
        cs = None if col_sd is None else (col_sd[c, d][jj] if col_sd.ndim == 3 else col_sd[c, d])
        sg = None if sigma is None else sigma[c, d]
        var = np.broadcast_to(residual_sd(se, rs, cs, sg, combine=spec.combine) ** 2, ii.shape).astype(float)
        cov = None
        if random_terms:
            cov = np.diag(var)
            for idx, tau in random_terms:
                cov = cov + tau**2 * (idx[:, None] == idx[None, :])
            var = np.diag(cov).copy()
        yield DrawMoments(chain=c, draw=d, mean=mean, var=var, cov=cov)


def _covariates(fit) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The covariate design's X (n_obs, p) and the coefficients' draws (chains, draws, p); (None, None) without."""
    design = fit_design(fit)
    coef = None if design is None else coef_draws(fit, design)
    if coef is None:
        return None, None
    return np.asarray(design.X, dtype=float), coef


def _integrated_moments(fit, draws, *, conditional: bool) -> Iterator[DrawMoments]:
    """Moments for models whose effects were integrated out (any residual)."""

    spec = fit.model
    plan = fit.plan
    # the covariance of the observed cells is dense: a sparse design is asked for its dense twin
    lay, design, constants, m0 = plan.layout, plan.design.dense(), plan.constants, plan.m0
    if conditional:
        design = design.without_effects()
    rr, ii, jj = lay.obs
    post = fit.posterior
    draws = draw_indices(fit) if draws is None else draws
    X, coef = _covariates(fit) if conditional else (None, None)
    for c, d in draws:
        params = point_parameters(spec, lay, post, c, d, constants)
        cov = dense_covariance(NUMPY, spec, lay, design, params)
        if conditional:
            mean = np.full(ii.size, float(params.get("intercept", 0.0)))
            if "row_effect" in params:
                mean = mean + params["row_effect"][ii]
            if "col_effect" in params:
                mean = mean + params["col_effect"][jj]
            if X is not None:   # the coefficients drawn back with the effects
                mean = mean + X @ coef[c, d]
        else:
            mean = np.full(ii.size, m0)
        # a random cell effect (integrated out) ties the replicates of a cell together even given the effects
        diagonal = spec.residual == "independent" and conditional and getattr(spec, "cell_effect", "none") == "none"
        yield DrawMoments(chain=c, draw=d, mean=mean, var=np.diag(cov).copy(),
                          cov=None if diagonal else cov)
