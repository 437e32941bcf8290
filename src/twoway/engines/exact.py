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

from twoway.engines.description import EXACT

# Deferred imports: xarray (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["ExactEngine"]


class ExactEngine:
    """Independent draws from the exact Gaussian posterior; nothing is compiled.

    :func:`twoway.engines.choose.choose` runs it when nothing is left to sample
    (:func:`twoway.engines.choose.nothing_to_sample`).
    """

    name = "exact"
    reuses_priors = True
    min_tune = 0
    description = EXACT

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

