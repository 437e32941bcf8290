"""No sampler at all: the exact posterior of a model whose every unknown is Gaussian and integrated out.

A model with known standard errors, no unknown scale and only fixed effects
and a normal intercept (a common-effect network meta-analysis: studies x
treatments, fixed study and treatment effects, known se) has no parameter
left to sample once the effects are integrated out: the posterior of the
effects is one Gaussian, ``N(C^-1 Z' D^-1 r, C^-1)``. This engine has the
engines' interface (:mod:`twoway.engines`) but compiles nothing and returns an
empty set of draws laid out as ``chains x draws``; the fit then draws the
effects from their exact conditional law (:func:`twoway.likelihood.paths.draw_effects`),
independent draws reproducible from the seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ExactEngine", "nothing_to_sample", "engine_for"]


def nothing_to_sample(plan) -> bool:
    """Whether ``plan`` has no sampled parameter: every unknown is an integrated Gaussian effect."""
    return bool(plan.integrated and plan.design.m > 0 and not plan.var_names)


class ExactEngine:
    """Independent draws from the exact Gaussian posterior; nothing is compiled."""

    name = "exact"
    reuses_priors = True
    min_tune = 0

    def compile(self, plan, *, progress):
        return None

    def compile_seconds_in_sample(self, compiled) -> float:
        return 0.0

    def sample(self, compiled, plan, *, chains, draws, tune, seed, progress, cores, report=None):
        """An empty posterior with ``chain`` (chains) and ``draw`` (draws) coordinates, and no sampler statistics."""
        import xarray as xr

        coords = {"chain": np.arange(int(chains)), "draw": np.arange(int(draws))}
        empty = xr.Dataset(coords=coords)
        return xr.DataTree.from_dict({"posterior": empty, "sample_stats": xr.Dataset(coords=coords)})


def engine_for(plan, name: str):
    """The engine that fits ``plan``: :class:`ExactEngine` when nothing is left to sample, else ``name``'s."""
    if nothing_to_sample(plan):
        return ExactEngine()
    from twoway.engines import get_engine

    return get_engine(name)
