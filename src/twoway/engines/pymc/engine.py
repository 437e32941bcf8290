"""The ``pymc`` engine: PyMC's own NUTS on the plan's PyMC model."""

from __future__ import annotations

import warnings

from twoway.engines.description import NUTS, with_progress_bar
from twoway.engines.pymc.compile_modes import pymc_compile_kwargs
from twoway.engines.pymc.model import build_pymc_model

# Deferred imports: pymc (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["PymcEngine"]


class PymcEngine:
    """PyMC's NUTS; the model is rebuilt for another table (PyMC compiles per call)."""

    name = "pymc"
    reuses_priors = False
    min_tune = 0
    description = with_progress_bar(NUTS)
    compiles_ahead = True  # compile() compiles (seconds): fit says so when it shows progress

    def compile(self, plan, *, progress):
        return build_pymc_model(plan)

    def compile_seconds_in_sample(self, compiled) -> float:
        return 0.0  # everything is compiled by compile()

    def sample(self, compiled, plan, *, chains, draws, tune, seed, progress, cores, report=None):
        import pymc as pm


        model = compiled.model if compiled.plan.data is plan.data else build_pymc_model(plan).model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyMC's own convergence warnings: the summary says the same
            return pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed,
                             progressbar=progress, nuts_sampler="pymc", model=model,
                             compute_convergence_checks=False, quiet=not progress,
                             compile_kwargs=pymc_compile_kwargs())
