"""The exact likelihood paths as objects: when each applies, its log-density, its draw-back.

A path is chosen once per plan (:func:`choose_path`: the first that applies,
fastest first), evaluated against any ops (:func:`marginal_logp`, NumPy,
PyTensor or JAX) and used again after sampling to draw the integrated effects
back from their exact conditional law (:func:`draw_effects`). The pieces the
paths share (the layout, the effects' design, the residual's projections onto
the row and column indicators, the dense covariance) live in
:mod:`twoway.likelihood.marginal`; the algebra of each method in this package's modules.

=====================  ====================================================
path                   applies when
=====================  ====================================================
``sparse``             crossed random effects on a large sparse table (the
                       plan chose it: :mod:`twoway.likelihood.sparse`)
``diagonal``           independent residual, nothing integrated
``anova``              complete table, one residual variance, exchangeable effects
``woodbury-schur``     independent residual, iid random effects on one side
``woodbury``           independent residual otherwise
``woodbury-latent``    latent residual (per-replicate row and column shocks)
``kronecker-ar1``      complete Kronecker table, ar1 rows, no nugget or se
``kronecker-eigen``    complete Kronecker table with a nugget
``kronecker-cholesky`` complete Kronecker table otherwise
``dense-table``        Kronecker with missing cells or se; a full covariance
``dense``              only when asked: one Cholesky of the whole covariance
=====================  ====================================================
"""

from __future__ import annotations

import numpy as np

from twoway.errors import ModelError
from twoway.likelihood.anova import anova_logp
from twoway.likelihood.dense import dense_logp
from twoway.likelihood.kronecker import kronecker_path
from twoway.likelihood.marginal import (
    base_projections,
    dense_covariance,
    effects_map,
    eliminated_block,
    kronecker_factors,
    noise_variance,
    schur_draw,
    schur_logp,
)
from twoway.likelihood.sparse import SparseDesign, sparse_draw, sparse_logp
from twoway.likelihood.woodbury import effects_posterior, gaussian_logp_from, woodbury_logp
from twoway.linalg.ops import NUMPY

__all__ = ["LikelihoodPath", "PATHS", "path_named", "choose_path", "marginal_logp", "draw_effects"]


class LikelihoodPath:
    """The Woodbury form every integrated path shares: projections of the residual, then the effects.

    Subclasses say when they apply and override what they do differently.
    """

    name = ""
    #: evaluated against every ops (NumPy, PyTensor, JAX), so NUTS engines can trace it
    every_ops = True
    #: its draws of the effects' coordinates are the effects themselves (no basis to apply: the
    #: sparse design has none); otherwise each side's coordinates map to effects through ``design.bases``
    identity_basis = False

    def applies(self, spec, lay, design) -> bool:  # pragma: no cover - every path defines it
        raise NotImplementedError

    def log_density(self, ops, spec, lay, design, params):
        """Log-density of the observed cells with the effects integrated out (scalar, or (S,) for NumPy batches)."""

        proj = base_projections(ops, spec, lay, params)
        if design.m == 0:
            return gaussian_logp_from(lay.n_obs, proj.logdet, proj.quad)
        g_inv, logdet_g = design.prior(ops, params)
        return woodbury_logp(ops, proj, effects_map(lay, design), g_inv, logdet_g, lay.n_obs)

    def draw_coordinates(self, spec, lay, design, params, rng, chunk: int) -> np.ndarray:
        """Exact draws (S, m) of the effects' coordinates given S parameter draws (NumPy, in chunks)."""

        S = next(iter(params.values())).shape[0]
        u = np.empty((S, design.m))
        for start in range(0, S, chunk):
            sl = slice(start, min(S, start + chunk))
            sub = {k: v[sl] for k, v in params.items()}
            proj = base_projections(NUMPY, spec, lay, sub)
            g_inv, _ = design.prior(NUMPY, sub)
            u[sl] = effects_posterior(proj, effects_map(lay, design), g_inv, rng, sl.stop - sl.start)
        return u


class Sparse(LikelihoodPath):
    """Crossed random effects through a sparse Cholesky factor of their precision (NumPy/SciPy only).

    The plan chooses it (by size and sparsity, before any dense design is built)
    and then gives it a :class:`~twoway.likelihood.sparse.SparseDesign`.
    """

    name = "sparse"
    every_ops = False   # its dense twin is in tests/test_sparse.py
    identity_basis = True  # random effects only, coordinates in the effects' own order

    def applies(self, spec, lay, design):
        return isinstance(design, SparseDesign)

    def log_density(self, ops, spec, lay, design, params):
        if ops is not NUMPY:
            raise ModelError("The sparse path is evaluated with NumPy/SciPy (CHOLMOD) only; a NUTS engine cannot "
                             "trace it. Use the laplace engine, or resolve with likelihood=\"nuts\".")
        return sparse_logp(spec, lay, design, params)

    def draw_coordinates(self, spec, lay, design, params, rng, chunk):
        return sparse_draw(spec, lay, design, params, rng)


class Diagonal(LikelihoodPath):
    name = "diagonal"

    def applies(self, spec, lay, design):
        return spec.residual == "independent" and design.m == 0


class Anova(LikelihoodPath):
    """Balanced crossed table, one residual variance: five eigenvalues, sums of squares computed once.

    With covariates the coefficients are integrated out through the eigen-spaces'
    Gram matrices of ``[r X]`` (computed once; see :mod:`twoway.likelihood.anova`):
    one p x p Cholesky per evaluation. The draw-back is the shared Woodbury one.
    """

    name = "anova"

    def applies(self, spec, lay, design):
        if spec.residual != "independent" or design.m == 0 or lay.anova is None:
            return False
        if design.n_cov and (lay.anova.gram is None or lay.anova.gram.shape[-1] != design.n_cov):
            return False
        if spec.row_scale == "hetero" or spec.col_scale == "hetero":
            return False
        return all(not (name in ("row_effect", "col_effect")
                        and not np.allclose(design.base_cov[k][start:stop, start:stop], np.eye(stop - start)))
                   for k, (name, _, start, stop) in enumerate(design.blocks))

    def log_density(self, ops, spec, lay, design, params):
        var = noise_variance(ops, spec, lay, params)
        return anova_logp(ops, lay.anova, var[..., 0, 0, 0], **self._variances(spec, design, params))

    @staticmethod
    def _variances(spec, design, params) -> dict:
        """anova_logp's keyword arguments: each block's variance, and the coefficients' fixed prior."""
        kw = {}
        for k, (name, var_param, start, stop) in enumerate(design.blocks):
            if name == "coef":
                kw["coef_prec"] = design.base_prec[k][start:stop, start:stop]
                kw["coef_logdet"] = design.base_logdet[k]
                continue
            sd = params[var_param]
            if name == "intercept":
                kw["grand_var"] = sd * sd
            else:
                side = name.split("_")[0]
                kw[f"{side}_var"] = sd * sd
                if getattr(spec, f"{side}_effect") == "random":
                    kw[f"{side}_mean_var"] = sd * sd
        if spec.cell_effect == "random":
            kw["cell_var"] = params["cell_sd"] * params["cell_sd"]
        return kw


class WoodburySchur(LikelihoodPath):
    """iid random effects on one side eliminated through their diagonal block (Schur complement)."""

    name = "woodbury-schur"

    def applies(self, spec, lay, design):
        return spec.residual == "independent" and design.m > 0 and eliminated_block(spec, lay, design) is not None

    def log_density(self, ops, spec, lay, design, params):
        return schur_logp(ops, spec, lay, design, params)

    def draw_coordinates(self, spec, lay, design, params, rng, chunk):
        S = next(iter(params.values())).shape[0]
        u = np.empty((S, design.m))
        for start in range(0, S, chunk):
            sl = slice(start, min(S, start + chunk))
            u[sl] = schur_draw(spec, lay, design, {k: v[sl] for k, v in params.items()}, rng)
        return u


class Woodbury(LikelihoodPath):
    name = "woodbury"

    def applies(self, spec, lay, design):
        return spec.residual == "independent" and design.m > 0


class WoodburyLatent(LikelihoodPath):
    """Per-replicate row and column shocks: Woodbury inside each replicate, then for the effects."""

    name = "woodbury-latent"

    def applies(self, spec, lay, design):
        return spec.residual == "latent"


class _Kronecker(LikelihoodPath):
    """A complete Kronecker table (the projections come from the factors; see likelihood.kronecker)."""

    def applies(self, spec, lay, design):
        return spec.residual == "kronecker" and kronecker_path(spec, lay) == self.name

    def draw_coordinates(self, spec, lay, design, params, rng, chunk):
        return super().draw_coordinates(spec, lay, design, {**params, **kronecker_factors(spec, lay, params)},
                                        rng, chunk)


class KroneckerAR1(_Kronecker):
    name = "kronecker-ar1"


class KroneckerEigen(_Kronecker):
    name = "kronecker-eigen"


class KroneckerCholesky(_Kronecker):
    name = "kronecker-cholesky"


class DenseTable(LikelihoodPath):
    """One Cholesky per replicate table: a full covariance, or a Kronecker table with gaps or se."""

    name = "dense-table"

    def applies(self, spec, lay, design):
        return spec.residual == "full" or (spec.residual == "kronecker" and kronecker_path(spec, lay) == self.name)

    def draw_coordinates(self, spec, lay, design, params, rng, chunk):
        if spec.residual == "kronecker":
            params = {**params, **kronecker_factors(spec, lay, params)}
        S = next(iter(params.values())).shape[0]
        u = np.empty((S, design.m))
        for s in range(S):  # dense per-table algebra: one draw at a time
            sub = {k: v[s] for k, v in params.items()}
            proj = base_projections(NUMPY, spec, lay, sub)
            g_inv, _ = design.prior(NUMPY, sub)
            u[s] = effects_posterior(proj, effects_map(lay, design), g_inv, rng)
        return u


class Dense(LikelihoodPath):
    """The whole covariance of the observed cells, one Cholesky: the reference every path is tested against."""

    name = "dense"

    def applies(self, spec, lay, design):
        return False  # only when asked for

    def log_density(self, ops, spec, lay, design, params):
        cov = dense_covariance(ops, spec, lay, design, params)
        return dense_logp(ops, ops.asarray(lay.r[lay.obs]), cov, lay.n_obs)

    def draw_coordinates(self, spec, lay, design, params, rng, chunk):
        return path_named(choose_path(spec, lay, design)).draw_coordinates(spec, lay, design, params, rng, chunk)


#: Every path, fastest first: the first that applies is the one used.
PATHS: dict[str, LikelihoodPath] = {p.name: p for p in (
    Sparse(), Diagonal(), Anova(), WoodburySchur(), Woodbury(), WoodburyLatent(),
    KroneckerAR1(), KroneckerEigen(), KroneckerCholesky(), DenseTable(), Dense())}


def path_named(name: str) -> LikelihoodPath:
    return PATHS[name]


def choose_path(spec, lay, design, *, likelihood: str = "auto") -> str:
    """The fastest exact path for ``spec`` on this layout (or ``dense`` when asked)."""
    if likelihood == "dense":
        return "dense"
    for path in PATHS.values():
        if path.applies(spec, lay, design):
            return path.name
    raise ModelError(f"No likelihood path for the {spec.residual!r} residual.")  # pragma: no cover


def marginal_logp(ops, spec, lay, design, params, path: str):
    """Log-density of the observed cells with the effects integrated out, by the path ``path``."""
    return PATHS[path].log_density(ops, spec, lay, design, params)


def draw_effects(spec, lay, design, params, rng: np.random.Generator, chunk: int = 256, *,
                 n_draws: int | None = None) -> dict[str, np.ndarray]:
    """Exact draws of the integrated effects given each posterior draw of the other parameters.

    Parameters
    ----------
    params : dict of str to arrays (S, ...)
        Posterior draws flattened over chains, S of them.
    n_draws : int, optional
        S, needed only when ``params`` is empty (nothing sampled and no constant:
        a model whose only unknowns are the covariates' coefficients, with known se).

    Returns
    -------
    dict with ``intercept`` (S,), ``row_effect`` (S, N), ``col_effect`` (S, K) and ``coef`` (S, p)
    for those integrated.
    """
    if design.m == 0:
        return {}
    if not params:
        if n_draws is None:
            raise ModelError("draw_effects needs n_draws when no parameter has draws.")
        params = {"_draws": np.zeros(int(n_draws))}  # carries S only
    path = path_named(choose_path(spec, lay, design))
    u = path.draw_coordinates(spec, lay, design, params, rng, chunk)
    out = {}
    for name, _, start, stop in design.blocks:
        coords = u[:, start:stop]
        if name == "intercept":
            out["intercept"] = lay.m0 + coords[:, 0]
        elif name == "coef":
            out["coef"] = coords
        else:
            out[name] = coords if path.identity_basis else coords @ design.bases[name.split("_")[0]].T
    return out
