"""The PyMC model of a plan (the ``pymc`` and ``nutpie`` engines sample it).

Only observed cells enter the likelihood, as one flat vector over
(replicate, row, col) in C order, so missing cells are simply absent.
Replicate tables share every parameter. With integrated effects the model
holds only the variance parameters and one potential: the exact marginal
log-density of the plan's likelihood path, written once against the ops
protocol (:mod:`twoway.likelihood.backend`).

Variables whose names start with an underscore are sampling devices
(non-centred offsets); they are left out of the stored posterior.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from twoway.data import TwoWayData
from twoway.likelihood.diagonal import residual_sd
from twoway.plan import MAX_STORED_COV, Plan, anova_vector
from twoway.priors import Prior
from twoway.engines.pymc_priors import pymc_distribution, pymc_variable
from twoway.engines.pymc_structures import build_structure

__all__ = ["BuiltModel", "build_pymc_model", "data_updates"]


@dataclass(frozen=True)
class BuiltModel:
    """A PyMC model with the plan it was built from.

    Attributes
    ----------
    model : pymc.Model
    plan : Plan
    """

    model: object
    plan: Plan

    @property
    def likelihood_path(self) -> str:
        return self.plan.path

    @property
    def layout(self):
        return self.plan.layout

    @property
    def design(self):
        return self.plan.design

    @property
    def constants(self) -> dict:
        return self.plan.constants

    @property
    def priors(self) -> dict:
        return self.plan.priors

    @property
    def integrated(self) -> bool:
        return self.plan.integrated


def data_updates(plan: Plan, data: TwoWayData) -> dict[str, np.ndarray]:
    """Values of the PyMC model's data containers for another table of the plan's layout."""
    if not plan.integrated:
        return {"y_observed": data.observed_values()}
    lay = plan.with_data(data).layout
    if plan.path == "anova":
        return {"anova_ss": anova_vector(lay.anova)}
    return {"residual_grid": lay.r}


def _mean_structure(spec, priors: dict[str, Prior], data: TwoWayData, ii, jj):
    """Build intercept and effects (inside a model context); return the mean of each observed cell.

    With an intercept next to random effects, the sampler works on the grand
    mean ``m = intercept + mean(row_effect) + mean(col_effect)`` instead of the
    intercept: the likelihood then sees only ``m`` and the centred effects, and
    the direction in which the intercept trades against the mean of the effects
    is left to the priors alone. This is a change of variables with unit
    Jacobian (the intercept's prior is kept as a potential), so the posterior
    is exactly the same; only the geometry the sampler meets is better.
    """
    import pymc as pm

    effects = {}
    centred = {}
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "random":
            sd = pymc_variable(priors[f"{side}_effect_sd"], f"{side}_effect_sd")
            z = pm.Normal(f"_{side}_effect_z", 0.0, 1.0, dims=side)
            effects[side] = pm.Deterministic(f"{side}_effect", sd * z, dims=side)
            centred[side] = sd * (z - z.mean())
        elif kind == "fixed":
            p = priors[f"{side}_effect"]
            effects[side] = centred[side] = pm.ZeroSumNormal(f"{side}_effect", sigma=p.kwargs["sigma"], dims=side)
    random_sides = [side for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)) if kind == "random"]
    if spec.intercept and random_sides:
        grand = pm.Flat("_grand_mean", initval=data.location())
        intercept = grand - sum(effects[side].mean() for side in random_sides)
        intercept = pm.Deterministic("intercept", intercept)
        pm.Potential("_intercept_prior", pm.logp(pymc_distribution(priors["intercept"]), intercept))
        mu = grand
    else:
        mu = pymc_variable(priors["intercept"], "intercept") if spec.intercept else 0.0
        centred = effects
    if "row" in centred:
        mu = mu + centred["row"][ii]
    if "col" in centred:
        mu = mu + centred["col"][jj]
    return mu


def build_pymc_model(plan: Plan) -> BuiltModel:
    """The PyMC model of ``plan``.

    Returns
    -------
    BuiltModel
    """
    import pymc as pm

    spec, data, priors = plan.spec, plan.data, plan.priors
    if plan.integrated:
        return BuiltModel(model=_integrated_model(plan), plan=plan)
    rr, ii, jj = data.observed_index()
    y = data.observed_values()
    se = data.se_or_zero()[rr, ii, jj]
    coords = {
        "row": list(data.row_labels),
        "col": list(data.col_labels),
        "cell": np.arange(y.size),
    }
    with pm.Model(coords=coords) as model:
        y_data = pm.Data("y_observed", y, dims="cell")
        mu = _mean_structure(spec, priors, data, ii, jj)
        scales = {}
        for side, kind, idx in (("row", spec.row_scale, ii), ("col", spec.col_scale, jj)):
            if kind == "homo":
                scales[side] = pymc_variable(priors[f"{side}_sd"], f"{side}_sd")
            elif kind == "hetero":
                loc = pymc_variable(priors[f"{side}_log_sd_loc"], f"{side}_log_sd_loc")
                scale = pymc_variable(priors[f"{side}_log_sd_scale"], f"{side}_log_sd_scale")
                z = pm.Normal(f"_{side}_sd_z", 0.0, 1.0, dims=side)
                per_level = pm.Deterministic(f"{side}_sd", pm.math.exp(loc + scale * z), dims=side)
                scales[side] = per_level[idx]
            else:
                scales[side] = None
        sigma = pymc_variable(priors["sigma"], "sigma") if spec.sigma else None
        sd = residual_sd(se, scales["row"], scales["col"], sigma, combine=spec.combine)
        if plan.path == "diagonal":
            pm.Normal("y", mu=mu, sigma=sd, observed=y_data, dims="cell")
        else:
            import pytensor.tensor as pt

            cov = pt.diag(pt.broadcast_to(sd, (y.size,)) ** 2)
            pm.MvNormal("y", mu=pt.broadcast_to(mu, (y.size,)), cov=cov, observed=y_data, dims="cell")
    return BuiltModel(model=model, plan=plan)


def _scale_parameters(spec, priors: dict[str, Prior]) -> dict:
    """Residual scales (inside a model context): homogeneous, or hierarchical log-normal per level."""
    import pymc as pm

    out = {}
    for side, kind in (("row", spec.row_scale), ("col", spec.col_scale)):
        if kind == "homo":
            out[f"{side}_sd"] = pymc_variable(priors[f"{side}_sd"], f"{side}_sd")
        elif kind == "hetero":
            loc = pymc_variable(priors[f"{side}_log_sd_loc"], f"{side}_log_sd_loc")
            scale = pymc_variable(priors[f"{side}_log_sd_scale"], f"{side}_log_sd_scale")
            z = pm.Normal(f"_{side}_sd_z", 0.0, 1.0, dims=side)
            out[f"{side}_sd"] = pm.Deterministic(f"{side}_sd", pm.math.exp(loc + scale * z), dims=side)
    if spec.sigma:
        out["sigma"] = pymc_variable(priors["sigma"], "sigma")
    return out


def _integrated_model(plan: Plan):
    """Effects integrated out; the sampler sees only variance parameters."""
    import pymc as pm

    from twoway.likelihood.backend import PYTENSOR
    from twoway.likelihood.paths import marginal_logp

    spec, data, priors, lay = plan.spec, plan.data, plan.priors, plan.layout
    coords = {"row": list(data.row_labels), "col": list(data.col_labels)}
    with pm.Model(coords=coords) as model:
        sym = lay
        if plan.path != "anova":
            sym = dataclasses.replace(lay, r=pm.Data("residual_grid", lay.r))
        else:
            ss = pm.Data("anova_ss", anova_vector(lay.anova))
            sym = dataclasses.replace(sym, anova=dataclasses.replace(
                lay.anova, ss_grand=ss[0], ss_row=ss[1], ss_col=ss[2], ss_inter=ss[3], ss_within=ss[4]))
        params = dict(plan.constants)
        for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
            if kind == "random":
                params[f"{side}_effect_sd"] = pymc_variable(priors[f"{side}_effect_sd"], f"{side}_effect_sd")
        params.update(_scale_parameters(spec, priors))
        if spec.cell_effect == "random":
            params["cell_sd"] = pymc_variable(priors["cell_sd"], "cell_sd")
        if spec.residual == "full":
            for name in plan.parts["full"].parameters:
                params[name] = pymc_variable(priors[name], name)
        if spec.residual == "kronecker":
            for side, unit in (("row", False), ("col", True)):
                st = plan.parts[side]
                built_st = build_structure(st, plan.structure_priors(side), unit_scale=unit)
                params.update(built_st.params)
                params[f"_{side}_cov"] = built_st.cov
                if st.n <= MAX_STORED_COV:
                    other = f"{side}_other"
                    if other not in model.coords:
                        model.add_coord(other, list(st.labels))
                    pm.Deterministic(f"{side}_cov", built_st.cov, dims=(side, other))
        pm.Potential("_loglik", marginal_logp(PYTENSOR, spec, sym, plan.design, params, plan.path))
    return model
