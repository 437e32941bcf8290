"""The one home of parameter names: which parameters a model has, which a user sees, which are scales.

A model's parameters follow from its spec alone (Kronecker structures and a full
covariance add their own, named by :mod:`twoway.spec.structures` and the covariance's
source). Every module that needs a name asks here.
"""

from __future__ import annotations

__all__ = ["STANDARD_PARAMETERS", "POSITIVE_PARAMETERS", "EFFECTS", "prior_names", "public_names"]

SIDES = ("row", "col")

#: Every parameter name a model can have besides a full covariance's own (and Kronecker structures').
STANDARD_PARAMETERS = frozenset(
    ["intercept", "coef", "sigma", "cell_sd"]
    + [f"{side}_{what}" for side in SIDES for what in ("effect", "effect_sd", "sd", "log_sd_loc", "log_sd_scale")])

#: Scales: their priors must be positive families.
POSITIVE_PARAMETERS = ("row_effect_sd", "col_effect_sd", "row_sd", "col_sd", "row_log_sd_scale",
                       "col_log_sd_scale", "sigma", "cell_sd")

#: The mean's Gaussian terms (integrated out and drawn back on the integrated paths): the intercept, the
#: effects, and ``coef``, the coefficients of a covariate formula's terms (``ModelSpec.covariates``).
EFFECTS = ("intercept", "row_effect", "col_effect", "coef")


def prior_names(spec) -> list[str]:
    """The standard parameters of ``spec`` that carry a prior, in a stable order.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    list of str
        A full covariance's own parameters are not included (see ``ModelSpec.parameter_names``).
    """
    out: list[str] = []
    if spec.intercept:
        out.append("intercept")
    for side, kind in zip(SIDES, (spec.row_effect, spec.col_effect)):
        if kind == "random":
            out.append(f"{side}_effect_sd")
        elif kind == "fixed":
            out.append(f"{side}_effect")
    if spec.covariates:
        out.append("coef")
    for side, kind in zip(SIDES, (spec.row_scale, spec.col_scale)):
        if kind == "homo":
            out.append(f"{side}_sd")
        elif kind == "hetero":
            out += [f"{side}_log_sd_loc", f"{side}_log_sd_scale"]
    if spec.sigma:
        out.append("sigma")
    if spec.cell_effect == "random":
        out.append("cell_sd")
    return out


def public_names(spec) -> list[str]:
    """Names of the parameters a user sees in the posterior, main ones first.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    list of str
        Effects, ``coef`` (a covariate formula's coefficients, dim ``term``), the effects' sds,
        the residual scales, ``sigma``, ``cell_sd`` and the hierarchical scales' hyperparameters
        (structures' parameters are added by the plan).
    """
    out: list[str] = []
    if spec.intercept:
        out.append("intercept")
    for side, kind in zip(SIDES, (spec.row_effect, spec.col_effect)):
        if kind != "none":
            out.append(f"{side}_effect")
    if spec.covariates:
        out.append("coef")
    for side, kind in zip(SIDES, (spec.row_effect, spec.col_effect)):
        if kind == "random":
            out.append(f"{side}_effect_sd")
    for side, kind in zip(SIDES, (spec.row_scale, spec.col_scale)):
        if kind != "none":
            out.append(f"{side}_sd")
    if spec.sigma:
        out.append("sigma")
    if spec.cell_effect == "random":
        out.append("cell_sd")
    for side, kind in zip(SIDES, (spec.row_scale, spec.col_scale)):
        if kind == "hetero":
            out += [f"{side}_log_sd_loc", f"{side}_log_sd_scale"]
    return out
