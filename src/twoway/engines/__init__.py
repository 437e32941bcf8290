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
``description``
    What the engine's draws are (:class:`EngineDescription`): recorded in
    ``fit.info["description"]``, it is all that results read about the engine.

Which engine fits a table is decided in one place, :mod:`twoway.engines.choose`
(which also re-exports :data:`ENGINES`, :data:`DEFAULT_ENGINE` and :func:`get_engine`
here). ``laplace`` is not NUTS: nested Laplace + importance sampling over the few
variance parameters of the ``sparse`` path (large sparse crossed tables); it is
chosen when the plan's path is ``sparse`` and no engine was named. ``exact``
runs when nothing is left to sample.

Results (:class:`twoway.fit.Fit` and everything downstream) never ask which
engine ran: they read its description. The engine's name is recorded in
``fit.info["engine"]`` for people.
"""
