"""The model, written once: one walk over a plan, against a small builder interface.

Every term of a plan's model appears here once: the intercept, the effects,
the residual scales, the cell effect, a full covariance's parameters, the
Kronecker structures, and the likelihood. An engine supplies a *builder*
(:class:`Builder`) that says what a parameter, a prior, a potential or the
table's numbers are in its own terms, and :func:`walk` calls it term by term:

=====================  ==========================================  ==========================================
builder                a parameter is                              the log-density is
=====================  ==========================================  ==========================================
JAX                    a site on the real line (theta), with its   a traced sum, the table an argument
                       prior's bijection and log-Jacobian          (:mod:`twoway.engines.jax.model`)
PyMC                   a PyMC random variable                      the model's (:mod:`twoway.engines.pymc.model`)
NumPy prior draws      a draw from its prior                       the log-likelihood at the draw
                                                                   (:mod:`twoway.engines.startup`)
=====================  ==========================================  ==========================================

Integrated effects (``plan.integrated``): the sampler sees only the variance
parameters, and one potential ``_loglik`` holds the exact marginal
log-density of the plan's likelihood path,
:func:`twoway.likelihood.paths.marginal_logp`, against the builder's ops.
Sampled effects: non-centred random effects, zero-sum fixed effects, the grand
mean in place of the intercept (see :func:`_sampled`), the covariates'
coefficients ``coef = coef_sd * z`` (z standard normal, dim ``term``) and the
diagonal likelihood of the observed cells. With integrated effects the
covariates' coefficients are integrated out with them (the plan's design
carries them), so nothing of them appears here.

Names starting with an underscore are sampling devices (non-centred offsets,
raw values behind a deterministic); the others are the posterior's public
names, with the dims given here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from twoway.likelihood.diagonal import residual_sd
from twoway.likelihood.paths import marginal_logp
from twoway.linalg.structured import ar1_matrix, cs_matrix, fa_identify, fa_matrix
from twoway.plan import MAX_STORED_COV, Plan, anova_vector

__all__ = ["Builder", "walk", "coords", "tables"]

# the integration constants of a plan (Plan.constants) are numbers of these priors
_CONSTANTS = {"intercept_sd": ("intercept", "sigma"), "row_fixed_sd": ("row_effect", "sigma"),
              "col_fixed_sd": ("col_effect", "sigma")}


class Builder(Protocol):
    """What :func:`walk` asks of an engine.

    Shapes are tuples of ints; ``dims`` name the axes of a value with public
    dims (``()`` for a scalar, or for a device kept without dims).

    Attributes
    ----------
    ops
        The array operations of the builder's values
        (:data:`twoway.linalg.ops.NUMPY`, ``PYTENSOR`` or ``JAX``).
    """

    ops: Any

    def prior(self, name: str, shape: tuple = (), dims: tuple = (), *, prior_name: str | None = None) -> Any:
        """A parameter of shape ``shape`` with the plan's prior ``prior_name`` (default ``name``), elementwise."""

    def std_normal(self, name: str, shape: tuple, dims: tuple = ()) -> Any:
        """A device of shape ``shape``, each element ``normal(0, 1)``."""

    def half_normal(self, name: str, shape: tuple, sigma: float) -> Any:
        """A device of shape ``shape``, each element ``halfnormal(sigma)``."""

    def zero_sum(self, name: str, n: int, sigma: Any, dims: tuple = ()) -> Any:
        """A vector (n,) ``normal(0, sigma^2 I)`` constrained to sum to zero (n - 1 free directions)."""

    def flat(self, name: str) -> Any:
        """A scalar with a flat prior, on the scale of the data (its location and spread)."""

    def lkj_cholesky(self, name: str, n: int, eta: float) -> Any:
        """The lower Cholesky factor (n, n) of an LKJ(eta) correlation matrix."""

    def deterministic(self, name: str, value: Any, dims: tuple = ()) -> Any:
        """``value`` kept under ``name`` (a public value unless the name starts with ``_``); returns it."""

    def potential(self, name: str, value: Any) -> None:
        """Add the scalar ``value`` to the log-density."""

    def prior_logp(self, name: str, value: Any) -> Any:
        """The plan's prior ``name``'s log-density at ``value``, summed (a scalar)."""

    def prior_number(self, name: str, key: str) -> Any:
        """The number ``key`` of the plan's prior ``name`` (JAX: a traced argument; PyMC: a constant)."""

    def table(self, name: str) -> Any:
        """The table's numbers ``name`` (a key of :func:`tables`): a data container or an argument."""

    def observe_normal(self, mu: Any, sd: Any) -> None:
        """The observed values, (C,) in C order over (replicate, row, col), independent ``normal(mu, sd)``."""


def coords(plan: Plan) -> dict[str, list]:
    """The coordinates of every dim the walk may use: ``row``, ``col``, ``term`` (the covariates'
    terms, with covariates) and the structures' dims."""
    d = plan.data
    out = {"row": list(d.row_labels), "col": list(d.col_labels)}
    if plan.covariates is not None:
        out["term"] = list(plan.covariates.terms)
    for side in ("row", "col"):
        st = plan.parts.get(side)
        if st is not None:
            out.update(st.coords())
            out[f"{side}_other"] = list(st.labels)
    return out


def tables(plan: Plan) -> dict[str, np.ndarray]:
    """The numbers the walk reads from ``plan``'s table, by name.

    Returns
    -------
    dict of str to numpy.ndarray
        ``anova_ss`` (5,) on the ``anova`` path (with covariates also ``anova_cross``
        (5, p), the residual against the covariates in each eigen-space; their Gram
        matrices depend on the covariates alone and stay constants of the layout),
        ``residual_grid`` (R, N, K) on the other integrated paths, ``y_observed`` (C,)
        with sampled effects, and with covariates ``covariate_design`` (C, p), the
        design's rows in the same order as ``y_observed`` (C order over (replicate, row, col)).
    """
    if not plan.integrated:
        out = {"y_observed": np.asarray(plan.data.observed_values(), dtype=float)}
        if plan.covariates is not None:
            out["covariate_design"] = np.asarray(plan.covariates.X, dtype=float)
        return out
    if plan.path == "anova":
        out = {"anova_ss": anova_vector(plan.layout.anova)}
        if plan.covariates is not None and plan.layout.anova.cross is not None:
            out["anova_cross"] = np.asarray(plan.layout.anova.cross, dtype=float)
        return out
    return {"residual_grid": np.asarray(plan.layout.r, dtype=float)}


def walk(b: Builder, plan: Plan) -> None:
    """Build ``plan``'s model with the builder ``b``: every parameter, deterministic and potential."""
    if plan.integrated:
        _integrated(b, plan)
    else:
        _sampled(b, plan)


def _scales(b: Builder, plan: Plan) -> dict[str, Any]:
    """Residual scales: homogeneous, or hierarchical log-normal per level (``{side}_sd`` (n,)); and sigma."""
    spec, data = plan.spec, plan.data
    out = {}
    for side, kind, n in (("row", spec.row_scale, data.n_rows), ("col", spec.col_scale, data.n_cols)):
        if kind == "homo":
            out[f"{side}_sd"] = b.prior(f"{side}_sd")
        elif kind == "hetero":
            loc = b.prior(f"{side}_log_sd_loc")
            scale = b.prior(f"{side}_log_sd_scale")
            z = b.std_normal(f"_{side}_sd_z", (n,), (side,))
            out[f"{side}_sd"] = b.deterministic(f"{side}_sd", b.ops.exp(loc + scale * z), (side,))
    if spec.sigma:
        out["sigma"] = b.prior("sigma")
    return out


def _integrated(b: Builder, plan: Plan) -> None:
    """Effects integrated out: variance parameters, then the exact marginal log-likelihood as a potential."""
    spec = plan.spec
    params: dict[str, Any] = {k: b.prior_number(*_CONSTANTS[k]) for k in plan.constants}
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "random":
            params[f"{side}_effect_sd"] = b.prior(f"{side}_effect_sd")
    params.update(_scales(b, plan))
    if spec.cell_effect == "random":
        params["cell_sd"] = b.prior("cell_sd")
    if spec.residual == "full":
        for name in plan.parts["full"].parameters:
            params[name] = b.prior(name)
    if spec.residual == "kronecker":
        # the column factor has unit scale: the row factor carries the Kronecker product's one scale
        for side, unit in (("row", False), ("col", True)):
            st = plan.parts[side]
            cov, st_params = _structure(b, st, unit)
            params.update(st_params)
            params[f"_{side}_cov"] = cov
            if st.n <= MAX_STORED_COV:
                b.deterministic(f"{side}_cov", cov, (side, f"{side}_other"))
    lay = plan.layout
    if plan.path == "anova":
        ss = b.table("anova_ss")
        extra = {}
        if plan.covariates is not None and lay.anova.cross is not None:
            extra["cross"] = b.table("anova_cross")  # the Gram matrices (X alone) stay constants
        lay = dataclasses.replace(lay, anova=dataclasses.replace(
            lay.anova, ss_grand=ss[0], ss_row=ss[1], ss_col=ss[2], ss_inter=ss[3], ss_within=ss[4], **extra))
    else:
        lay = dataclasses.replace(lay, r=b.table("residual_grid"))
    b.potential("_loglik", marginal_logp(b.ops, spec, lay, plan.design, params, plan.path))


def _sampled(b: Builder, plan: Plan) -> None:
    """Effects sampled (non-centred), independent residual: the diagonal likelihood of the observed cells.

    With an intercept next to random effects, the sampler works on the grand
    mean ``m = intercept + mean(row_effect) + mean(col_effect)`` instead of the
    intercept: the likelihood then sees only ``m`` and the centred effects, and
    the direction in which the intercept trades against the mean of the effects
    is left to the priors alone. This is a change of variables with unit
    Jacobian (the intercept's prior is kept as a potential), so the posterior
    is exactly the same; only the geometry the sampler meets is better.

    Covariates (``plan.covariates``, design X (C, p)): ``coef = coef_sd * z``, with
    ``coef_sd = sigma / scale`` (the ``coef`` prior's sigma per one sd of each term,
    a number of the prior: an argument of a compiled JAX program) and z standard
    normal, adds ``X @ coef`` to the mean. Next to the grand mean the design enters
    centred, ``(X - xbar) @ coef`` with ``xbar`` its mean over the observed cells, and
    the intercept is ``grand - mean(effects) - xbar @ coef``: the same change of
    variables, so the grand mean does not trade against the coefficients either.
    """
    spec, data, ops = plan.spec, plan.data, b.ops
    rr, ii, jj = data.observed_index()
    se = data.se_or_zero()[rr, ii, jj]
    effects, centred = {}, {}
    for side, kind, n in (("row", spec.row_effect, data.n_rows), ("col", spec.col_effect, data.n_cols)):
        if kind == "random":
            sd = b.prior(f"{side}_effect_sd")
            z = b.std_normal(f"_{side}_effect_z", (n,), (side,))
            effects[side] = b.deterministic(f"{side}_effect", sd * z, (side,))
            centred[side] = sd * (z - ops.mean(z))
        elif kind == "fixed":
            sigma = b.prior_number(f"{side}_effect", "sigma")
            effects[side] = centred[side] = b.zero_sum(f"{side}_effect", n, sigma, (side,))
    random_sides = [s for s, k in (("row", spec.row_effect), ("col", spec.col_effect)) if k == "random"]
    cov = plan.covariates
    if cov is not None:
        X = b.table("covariate_design")
        z = b.std_normal("_coef_z", (len(cov.terms),), ("term",))
        per_sd = ops.asarray(1.0 / np.asarray(cov.scale, dtype=float))  # coef_sd = sigma / scale
        coef = b.deterministic("coef", b.prior_number("coef", "sigma") * (z * per_sd), ("term",))
    if spec.intercept and random_sides:
        grand = b.flat("_grand_mean")
        intercept = grand - sum(ops.mean(effects[s]) for s in random_sides)
        mu = grand
        if cov is not None:
            shift = ops.sum(ops.asarray(np.mean(np.asarray(cov.X, dtype=float), axis=0)) * coef)
            intercept = intercept - shift
            mu = mu + X @ coef - shift
        intercept = b.deterministic("intercept", intercept)
        b.potential("_intercept_prior", b.prior_logp("intercept", intercept))
    else:
        mu = b.prior("intercept") if spec.intercept else 0.0
        centred = effects
        if cov is not None:
            mu = mu + X @ coef
    if "row" in centred:
        mu = mu + centred["row"][ii]
    if "col" in centred:
        mu = mu + centred["col"][jj]
    sc = _scales(b, plan)
    row, col = sc.get("row_sd"), sc.get("col_sd")
    if row is not None and spec.row_scale == "hetero":
        row = row[ii]
    if col is not None and spec.col_scale == "hetero":
        col = col[jj]
    b.observe_normal(mu, residual_sd(se, row, col, sc.get("sigma"), combine=spec.combine))


def _structure(b: Builder, st, unit: bool) -> tuple[Any, dict[str, Any]]:
    """A Kronecker factor and its public parameters (:class:`twoway.spec.structures.Structure`).

    Parameters
    ----------
    st : Structure
        The side's structure, n levels.
    unit : bool
        Build the factor with mean diagonal 1 (the column factor).

    Returns
    -------
    cov : array, shape (n, n)
    params : dict of str to array
        The public parameters, named and shaped as :meth:`Structure.parameter_dims` says.
    """
    ops, side, n, nm, kind = b.ops, st.side, st.n, st._name, st.kind
    params: dict[str, Any] = {}

    def scalar_sd2():
        if unit:
            return ops.asarray(1.0)
        sd = b.prior(nm("sd"))
        params[nm("sd")] = sd
        return sd * sd

    def unit_sd():
        # sd_i^2 = n softmax(2 w)_i, w the zero-sum centred log sds: mean sd^2 is exactly 1
        sigma = b.prior_number(nm("log_sd_centred"), "sigma")
        w = b.zero_sum(f"_{nm('log_sd_centred')}", n, sigma, (side,))
        return b.deterministic(nm("sd"), ops.sqrt(n * ops.softmax(2.0 * w)), (side,))

    if kind in ("iid", "known"):
        sd2 = scalar_sd2()
        base = np.eye(n) if kind == "iid" else st._known_unit() if unit else st.known
        cov = sd2 * ops.asarray(base)
    elif kind == "diag":
        sd = unit_sd() if unit else b.prior(nm("sd"), (n,), (side,))
        params[nm("sd")] = sd
        cov = ops.diag(sd * sd)
    elif kind in ("ar1", "cs"):
        rho = b.prior(nm("rho"))
        params[nm("rho")] = rho
        sd2 = scalar_sd2()
        cov = ar1_matrix(rho, sd2, n) if kind == "ar1" else cs_matrix(rho, sd2, n)
    elif kind == "fa":
        # hierarchical scales; raw loadings without constraint (their law and lam lam' are unchanged by
        # rotations), reported in the identified form; see twoway.spec.structures
        hide = "_" if unit else ""
        tau_l = b.prior(f"{hide}{nm('loadings_scale')}", prior_name=nm("loadings_scale"))
        tau_p = 1.0 if unit else b.prior(nm("psi_scale"))
        lam = tau_l * b.std_normal(f"_{nm('loadings')}_z", (n, st.k))
        psi = tau_p * b.half_normal(f"_{nm('psi')}_z", (n,), 1.0)
        if unit:
            m = (ops.sum(lam * lam) + ops.sum(psi)) / n
            lam, psi = lam / ops.sqrt(m), psi / m
        psi = b.deterministic(nm("psi"), psi, (side,))
        loadings = b.deterministic(nm("loadings"), fa_identify(lam), (side, f"{side}_factor"))
        params.update({nm("loadings"): loadings, nm("psi"): psi})
        if not unit:
            params.update({nm("loadings_scale"): tau_l, nm("psi_scale"): tau_p})
        cov = fa_matrix(lam, psi)  # lam lam' = loadings loadings': the likelihood skips the rotation
    else:  # unstructured
        L = b.lkj_cholesky(f"_{nm('corr')}_chol", n, st.eta)
        corr = b.deterministic(nm("corr"), L @ L.T, (side, f"{side}_other"))
        sd = unit_sd() if unit else b.prior(nm("sd"), (n,), (side,))
        params = {nm("corr"): corr, nm("sd"): sd}
        cov = sd[:, None] * corr * sd[None, :]
    return cov, params
