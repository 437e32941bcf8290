"""Engines: build a sampler from a plan, sample it, swap a table in.

Every engine has the same small interface (:class:`Engine`):

``compile(plan, progress)``
    Build what samples the plan's model (compiling where the engine compiles).
``sample(compiled, plan, chains=, draws=, tune=, seed=, progress=, cores=, report=)``
    Sample the model on ``plan``'s table (a table of the compiled layout);
    return the raw draws as a DataTree with ``posterior`` and ``sample_stats``.
    ``report(phase, program, cache_status)`` is called by engines that compile
    while sampling; ``compile_seconds_in_sample(compiled)`` says how long that took.
``reuses_priors``
    Whether a compiled model can take a table whose priors differ (they are
    arguments of the program, not constants in it).

``laplace`` is not NUTS: nested Laplace + importance sampling over the few
variance parameters of the ``sparse`` path (large sparse crossed tables); a
fit chooses it when the plan's path is ``sparse`` and no engine was named.

Results (:class:`twoway.fit.Fit` and everything downstream) never know which
engine ran; the engine's name is recorded in ``fit.info["engine"]``.
"""

from __future__ import annotations

from typing import Any, Protocol

from twoway.errors import FitError

__all__ = ["Engine", "ENGINES", "DEFAULT_ENGINE", "get_engine"]

ENGINES = ("jax", "nutpie", "pymc", "laplace")
DEFAULT_ENGINE = "jax"


class Engine(Protocol):  # pragma: no cover - a description
    name: str
    reuses_priors: bool
    min_tune: int

    def compile(self, plan, *, progress) -> Any: ...

    def sample(self, compiled, plan, *, chains: int, draws: int, tune: int, seed, progress, cores, report=None): ...

    def compile_seconds_in_sample(self, compiled) -> float: ...


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`)."""
    if name == "jax":
        from twoway.engines.jax.engine import JaxEngine

        return JaxEngine()
    if name == "nutpie":
        from twoway.engines.nutpie import NutpieEngine

        return NutpieEngine()
    if name == "pymc":
        from twoway.engines.pymc import PymcEngine

        return PymcEngine()
    if name == "laplace":
        from twoway.engines.laplace import LaplaceEngine

        return LaplaceEngine()
    raise FitError(f"The engine must be one of {', '.join(ENGINES)}; got {name!r}.")
