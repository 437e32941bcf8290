"""The PyMC mapping of twoway's priors (:class:`twoway.spec.priors.Prior` is data; this builds it in PyMC)."""

from __future__ import annotations

from typing import Any

# Deferred imports: pymc (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["pymc_variable", "pymc_distribution"]


def pymc_variable(prior, name: str, **kwargs: Any):
    """Create the PyMC random variable ``name`` with ``prior`` (inside a model context)."""
    import pymc as pm

    p = prior.kwargs
    if prior.dist == "normal":
        return pm.Normal(name, mu=p["mu"], sigma=p["sigma"], **kwargs)
    if prior.dist == "halfnormal":
        return pm.HalfNormal(name, sigma=p["sigma"], **kwargs)
    if prior.dist == "halfstudentt":
        return pm.HalfStudentT(name, nu=p["nu"], sigma=p["sigma"], **kwargs)
    if prior.dist == "exponential":
        return pm.Exponential(name, scale=p["scale"], **kwargs)
    if prior.dist == "lognormal":
        return pm.LogNormal(name, mu=p["mu"], sigma=p["sigma"], **kwargs)
    if prior.dist == "uniform":
        return pm.Uniform(name, lower=p["lower"], upper=p["upper"], **kwargs)
    if prior.dist == "beta":
        return pm.Beta(name, alpha=p["alpha"], beta=p["beta"], **kwargs)
    raise AssertionError(prior.dist)  # pragma: no cover - validated by Prior


def pymc_distribution(prior):
    """``prior`` as an unnamed PyMC distribution (for ``pm.logp`` and ``pm.draw``)."""
    import pymc as pm

    p = prior.kwargs
    if prior.dist == "normal":
        return pm.Normal.dist(mu=p["mu"], sigma=p["sigma"])
    if prior.dist == "halfnormal":
        return pm.HalfNormal.dist(sigma=p["sigma"])
    if prior.dist == "halfstudentt":
        return pm.HalfStudentT.dist(nu=p["nu"], sigma=p["sigma"])
    if prior.dist == "exponential":
        return pm.Exponential.dist(scale=p["scale"])
    if prior.dist == "lognormal":
        return pm.LogNormal.dist(mu=p["mu"], sigma=p["sigma"])
    if prior.dist == "uniform":
        return pm.Uniform.dist(lower=p["lower"], upper=p["upper"])
    if prior.dist == "beta":
        return pm.Beta.dist(alpha=p["alpha"], beta=p["beta"])
    raise AssertionError(prior.dist)  # pragma: no cover
