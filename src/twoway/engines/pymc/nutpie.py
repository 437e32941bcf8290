"""The ``nutpie`` engine: the plan's PyMC model compiled with numba, sampled by nutpie."""

from __future__ import annotations

import gc

from twoway.engines.description import NUTS, with_progress_bar
from twoway.engines.pymc.compile_modes import sampling_modes
from twoway.engines.pymc.model import build_pymc_model, data_updates

# Deferred imports: nutpie (heavy to import) are imported inside the functions that use them, so importing
# this module stays light.

__all__ = ["NutpieEngine"]


class NutpieEngine:
    """nutpie; another table of the same layout is swapped in with ``with_data``."""

    name = "nutpie"
    reuses_priors = False
    min_tune = 1  # nutpie's adaptation needs at least one tuning draw
    description = with_progress_bar(NUTS)
    compiles_ahead = True  # compile() compiles (seconds): fit says so when it shows progress

    def compile(self, plan, *, progress):
        import nutpie


        built = build_pymc_model(plan)
        with sampling_modes():
            return built, nutpie.compile_pymc_model(built.model)

    def compile_seconds_in_sample(self, compiled) -> float:
        return 0.0  # everything is compiled by compile()

    def sample(self, compiled, plan, *, chains, draws, tune, seed, progress, cores, report=None):
        import nutpie

        built, model = compiled
        if plan.data is not built.plan.data:
            model = model.with_data(**data_updates(built.plan, plan.data))
        kwargs = dict(chains=chains, draws=draws, tune=tune, seed=seed, progress_bar=progress)
        if cores is not None:
            kwargs["cores"] = cores
        try:
            return nutpie.sample(model, **kwargs)
        except RuntimeError as exc:
            # nutpie's Rust error carries a backtrace, and its traceback keeps the sampler's threads alive
            # until the interpreter exits (where tearing them down can crash the process): keep the first
            # line, drop the rest now
            first = (str(exc).strip().splitlines() or ["nutpie failed"])[0]
            exc.__traceback__ = None
            del exc

            gc.collect()
        raise NutpieError(first)


class NutpieError(RuntimeError):
    """nutpie failed; the message is the first line of its own error."""
