"""Build the PyMC model of a spec on a table.

The model describes (:mod:`twoway.model`); this module builds. Only observed
cells enter the likelihood, as one flat vector over (replicate, row, col) in C
order, so missing cells are simply absent. Replicate tables share every
parameter.

Variables whose names start with an underscore are sampling devices
(non-centred offsets); they are left out of the stored posterior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twoway.data import TwoWayData
from twoway.errors import ModelError
from twoway.likelihood.diagonal import cell_sd
from twoway.model import ModelSpec
from twoway.priors import Prior, resolve_priors

__all__ = ["BuiltModel", "LIKELIHOOD_PATHS", "build_pymc_model", "model_priors", "public_names"]


@dataclass(frozen=True)
class BuiltModel:
    """A PyMC model with what is needed to read its draws.

    Attributes
    ----------
    model : pymc.Model
    priors : dict of str to Prior
        The priors in force (defaults scaled to the data, then overrides).
    var_names : list of str
        The variables stored in the posterior.
    likelihood_path : str
        The exact method that evaluates the likelihood.
    layout : Layout or None
        The data laid out for the integrated paths (None when effects are sampled).
    design : EffectsDesign or None
        The integrated effects (None when effects are sampled).
    constants : dict
        Fixed scales of the integrated effects (the intercept's and fixed
        effects' prior sds), by parameter name.
    """

    model: object
    priors: dict[str, Prior]
    var_names: list[str]
    likelihood_path: str
    layout: object = None
    design: object = None
    constants: dict = None
    layout_labels: tuple = ((), ())

    @property
    def integrated(self) -> bool:
        return self.design is not None

    def data_updates(self, data: TwoWayData) -> dict[str, np.ndarray]:
        """Values of the model's data containers for another table of the same layout."""
        if not self.integrated:
            return {"y_observed": data.observed_values()}
        from twoway.marginal import layout

        lay = layout(data, self.layout.m0, self.layout.parts)
        if self.likelihood_path == "anova":
            return {"anova_ss": _anova_vector(lay.anova)}
        return {"residual_grid": lay.r}

    def for_data(self, data: TwoWayData) -> "BuiltModel":
        """The same model read against another table of the same layout (for drawing effects back)."""
        if not self.integrated:
            return self
        import dataclasses

        from twoway.marginal import layout

        return dataclasses.replace(self, layout=layout(data, self.layout.m0, self.layout.parts))


def _anova_vector(stats) -> np.ndarray:
    return np.array([stats.ss_grand, stats.ss_row, stats.ss_col, stats.ss_inter, stats.ss_within])


def model_priors(spec: ModelSpec, data: TwoWayData) -> dict[str, Prior]:
    """The priors ``spec`` uses on ``data``: defaults scaled to the data, then the spec's overrides."""
    return resolve_priors(spec.parameter_names(), data.location(), data.spread(), spec.model_prior_overrides)


def all_priors(spec: ModelSpec, data: TwoWayData) -> dict[str, Prior]:
    """Every prior in force on ``data``: the model's, plus its Kronecker structures' parameters."""
    priors = model_priors(spec, data)
    if spec.residual == "kronecker":
        parts = residual_parts(spec, data.row_labels, data.col_labels)
        for side, unit in (("row", False), ("col", True)):
            st = parts[side]
            defaults = st.default_priors(data.spread(), unit_scale=unit)
            chosen = {k: spec.prior_overrides.get(k, v) for k, v in defaults.items()}
            priors.update(st.check_priors(chosen, unit_scale=unit))
    return priors


def public_names(spec: ModelSpec) -> list[str]:
    """Names of the parameters a user sees in the posterior, main ones first."""
    out: list[str] = []
    if spec.intercept:
        out.append("intercept")
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind != "none":
            out.append(f"{side}_effect")
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "random":
            out.append(f"{side}_effect_sd")
    for side, kind in (("row", spec.row_scale), ("col", spec.col_scale)):
        if kind != "none":
            out.append(f"{side}_sd")
    if spec.sigma:
        out.append("sigma")
    for side, kind in (("row", spec.row_scale), ("col", spec.col_scale)):
        if kind == "hetero":
            out += [f"{side}_log_sd_loc", f"{side}_log_sd_scale"]
    return out


LIKELIHOOD_PATHS = ("auto", "dense")


def _mean_structure(spec: ModelSpec, priors: dict[str, Prior], data: TwoWayData, ii, jj):
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
            sd = priors[f"{side}_effect_sd"].pymc(f"{side}_effect_sd")
            z = pm.Normal(f"_{side}_effect_z", 0.0, 1.0, dims=side)
            effects[side] = pm.Deterministic(f"{side}_effect", sd * z, dims=side)
            centred[side] = sd * (z - z.mean())
        elif kind == "fixed":
            p = priors[f"{side}_effect"]
            if p.dist != "normal" or p.kwargs["mu"] != 0.0:
                raise ModelError(
                    f"The prior for fixed '{side}_effect' must be normal with mu = 0 "
                    f"(the effects sum to zero); got {p}."
                )
            effects[side] = centred[side] = pm.ZeroSumNormal(f"{side}_effect", sigma=p.kwargs["sigma"], dims=side)
    random_sides = [side for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)) if kind == "random"]
    if spec.intercept and random_sides:
        grand = pm.Flat("_grand_mean", initval=data.location())
        intercept = grand - sum(effects[side].mean() for side in random_sides)
        intercept = pm.Deterministic("intercept", intercept)
        pm.Potential("_intercept_prior", pm.logp(priors["intercept"].pymc_dist(), intercept))
        mu = grand
    else:
        mu = priors["intercept"].pymc("intercept") if spec.intercept else 0.0
        centred = effects
    if "row" in centred:
        mu = mu + centred["row"][ii]
    if "col" in centred:
        mu = mu + centred["col"][jj]
    return mu


def build_pymc_model(spec: ModelSpec, data: TwoWayData, *, likelihood: str = "auto") -> BuiltModel:
    """The PyMC model of ``spec`` for ``data``.

    Parameters
    ----------
    spec : ModelSpec
    data : TwoWayData
        Values (R, N, K); only observed cells enter the likelihood.
    likelihood : {"auto", "dense"}
        How the Gaussian likelihood is evaluated: ``auto`` picks the fastest
        exact method; ``dense`` builds the full covariance of the observed
        cells and factors it (the slow reference every fast path is tested against).

    Returns
    -------
    BuiltModel
    """
    import pymc as pm

    if spec.needs_se() and not data.has_se:
        raise ModelError(
            "The model has no unknown scale (row_scale, col_scale and sigma are all off), "
            "so every cell needs a known standard error; the table has none."
        )
    if likelihood not in LIKELIHOOD_PATHS:
        raise ModelError(f"The likelihood must be one of {', '.join(LIKELIHOOD_PATHS)}; got {likelihood!r}.")
    priors = model_priors(spec, data)
    if spec.effects == "integrate":
        return _build_integrated(spec, data, priors, likelihood)
    path = "dense" if likelihood == "dense" else "diagonal"
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
                scales[side] = priors[f"{side}_sd"].pymc(f"{side}_sd")
            elif kind == "hetero":
                loc = priors[f"{side}_log_sd_loc"].pymc(f"{side}_log_sd_loc")
                scale = priors[f"{side}_log_sd_scale"].pymc(f"{side}_log_sd_scale")
                z = pm.Normal(f"_{side}_sd_z", 0.0, 1.0, dims=side)
                per_level = pm.Deterministic(f"{side}_sd", pm.math.exp(loc + scale * z), dims=side)
                scales[side] = per_level[idx]
            else:
                scales[side] = None
        sigma = priors["sigma"].pymc("sigma") if spec.sigma else None
        sd = cell_sd(se, scales["row"], scales["col"], sigma, combine=spec.combine)
        if path == "diagonal":
            pm.Normal("y", mu=mu, sigma=sd, observed=y_data, dims="cell")
        else:
            import pytensor.tensor as pt

            cov = pt.diag(pt.broadcast_to(sd, (y.size,)) ** 2)
            pm.MvNormal("y", mu=pt.broadcast_to(mu, (y.size,)), cov=cov, observed=y_data, dims="cell")
    names = public_names(spec)
    return BuiltModel(model=model, priors=priors, var_names=names, likelihood_path=path)


def _scale_parameters(spec: ModelSpec, priors: dict[str, Prior]) -> dict:
    """Residual scales (inside a model context): homogeneous, or hierarchical log-normal per level."""
    import pymc as pm

    out = {}
    for side, kind in (("row", spec.row_scale), ("col", spec.col_scale)):
        if kind == "homo":
            out[f"{side}_sd"] = priors[f"{side}_sd"].pymc(f"{side}_sd")
        elif kind == "hetero":
            loc = priors[f"{side}_log_sd_loc"].pymc(f"{side}_log_sd_loc")
            scale = priors[f"{side}_log_sd_scale"].pymc(f"{side}_log_sd_scale")
            z = pm.Normal(f"_{side}_sd_z", 0.0, 1.0, dims=side)
            out[f"{side}_sd"] = pm.Deterministic(f"{side}_sd", pm.math.exp(loc + scale * z), dims=side)
    if spec.sigma:
        out["sigma"] = priors["sigma"].pymc("sigma")
    return out


def integration_constants(spec: ModelSpec, priors: dict[str, Prior]) -> tuple[float, dict[str, float]]:
    """The intercept's prior mean and the fixed prior sds of the integrated effects."""
    m0 = 0.0
    constants = {}
    if spec.intercept:
        p = priors["intercept"]
        if p.dist != "normal":
            raise ModelError(f"Integrating the intercept out needs a normal prior; got {p}. "
                             "Use a normal prior, or effects = \"sample\".")
        m0 = p.kwargs["mu"]
        constants["intercept_sd"] = p.kwargs["sigma"]
    for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
        if kind == "fixed":
            p = priors[f"{side}_effect"]
            if p.dist != "normal" or p.kwargs["mu"] != 0.0:
                raise ModelError(f"The prior for fixed '{side}_effect' must be normal with mu = 0 "
                                 f"(the effects sum to zero); got {p}.")
            constants[f"{side}_fixed_sd"] = p.kwargs["sigma"]
    return m0, constants


MAX_STORED_COV = 30  # row_cov / col_cov are stored per draw only up to this many levels


def residual_parts(spec: ModelSpec, row_labels, col_labels) -> dict:
    """What the residual needs besides parameters: the full covariance, the Kronecker structures."""
    parts = {}
    if spec.residual == "full":
        from twoway.covariance import load_full_covariance

        parts["full"] = load_full_covariance(spec.covariance, row_labels, col_labels)
    if spec.residual == "kronecker":
        from twoway.structures import parse_structure

        parts["row"] = parse_structure(spec.row_structure, side="row", labels=row_labels)
        parts["col"] = parse_structure(spec.col_structure, side="col", labels=col_labels)
    return parts


def known_relationships(spec: ModelSpec, data: TwoWayData) -> dict:
    """Known relationship matrices of random effects (``row_effect_cov = "known:FILE"``)."""
    out = {}
    for side, labels in (("row", data.row_labels), ("col", data.col_labels)):
        value = getattr(spec, f"{side}_effect_cov")
        if value is not None and getattr(spec, f"{side}_effect") == "random":
            from twoway.structures import read_known_matrix

            out[side] = read_known_matrix(value[len("known:"):], labels, what=f"{side}_effect_cov")
    return out


def _build_integrated(spec: ModelSpec, data: TwoWayData, priors: dict[str, Prior], likelihood: str) -> BuiltModel:
    """Effects integrated out; the sampler sees only variance parameters."""
    import dataclasses

    import pymc as pm

    from twoway.likelihood.backend import PYTENSOR
    from twoway.marginal import choose_path, effects_design, layout, marginal_logp

    m0, constants = integration_constants(spec, priors)
    parts = residual_parts(spec, data.row_labels, data.col_labels)
    lay = layout(data, m0, parts)
    design = effects_design(spec, data, known=known_relationships(spec, data))
    path = choose_path(spec, lay, design, likelihood=likelihood)
    coords = {"row": list(data.row_labels), "col": list(data.col_labels)}
    with pm.Model(coords=coords) as model:
        sym = lay
        if path != "anova":
            sym = dataclasses.replace(lay, r=pm.Data("residual_grid", lay.r))
        else:
            ss = pm.Data("anova_ss", _anova_vector(lay.anova))
            sym = dataclasses.replace(sym, anova=dataclasses.replace(
                lay.anova, ss_grand=ss[0], ss_row=ss[1], ss_col=ss[2], ss_inter=ss[3], ss_within=ss[4]))
        params = dict(constants)
        for side, kind in (("row", spec.row_effect), ("col", spec.col_effect)):
            if kind == "random":
                params[f"{side}_effect_sd"] = priors[f"{side}_effect_sd"].pymc(f"{side}_effect_sd")
        params.update(_scale_parameters(spec, priors))
        extra_names = []
        if spec.residual == "full":
            for name in parts["full"].parameters:
                params[name] = priors[name].pymc(name)
                extra_names.append(name)
        if spec.residual == "kronecker":
            for side, unit in (("row", False), ("col", True)):
                st = parts[side]
                defaults = st.default_priors(data.spread(), unit_scale=unit)
                chosen = {k: spec.prior_overrides.get(k, v) for k, v in defaults.items()}
                chosen = st.check_priors(chosen, unit_scale=unit)
                priors = {**priors, **chosen}
                built_st = st.build_pymc(chosen, unit_scale=unit)
                params.update(built_st.params)
                params[f"_{side}_cov"] = built_st.cov
                extra_names += [n for n in st.parameter_names(unit_scale=unit) if n not in extra_names]
                if st.n <= MAX_STORED_COV:
                    other = f"{side}_other"
                    if other not in model.coords:
                        model.add_coord(other, list(st.labels))
                    pm.Deterministic(f"{side}_cov", built_st.cov, dims=(side, other))
                    extra_names.append(f"{side}_cov")
            unknown = sorted(k for k in spec.prior_overrides if k not in priors)
            if unknown:
                raise ModelError(f"The priors must name parameters of this model ({', '.join(priors)}); "
                                 f"got {', '.join(unknown)}.")
        pm.Potential("_loglik", marginal_logp(PYTENSOR, spec, sym, design, params, path))
    names = [n for n in public_names(spec) if n not in ("intercept", "row_effect", "col_effect")] + extra_names
    return BuiltModel(model=model, priors=priors, var_names=names, likelihood_path=path,
                      layout=lay, design=design, constants=constants,
                      layout_labels=(data.row_labels, data.col_labels, data.replicate_labels))
