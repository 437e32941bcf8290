"""The one place an engine is chosen: which engine fits a table, and on which plan.

:func:`choose` resolves a model on a table and decides, together,

* the likelihood option in force (``auto``, or ``sparse`` forced by the laplace
  engine, or ``nuts`` forced by a NUTS engine named for a table on the sparse path);
* the plan sampled (resolved once with that option);
* the engine that samples it: the one named, else :data:`DEFAULT_ENGINE`, or
  ``laplace`` when the plan's path is ``sparse`` (large sparse crossed tables, or a
  dense design that would not fit in memory), or no sampler at all (``exact``)
  when nothing is left to sample.

What was chosen is returned as a :class:`Choice`; a fit records its engine, path and
likelihood option, and :func:`replan` gives the same plan back from that record.
Nothing else (fit, the command line, results) decides or re-derives the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from twoway.engines.exact import ExactEngine
from twoway.errors import FitError, ModelError
from twoway.plan import resolve

if TYPE_CHECKING:  # pragma: no cover
    from twoway.engines.description import Engine
    from twoway.plan import Plan

__all__ = ["ENGINES", "NUTS_ENGINES", "DEFAULT_ENGINE", "Choice", "choose", "engine_for", "get_engine",
           "nothing_to_sample", "engine_name", "replan"]

ENGINES = ("jax", "nutpie", "pymc", "laplace")
#: The engines that sample with NUTS (they trace the log-density: never the sparse path).
NUTS_ENGINES = ("jax", "nutpie", "pymc")
DEFAULT_ENGINE = "jax"
#: The engine of plans on the sparse path, and the likelihood option it forces.
SPARSE_ENGINE = "laplace"


@dataclass(frozen=True, eq=False)
class Choice:
    """An engine chosen for a model on a table, with the plan it samples.

    Attributes
    ----------
    name : str
        The engine's name as a fit records it (``fit.info["engine"]``): the engine named,
        or the one the table chose.
    engine : Engine
        The engine that samples (:class:`~twoway.engines.exact.ExactEngine` when nothing
        is left to sample, whatever was named).
    plan : Plan
        The plan it samples.
    likelihood : str
        The likelihood option the plan was resolved with (see :func:`twoway.plan.resolve`);
        another table of the same layout is resolved with it too.
    named : bool
        Whether the engine was named by the caller.
    seconds : float
        Time spent resolving.
    """

    name: str
    engine: Any
    plan: Any
    likelihood: str
    named: bool
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """The name of the engine that actually samples (``exact`` when there is no sampler)."""
        return self.engine.name


def engine_name(engine: str | None, backend: str | None = None) -> str | None:
    """The engine named by ``engine`` or its older name ``backend`` (None when neither is given).

    Raises :class:`FitError` when they disagree or name no engine.
    """
    if engine is not None and backend is not None and engine != backend:
        raise FitError(f"The 'engine' and 'backend' options name the same thing; got {engine!r} and {backend!r}.")
    name = engine if engine is not None else backend
    if name is not None and name not in ENGINES:
        raise FitError(f"The engine must be one of {', '.join(ENGINES)}; got {name!r}.")
    return name


def get_engine(name: str) -> "Engine":
    """The engine called ``name`` (one of :data:`ENGINES`)."""
    # Deferred: an engine's module (and its sampler's) is imported only when that engine runs,
    # so that the command line starts without them.
    if name == "jax":
        from twoway.engines.jax.engine import JaxEngine

        return JaxEngine()
    if name == "nutpie":
        from twoway.engines.pymc.nutpie import NutpieEngine

        return NutpieEngine()
    if name == "pymc":
        from twoway.engines.pymc.engine import PymcEngine

        return PymcEngine()
    if name == "laplace":
        from twoway.engines.laplace import LaplaceEngine

        return LaplaceEngine()
    raise FitError(f"The engine must be one of {', '.join(ENGINES)}; got {name!r}.")


def nothing_to_sample(plan: "Plan") -> bool:
    """Whether ``plan`` has no sampled parameter: every unknown is an integrated Gaussian effect."""
    return bool(plan.integrated and plan.design.m > 0 and not plan.var_names)


def engine_for(plan: "Plan", name: str) -> "Engine":
    """The engine that samples ``plan`` for the engine called ``name``: none (``exact``) when nothing is left to sample."""
    if nothing_to_sample(plan):

        return ExactEngine()
    return get_engine(name)


def choose(spec, data, *, engine: str | None = None, backend: str | None = None, likelihood: str = "auto",
           priors: dict | None = None, inputs: dict | None = None) -> Choice:
    """Choose the engine for ``spec`` on ``data`` and resolve the plan it samples.

    Parameters
    ----------
    spec : ModelSpec
    data : TwoWayData
    engine : {"jax", "nutpie", "pymc", "laplace"}, optional
        The engine named (``backend``: its older name). Unnamed: ``jax``, or ``laplace``
        when the plan's path is ``sparse``.
    likelihood : {"auto", "dense", "sparse", "nuts"}
        As :func:`twoway.plan.resolve`. ``auto`` with the laplace engine named means
        ``sparse``; a NUTS engine named for a table whose ``auto`` path is ``sparse``
        gets ``nuts`` (the fastest path it can trace) when that fits in memory.
    priors, inputs : optional
        As :func:`twoway.plan.resolve` (a saved fit's).

    Returns
    -------
    Choice

    Raises
    ------
    FitError
        When the engine named cannot fit the table (a NUTS engine and a table only the
        sparse path can take, the laplace engine and another likelihood asked for).
    ModelError
        When the model cannot be resolved on the table.
    """

    t0 = time.perf_counter()
    named = engine_name(engine, backend)
    name = DEFAULT_ENGINE if named is None else named
    if name == SPARSE_ENGINE:
        if likelihood not in ("auto", "sparse"):
            raise FitError(f"The laplace engine fits the sparse likelihood path; got likelihood={likelihood!r}. "
                           "Name a NUTS engine (jax, nutpie, pymc) for that likelihood.")
        likelihood = "sparse"
    plan = resolve(spec, data, likelihood=likelihood, priors=priors, inputs=inputs)
    if plan.path == "sparse" and name != SPARSE_ENGINE:
        if named is None:
            name = SPARSE_ENGINE
        elif likelihood == "sparse":
            raise FitError(f"The {name} engine (NUTS) cannot trace the sparse likelihood path; "
                           "name the laplace engine, or leave the engine unnamed.")
        else:
            try:
                plan = resolve(spec, data, likelihood="nuts", priors=plan.priors, inputs=inputs)
            except ModelError as exc:
                raise FitError(f"The {name} engine (NUTS) cannot trace the sparse likelihood path this table "
                               f"needs. {exc} Leave the engine unnamed, or name the laplace engine.") from None
            likelihood = "nuts"
    return Choice(name=name, engine=engine_for(plan, name), plan=plan, likelihood=likelihood,
                  named=named is not None, seconds=time.perf_counter() - t0)


def replan(spec, data, info: Mapping[str, Any], *, priors: dict | None = None,
           inputs: dict | None = None) -> "Plan":
    """The plan a fit was sampled with, from what its ``info`` recorded.

    A fit records the likelihood option in force (``info["likelihood"]``); a fit
    written before that was recorded is resolved as its engine was chosen then, and
    its recorded ``likelihood_path`` decides where that no longer gives the same path.
    """

    option = info.get("likelihood")
    if option is not None:
        return resolve(spec, data, likelihood=option, priors=priors, inputs=inputs)
    recorded = info.get("likelihood_path")
    forced = {"sparse": "sparse", "dense": "dense"}.get(recorded, "auto")  # paths only asked for by name
    plan = resolve(spec, data, likelihood=forced, priors=priors, inputs=inputs)
    if recorded is not None and plan.path != recorded:  # a NUTS engine named for a table on the sparse path
        plan = resolve(spec, data, likelihood="nuts", priors=priors, inputs=inputs)
    return plan
